//! shoal patch (protocol V4): SWIM's indirect probe before a vote.
//!
//! A neighbour's silence says that *this* member stopped hearing it, not
//! that it died: two Swarm nodes cut from each other while a third sees
//! both leave each member with neighbours on the other side, and two of
//! them make a quorum. So a member that finds a neighbour silent first asks
//! a few others to probe it ([`Probe`]): the node's other neighbours, its
//! own, four members at random, and whoever vouched for the node last time.
//! A helper that hears the node steadily — pulses that echo, at least
//! [`STEADY_PULSES`] in the last [`STEADY_ROUNDS`] rounds, the last one
//! within a round and a half, one of them echoing a heartbeat of the
//! helper's from after the ask (the node heard the helper since: a member
//! that just went deaf still echoes older ones for a few rounds) — answers
//! [`Vouch`] (a neighbour of the node within a round, any other after
//! pinging it every half round while someone waits — about two rounds: the
//! node answers pulses from anyone). A vouch holds the vote off until the next
//! probe, [`REPROBE_ROUNDS`] rounds later, which asks the first to vouch
//! alone (everyone if it does not vouch within [`NARROW_ROUNDS`]); a
//! probe that nobody vouched for in [`PROBE_ROUNDS`] rounds lets the vote
//! go.
//!
//! The probe starts at a third of the silence that makes a vote (two
//! rounds; [`PROBE_AT`]; half, three rounds, where more than [`LOSSY`] of
//! the pulses are lost), so an unanswered probe delays no vote: a killed
//! member is out as fast as before. "Steadily" is what keeps the cases a
//! vote exists for: a member that sends but cannot receive echoes nothing recent to anyone,
//! and one that loses 80 % of its packets is heard steadily by no one —
//! nobody vouches for either. The cost, while a neighbour stays silent:
//! a helper's ping and the answer every round (two while asked), a probe and a vouch every
//! [`REPROBE_ROUNDS`] rounds; nothing while all is well.
//!
//! [`Probe`]: crate::ChitchatMessage::Probe
//! [`Vouch`]: crate::ChitchatMessage::Vouch

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use crate::{Chitchat, ChitchatId, ChitchatMessage, Heartbeat};

/// The share of the voting silence at which a neighbour is probed: a third
/// (two rounds) — on a network that loses more than [`LOSSY`] of the
/// pulses, half (three rounds; [`PROBE_AT_LOSSY`]). Two pulses lost in a
/// row — at 5 % loss, about once every 10 s per member — set a probe off,
/// and its helpers' 20-round watches cost: 3.2–3.4 KB/s per member at 5 %
/// loss against 1.9 KB/s at 0 %; three in a row are ~20 times rarer (1.9
/// KB/s at 5 % loss, simulated) for a vote a round later. Not at half
/// always: with it the three-node Swarm test's inbound-only cut failed 5
/// GETs (502) in one run of three while the cut node stayed in the views
/// that round longer (docs/membership.md) — where nothing is lost, the
/// third stays.
const PROBE_AT: f64 = 1.0 / 3.0;
/// See [`PROBE_AT`].
const PROBE_AT_LOSSY: f64 = 1.0 / 2.0;
/// The share of our neighbours' pulses lost past which probes wait for a
/// third silent round (`pulse::LossMeter`).
const LOSSY: f64 = 0.02;
/// Rounds a probe is given before a vote may go without a vouch; a vouch
/// later than that is not waited for.
const PROBE_ROUNDS: u32 = 4;
/// A member still silent is probed again every that many rounds (a vouch
/// holds until then) — of the last to vouch alone, then of everyone if it
/// does not vouch within `NARROW_ROUNDS`.
const REPROBE_ROUNDS: u32 = 10;
const NARROW_ROUNDS: u32 = 2;
/// Most helpers asked per probe.
const HELPERS: usize = 12;
/// Random members among them (besides neighbours, the node's and ours):
/// what finds a path when every neighbour is on the wrong side of a cut.
/// With a third of the members able to reach both sides, two found none
/// for both voters of a node about once in 14 runs of the simulator's
/// split test (both voters must miss: four makes that ~20 times rarer).
const RANDOM_HELPERS: usize = 4;
/// A helper pings the node it was asked about for that many rounds after
/// the last ask (the next probe finds it heard steadily, and is answered at
/// once).
const WATCH_ROUNDS: u32 = 20;
/// While someone waits for its word, a helper pings every half round, not
/// every round: a node it did not watch is heard steadily (`STEADY_PULSES`)
/// about two rounds after the ask, not four — the vote waits
/// `PROBE_ROUNDS`, and one lost ping no longer makes the vouch late.
const FAST_PINGS_PER_ROUND: u32 = 2;
/// A node is heard steadily with that many pulses that echoed in the last
/// `STEADY_ROUNDS` rounds, the last within a round and a half: a healthy
/// node at 5 % loss is, ~98 % of the time; one losing 80 % of its packets
/// (a pulse that echoes one round in eight) about once in a thousand.
const STEADY_PULSES: usize = 4;
const STEADY_ROUNDS: u32 = 5;
/// A helper that has heard nothing from the node for that many rounds
/// after the ask — five pings, a ping every half round — tells the asker
/// so ([`Silent`]), before the asker's vote may go: the vote then carries
/// the helper as a second voter. What removes a member whose other neighbours died
/// with it (a Swarm node's death): without it, each of those waited for
/// the deaths around it and for new neighbours to find it silent, a
/// detection time per step (0.7 / 1.3 / 2.0 s for a third of the members
/// killed at once). A healthy node answers none of five pings about once
/// in 10⁵ at 5 % loss (a ping or its answer lost: ~1 in 10 each); a
/// vouch still holds the vote off.
///
/// [`Silent`]: crate::ChitchatMessage::Silent
const SILENT_ROUNDS: u32 = 2;
/// Vouches a helper sends per ask, at successive pulses that find the
/// node heard steadily: one lost (5 % loss: one ask in twenty) no longer
/// leaves the asker to the random helpers alone.
const VOUCHES: u8 = 2;
/// Most silent helpers a vote carries.
const MAX_SILENT: usize = 2;
/// A helper's silence is evidence only that *it* cannot hear the node —
/// true of every helper on our side of a cut between two Swarm nodes. So
/// the first silence, with no vouch yet, makes us ask that many more
/// members at random, and the silences go with our vote only once those
/// have had `WIDER_ROUNDS` rounds (about two to vouch) and nobody vouched.
/// With a third of the members able to reach both sides, 12 random helpers
/// in all found none of them about once in 130 probes: a cut's first
/// probes (two or three per member whose neighbours are across it) then
/// removed someone in about one run in twenty of the simulator's split
/// test. 20 find none about once in 3,000 (one run in ~80 at 5 % loss,
/// where a far helper also has to be heard steadily in time). Asked only
/// when a helper hears nothing — a node that died, or a cut — each pings
/// the node for `WATCH_ROUNDS`: a few KB once per silent node.
const WIDER_HELPERS: usize = 16;
const WIDER_ROUNDS: u32 = 3;
/// A node vouched for within that many rounds (three probes of a
/// neighbour cut off from it) is alive as far as anyone knows: its
/// helpers' silence goes with our vote only once the one who vouched
/// says it hears nothing either. Across a cut, the helpers on our side
/// are silent at every probe, and the voucher on the other side — a
/// neighbour of the node, asked first — vouches again; if that one vouch
/// is lost or late (5 % loss: about one probe in ten), and none of the
/// random helpers on the far side vouched within `WIDER_ROUNDS`, the
/// silences alone made a death: one member's probe instead of two
/// neighbours' (about one run in twenty of the simulator's split test at
/// 5 % loss). A node killed has no recent voucher, or one that soon says
/// it hears nothing: the silences go at once.
const VOUCH_MEMORY_ROUNDS: u32 = 30;

/// What a member keeps of probes: its own, and those it helps with.
#[derive(Default)]
pub(crate) struct Probes {
    /// Our probes of silent neighbours.
    asked: HashMap<ChitchatId, Asked>,
    /// Who last vouched for each node, and when: asked first next time.
    vouchers: HashMap<ChitchatId, (SocketAddr, Instant)>,
    /// Nodes others asked us about.
    watched: HashMap<ChitchatId, Watch>,
    /// When pulses that echoed came, from neighbours and watched nodes
    /// (the last `STEADY_ROUNDS` rounds).
    heard: HashMap<ChitchatId, VecDeque<Instant>>,
}

struct Asked {
    at: Instant,
    vouched: bool,
    /// Asked of the last to vouch alone.
    narrow: bool,
    /// Helpers that pinged the node since the ask and heard nothing
    /// (at most `MAX_SILENT`): second voters of our vote.
    silent: Vec<SocketAddr>,
    /// When we asked `WIDER_HELPERS` more (at the first silence).
    wider_at: Option<Instant>,
}

struct Watch {
    /// We ping the node until then.
    until: Instant,
    /// Our last ping.
    pinged_at: Instant,
    /// Who waits for our word (an asker waits `PROBE_ROUNDS`).
    waiting: Vec<Wait>,
}

/// One asker waiting for our word on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wait {
    asker: SocketAddr,
    since: Instant,
    /// Our heartbeat at the ask: the node must echo it or a newer one to be
    /// vouched for (it heard us after the ask).
    heartbeat: Heartbeat,
    /// We told the asker that we hear nothing from the node.
    silent_sent: bool,
    /// Vouches sent for this ask (`VOUCHES`).
    vouches: u8,
}

impl Wait {
    fn new(asker: SocketAddr, since: Instant, heartbeat: Heartbeat) -> Self {
        Wait {
            asker,
            since,
            heartbeat,
            silent_sent: false,
            vouches: 0,
        }
    }
}

impl Watch {
    /// Forgets those who asked more than `PROBE_ROUNDS` ago: their vote
    /// has gone, a vouch would come too late.
    fn drop_stale_waits(&mut self, now: Instant, round: Duration) {
        self.waiting
            .retain(|w| now.duration_since(w.since) <= round * PROBE_ROUNDS);
    }
}

impl Probes {
    /// Whether we probe `id` (a silent neighbour).
    pub(crate) fn probing(&self, id: &ChitchatId) -> bool {
        self.asked.contains_key(id)
    }

    /// Whether `id` is being pinged for others.
    pub(crate) fn watching(&self, id: &ChitchatId) -> bool {
        self.watched.contains_key(id)
    }

    /// The nodes to ping this round (the caller leaves out neighbours: they
    /// get a pulse anyway) but those pinged in the last half round;
    /// watches that ran out are dropped, and what is kept of pulses is kept
    /// for `neighbours` and watched nodes alone.
    pub(crate) fn pings(
        &mut self,
        neighbours: &[ChitchatId],
        now: Instant,
        round: Duration,
    ) -> Vec<ChitchatId> {
        self.watched.retain(|_, w| w.until > now);
        let watched = &self.watched;
        self.heard
            .retain(|id, _| watched.contains_key(id) || neighbours.contains(id));
        self.asked.retain(|id, _| neighbours.contains(id));
        self.due_pings(now, round, |_| true)
    }

    /// The watched nodes that `wanted` names and that were last pinged at
    /// least half a round ago (the node answers a non-neighbour at most
    /// every third of a round), noted as pinged `now`.
    fn due_pings(
        &mut self,
        now: Instant,
        round: Duration,
        wanted: impl Fn(&Watch) -> bool,
    ) -> Vec<ChitchatId> {
        let gap = round / FAST_PINGS_PER_ROUND;
        self.watched
            .iter_mut()
            .filter(|(_, w)| wanted(w) && now.duration_since(w.pinged_at) >= gap)
            .map(|(id, w)| {
                w.pinged_at = now;
                id.clone()
            })
            .collect()
    }

    /// When the next ping between rounds is due: the soonest of the
    /// watched nodes someone waits for our word on.
    pub(crate) fn next_fast_ping(&self, round: Duration) -> Option<Instant> {
        let gap = round / FAST_PINGS_PER_ROUND;
        self.watched
            .values()
            .filter(|w| !w.waiting.is_empty())
            .map(|w| w.pinged_at + gap)
            .min()
    }

    /// The askers to tell that we heard nothing from the node they asked
    /// about: asked at least `SILENT_ROUNDS` rounds ago, and no pulse that
    /// echoed since (told once per ask).
    fn silences(&mut self, now: Instant, round: Duration) -> Vec<(SocketAddr, ChitchatId)> {
        let mut out = Vec::new();
        for (id, watch) in &mut self.watched {
            let last = self.heard.get(id).and_then(|times| times.back().copied());
            for wait in &mut watch.waiting {
                if wait.silent_sent
                    || !rounds_past(now.duration_since(wait.since), round, SILENT_ROUNDS)
                    || last.is_some_and(|at| at > wait.since)
                {
                    continue;
                }
                wait.silent_sent = true;
                out.push((wait.asker, id.clone()));
            }
        }
        out
    }

    /// Keeps what is known of the nodes `known` says are still members.
    pub(crate) fn retain_known(&mut self, known: impl Fn(&ChitchatId) -> bool) {
        self.vouchers.retain(|id, _| known(id));
        self.watched.retain(|id, _| known(id));
    }

    /// A pulse from `id` that echoed `echo`: if we are watching it, or it
    /// is a neighbour (`neighbour`), it counts toward "heard steadily"; if
    /// that makes it so, those waiting for our word since a heartbeat it
    /// echoes get it.
    fn heard(
        &mut self,
        id: &ChitchatId,
        neighbour: bool,
        echo: Heartbeat,
        now: Instant,
        round: Duration,
    ) -> Vec<SocketAddr> {
        if !neighbour && !self.watched.contains_key(id) {
            return Vec::new();
        }
        let times = self.heard.entry(id.clone()).or_default();
        times.push_back(now);
        while times
            .front()
            .is_some_and(|at| now.duration_since(*at) > round * STEADY_ROUNDS)
        {
            times.pop_front();
        }
        if !self.steady(id, now, round) {
            return Vec::new();
        }
        self.watched
            .get_mut(id)
            .map(|w| {
                w.drop_stale_waits(now, round);
                let mut answered = Vec::new();
                w.waiting.retain_mut(|wait| {
                    if echo < wait.heartbeat {
                        return true;
                    }
                    answered.push(wait.asker);
                    wait.vouches += 1;
                    wait.vouches < VOUCHES
                });
                answered
            })
            .unwrap_or_default()
    }

    /// Whether `id`'s pulses echo ours steadily (a neighbour, or a node we
    /// watch for others): it is alive and hears us.
    pub(crate) fn steady(&self, id: &ChitchatId, now: Instant, round: Duration) -> bool {
        self.heard.get(id).is_some_and(|times| {
            times
                .back()
                .is_some_and(|last| now.duration_since(*last) <= round.mul_f64(1.5))
                && times
                    .iter()
                    .filter(|at| now.duration_since(**at) <= round * STEADY_ROUNDS)
                    .count()
                    >= STEADY_PULSES
        })
    }
}

impl Chitchat {
    /// Whether this member may vote against its neighbour `id`, silent for
    /// `silent` (phi) where `threshold` makes a vote: past a third of it,
    /// the node is probed through others (again every `REPROBE_ROUNDS`
    /// rounds while it stays silent); past the threshold, the vote goes if
    /// the probe has had `PROBE_ROUNDS` rounds and nobody vouched.
    pub(crate) fn may_vote(
        &mut self,
        id: &ChitchatId,
        silent: f64,
        threshold: f64,
        now: Instant,
    ) -> bool {
        let round = self.config.gossip_interval;
        let Some(p) = self.pulses.as_mut() else {
            return false;
        };
        let probe_at = if p.loss.share() > LOSSY {
            PROBE_AT_LOSSY
        } else {
            PROBE_AT
        };
        if silent <= threshold * probe_at {
            p.probes.asked.remove(id);
            return false;
        }
        let voucher = p.probes.vouchers.get(id).map(|(addr, _)| *addr);
        // Whom to ask now: nobody (a probe is under way), the last to vouch
        // alone (vouched for at the last probe), or everyone.
        let ask = match p.probes.asked.get(id) {
            None => Some(None),
            Some(a) => {
                let since = now.duration_since(a.at);
                let due = rounds_past(since, round, REPROBE_ROUNDS);
                if a.narrow && !a.vouched && rounds_past(since, round, NARROW_ROUNDS) {
                    Some(None)
                } else if due && a.vouched && voucher.is_some() {
                    Some(voucher)
                } else if due {
                    Some(None)
                } else {
                    None
                }
            }
        };
        if let Some(only) = ask {
            let helpers = match only {
                Some(voucher) => vec![voucher],
                None => self.helpers_for(id),
            };
            debug!(node = %id.node_id, helpers = helpers.len(), "probe");
            // With nobody to ask (a cluster of two), the vote waits for
            // nothing.
            let at = if helpers.is_empty() {
                now.checked_sub(round * PROBE_ROUNDS).unwrap_or(now)
            } else {
                now
            };
            for helper in helpers {
                self.outbox
                    .push((helper, ChitchatMessage::Probe { node: id.clone() }));
            }
            if let Some(p) = self.pulses.as_mut() {
                let asked = Asked {
                    at,
                    vouched: false,
                    narrow: only.is_some(),
                    silent: Vec::new(),
                    wider_at: None,
                };
                p.probes.asked.insert(id.clone(), asked);
            }
        }
        silent > threshold
            && self.pulses.as_ref().is_some_and(|p| {
                p.probes.asked.get(id).is_some_and(|a| {
                    !a.vouched
                        && !a.narrow
                        && rounds_past(now.duration_since(a.at), round, PROBE_ROUNDS)
                })
            })
    }

    /// Whom to ask about `id`: who vouched for it last, four live members at
    /// random, its other neighbours, ours.
    fn helpers_for(&mut self, id: &ChitchatId) -> Vec<SocketAddr> {
        let me = self.config.chitchat_id.gossip_advertise_addr;
        let Some(p) = self.pulses.as_mut() else {
            return Vec::new();
        };
        let mut out: Vec<SocketAddr> = Vec::with_capacity(HELPERS);
        out.extend(p.probes.vouchers.get(id).map(|(addr, _)| *addr));
        out.extend(random_live(p.live(), RANDOM_HELPERS));
        out.extend(p.neighbours_of(id).iter().map(|n| n.gossip_advertise_addr));
        out.extend(p.own_neighbours().iter().map(|n| n.gossip_advertise_addr));
        let mut helpers = Vec::with_capacity(HELPERS);
        for addr in out {
            if addr != me && addr != id.gossip_advertise_addr && !helpers.contains(&addr) {
                helpers.push(addr);
            }
        }
        helpers.truncate(HELPERS);
        helpers
    }

    /// `from` asks whether we hear `node`: we vouch at its next pulse that
    /// finds it heard steadily — a pulse after the ask, not only before
    /// (a member that just stopped receiving still echoed lately); a node
    /// not our neighbour we ping every round meanwhile.
    pub(crate) fn on_probe(&mut self, from: SocketAddr, node: ChitchatId) {
        let now = Instant::now();
        let round = self.config.gossip_interval;
        if node == self.config.chitchat_id || self.cluster_state.node_state(&node).is_none() {
            return;
        }
        let echo = self.heard_from(node.gossip_advertise_addr);
        let state_hash = self.state_hash();
        let heartbeat = self.own_heartbeat();
        let Some(p) = self.pulses.as_mut() else {
            return;
        };
        let addr = node.gossip_advertise_addr;
        let new = !p.probes.watched.contains_key(&node);
        let watch = p.probes.watched.entry(node).or_insert(Watch {
            until: now,
            pinged_at: now,
            waiting: Vec::new(),
        });
        watch.until = now + round * WATCH_ROUNDS;
        watch.waiting.retain(|w| w.asker != from);
        watch.waiting.push(Wait::new(from, now, heartbeat));
        if new {
            self.outbox.push((
                addr,
                ChitchatMessage::Pulse {
                    state_hash,
                    heartbeat,
                    echo,
                },
            ));
        }
    }

    /// Pings between rounds: to the watched nodes someone waits for our
    /// word on (not neighbours: they pulse us every round), at most every
    /// half round; waits that ran out are dropped.
    pub(crate) fn fast_pings(&mut self) -> Vec<(SocketAddr, ChitchatMessage)> {
        let now = Instant::now();
        let round = self.config.gossip_interval;
        let state_hash = self.state_hash();
        let heartbeat = self.own_heartbeat();
        let Some(p) = self.pulses.as_mut() else {
            return Vec::new();
        };
        for w in p.probes.watched.values_mut() {
            w.drop_stale_waits(now, round);
        }
        let due = p.probes.due_pings(now, round, |w| !w.waiting.is_empty());
        let mut out: Vec<_> = due
            .iter()
            .filter(|id| !p.is_neighbour(id))
            .map(|id| p.pulse_to(id, state_hash, heartbeat))
            .collect();
        out.extend(self.silences(now));
        out
    }

    /// [`Silent`] answers due to askers — none while this member's own
    /// round came late (it heard nothing through no fault of the node).
    ///
    /// [`Silent`]: ChitchatMessage::Silent
    pub(crate) fn silences(&mut self, now: Instant) -> Vec<(SocketAddr, ChitchatMessage)> {
        let round = self.config.gossip_interval;
        if self.stalled {
            return Vec::new();
        }
        let Some(p) = self.pulses.as_mut() else {
            return Vec::new();
        };
        p.probes
            .silences(now, round)
            .into_iter()
            .map(|(asker, node)| (asker, ChitchatMessage::Silent { node }))
            .collect()
    }

    /// When [`Chitchat::fast_pings`] has something to send next.
    pub(crate) fn next_fast_ping(&self) -> Option<Instant> {
        let round = self.config.gossip_interval;
        self.pulses
            .as_ref()
            .and_then(|p| p.probes.next_fast_ping(round))
    }

    /// `from` vouches that it hears `node`: our vote against it waits for
    /// the next probe, which asks the first to vouch (the quickest: a
    /// neighbour of the node) alone first.
    pub(crate) fn on_vouch(&mut self, from: SocketAddr, node: ChitchatId) {
        let round = self.config.gossip_interval;
        let Some(p) = self.pulses.as_mut() else {
            return;
        };
        let Some(asked) = p.probes.asked.get_mut(&node) else {
            return;
        };
        let last_ask = asked.wider_at.unwrap_or(asked.at);
        if asked.vouched || Instant::now().duration_since(last_ask) > round * PROBE_ROUNDS {
            return;
        }
        debug!(node = %node.node_id, %from, "vouched for");
        asked.vouched = true;
        p.probes.vouchers.insert(node, (from, Instant::now()));
    }

    /// `from` pinged `node` since our ask and heard nothing: it goes with
    /// our vote, if the vote goes (no vouch came).
    pub(crate) fn on_silent(&mut self, from: SocketAddr, node: ChitchatId) {
        let round = self.config.gossip_interval;
        let Some(p) = self.pulses.as_mut() else {
            return;
        };
        let Some(asked) = p.probes.asked.get_mut(&node) else {
            return;
        };
        let now = Instant::now();
        let late = now.duration_since(asked.at) > round * (PROBE_ROUNDS * 2);
        if late || asked.vouched || asked.silent.contains(&from) {
            return;
        }
        debug!(node = %node.node_id, %from, "silent to a helper too");
        // The last to vouch is kept among the silent ones (`silent_helpers`
        // looks for it there).
        if asked.silent.len() < MAX_SILENT {
            asked.silent.push(from);
        } else if p
            .probes
            .vouchers
            .get(&node)
            .is_some_and(|(v, _)| *v == from)
        {
            asked.silent[MAX_SILENT - 1] = from;
        }
        if asked.wider_at.is_some() {
            return;
        }
        asked.wider_at = Some(now);
        // The vote this may lead to will want our hearing checked (`hearing`).
        self.check_hearing(now);
        let Some(p) = self.pulses.as_mut() else {
            return;
        };
        let me = self.config.chitchat_id.gossip_advertise_addr;
        for helper in random_live(p.live(), WIDER_HELPERS) {
            if helper != me && helper != node.gossip_advertise_addr {
                self.outbox
                    .push((helper, ChitchatMessage::Probe { node: node.clone() }));
            }
        }
    }

    /// The helpers that heard nothing from `id` since our last probe of it,
    /// once the wider ask has had its rounds and nobody vouched — nor, if
    /// someone vouched lately, once that one says it hears nothing too
    /// (`VOUCH_MEMORY_ROUNDS`): they vote with us.
    pub(crate) fn silent_helpers(&self, id: &ChitchatId, now: Instant) -> Vec<SocketAddr> {
        let round = self.config.gossip_interval;
        let Some(p) = self.pulses.as_ref() else {
            return Vec::new();
        };
        let recent_voucher = p
            .probes
            .vouchers
            .get(id)
            .filter(|(_, at)| now.duration_since(*at) < round * VOUCH_MEMORY_ROUNDS)
            .map(|(voucher, _)| voucher);
        p.probes
            .asked
            .get(id)
            .filter(|a| {
                !a.vouched
                    && recent_voucher.is_none_or(|v| a.silent.contains(v))
                    && a.wider_at
                        .is_some_and(|at| rounds_past(now.duration_since(at), round, WIDER_ROUNDS))
            })
            .map(|a| a.silent.clone())
            .unwrap_or_default()
    }

    /// A pulse that echoed from `id` (see [`Probes::heard`]): vouches for
    /// those who asked, once it is heard steadily.
    pub(crate) fn probe_heard(
        &mut self,
        id: &ChitchatId,
        neighbour: bool,
        echo: Heartbeat,
        now: Instant,
    ) {
        let round = self.config.gossip_interval;
        let Some(p) = self.pulses.as_mut() else {
            return;
        };
        for asker in p.probes.heard(id, neighbour, echo, now, round) {
            self.outbox
                .push((asker, ChitchatMessage::Vouch { node: id.clone() }));
        }
    }
}

/// Whether `since` is `rounds` rounds, give or take half a round: what a
/// check made at a round's tick asks of a time noted at an earlier tick.
/// Ticks come late by however long the loop was busy — a tick later than
/// the one it is compared with would otherwise miss by a hair and wait a
/// whole round more (the simulator's ticks are exact; real members' were
/// ~0.15 s slower to remove a killed one).
pub(crate) fn rounds_past(since: Duration, round: Duration, rounds: u32) -> bool {
    since + round / 2 >= round * rounds
}

/// The addresses of up to `n` members of `live` drawn at random.
fn random_live(live: &[ChitchatId], n: usize) -> impl Iterator<Item = SocketAddr> + '_ {
    rand::seq::index::sample(&mut rand::rng(), live.len(), n.min(live.len()))
        .into_iter()
        .map(|i| live[i].gossip_advertise_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(port: u16) -> ChitchatId {
        ChitchatId::new(format!("n{port}"), 0, ([127, 0, 0, 1], port).into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_is_heard_steadily_only_with_recent_pulses_and_enough_of_them() {
        let round = Duration::from_millis(100);
        let mut probes = Probes::default();
        let node = id(1);
        let asker: SocketAddr = ([127, 0, 0, 2], 9).into();
        probes.watched.insert(
            node.clone(),
            Watch {
                until: Instant::now() + round * 20,
                pinged_at: Instant::now(),
                waiting: vec![Wait::new(asker, Instant::now(), Heartbeat(5))],
            },
        );
        // A pulse from the node echoing `echo`: who gets a vouch.
        let hear = |probes: &mut Probes, echo: u64| {
            probes.heard(&node, false, Heartbeat(echo), Instant::now(), round)
        };
        // Three pulses: not yet.
        for _ in 0..3 {
            assert!(hear(&mut probes, 5).is_empty());
            tokio::time::advance(round).await;
        }
        // The fourth within five rounds: steady, and the asker gets its
        // word, again at the next pulse (one vouch may be lost), then no more.
        assert_eq!(hear(&mut probes, 5), vec![asker]);
        assert_eq!(hear(&mut probes, 5), vec![asker]);
        assert!(hear(&mut probes, 5).is_empty());
        assert!(probes.steady(&node, Instant::now(), round));
        // Asked again: pulses that echo only heartbeats from before the ask
        // (a node that just went deaf) get no vouch; one that echoes a newer
        // one does.
        let again: SocketAddr = ([127, 0, 0, 3], 9).into();
        if let Some(w) = probes.watched.get_mut(&node) {
            w.waiting
                .push(Wait::new(again, Instant::now(), Heartbeat(9)));
        }
        tokio::time::advance(round).await;
        assert!(hear(&mut probes, 5).is_empty());
        tokio::time::advance(round).await;
        assert_eq!(hear(&mut probes, 9), vec![again]);
        // Two rounds of silence: no longer (a node killed two rounds ago is
        // vouched for by no one).
        tokio::time::advance(round * 2).await;
        assert!(!probes.steady(&node, Instant::now(), round));
        // Pulses every 1.8 rounds (a member losing many of its packets):
        // three in five rounds, not steady.
        tokio::time::advance(round * 5).await;
        for _ in 0..3 {
            hear(&mut probes, 5);
            tokio::time::advance(round.mul_f64(1.8)).await;
        }
        hear(&mut probes, 5);
        assert!(!probes.steady(&node, Instant::now(), round));
    }

    #[tokio::test(start_paused = true)]
    async fn a_helper_pings_every_half_round_only_while_someone_waits() {
        let round = Duration::from_millis(100);
        let mut probes = Probes::default();
        let node = id(1);
        let asker: SocketAddr = ([127, 0, 0, 2], 9).into();
        let start = Instant::now();
        probes.watched.insert(
            node.clone(),
            Watch {
                until: start + round * 20,
                pinged_at: start,
                waiting: vec![Wait::new(asker, start, Heartbeat(5))],
            },
        );
        let waiting = |w: &Watch| !w.waiting.is_empty();
        // Just pinged (at the ask): the next one half a round later.
        assert_eq!(probes.next_fast_ping(round), Some(start + round / 2));
        assert!(probes.due_pings(start, round, waiting).is_empty());
        tokio::time::advance(round / 2).await;
        assert_eq!(
            probes.due_pings(Instant::now(), round, waiting),
            vec![node.clone()]
        );
        // The round's ping a fifth of a round later waits: the node would
        // not answer two pings that close.
        tokio::time::advance(round / 5).await;
        assert!(probes.pings(&[], Instant::now(), round).is_empty());
        // Answered: nobody waits, no ping between rounds; the round's
        // ping goes on.
        if let Some(w) = probes.watched.get_mut(&node) {
            w.waiting.clear();
        }
        assert_eq!(probes.next_fast_ping(round), None);
        tokio::time::advance(round).await;
        assert_eq!(probes.pings(&[], Instant::now(), round), vec![node]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_helper_that_hears_nothing_since_the_ask_says_so_once() {
        let round = Duration::from_millis(100);
        let mut probes = Probes::default();
        let (dead, alive) = (id(1), id(2));
        let asker: SocketAddr = ([127, 0, 0, 2], 9).into();
        let start = Instant::now();
        for node in [&dead, &alive] {
            probes.watched.insert(
                node.clone(),
                Watch {
                    until: start + round * WATCH_ROUNDS,
                    pinged_at: start,
                    waiting: vec![Wait::new(asker, start, Heartbeat(5))],
                },
            );
        }
        // Heard before the ask: says nothing of after.
        probes
            .heard
            .entry(dead.clone())
            .or_default()
            .push_back(start);
        tokio::time::advance(round).await;
        // One pulse from the live node since the ask (not yet steady).
        assert!(
            probes
                .heard(&alive, false, Heartbeat(5), Instant::now(), round)
                .is_empty()
        );
        assert!(
            probes.silences(Instant::now(), round).is_empty(),
            "too early"
        );
        tokio::time::advance(round * (SILENT_ROUNDS - 1)).await;
        assert_eq!(
            probes.silences(Instant::now(), round),
            vec![(asker, dead.clone())],
            "the silent node alone, once"
        );
        tokio::time::advance(round).await;
        assert!(probes.silences(Instant::now(), round).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_neither_watched_nor_a_neighbour_is_not_tracked() {
        let round = Duration::from_millis(100);
        let mut probes = Probes::default();
        let node = id(1);
        for _ in 0..5 {
            probes.heard(&node, false, Heartbeat(5), Instant::now(), round);
            tokio::time::advance(round).await;
        }
        assert!(!probes.steady(&node, Instant::now(), round));
        assert!(probes.heard.is_empty());
    }
}
