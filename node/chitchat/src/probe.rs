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
//! rounds), so an unanswered probe delays no vote: a killed member is out
//! as fast as before. "Steadily" is what keeps the cases a vote exists for:
//! a member that sends but cannot receive echoes nothing recent to anyone,
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

/// What a member keeps of probes: its own, and those it helps with.
#[derive(Default)]
pub(crate) struct Probes {
    /// Our probes of silent neighbours.
    asked: HashMap<ChitchatId, Asked>,
    /// Who last vouched for each node: asked first next time.
    vouchers: HashMap<ChitchatId, SocketAddr>,
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
}

struct Watch {
    /// We ping the node until then.
    until: Instant,
    /// Our last ping.
    pinged_at: Instant,
    /// Who waits for our vouch, since when (an asker waits `PROBE_ROUNDS`),
    /// and our heartbeat then: the node must echo it or a newer one (it
    /// heard us after the ask).
    waiting: Vec<(SocketAddr, Instant, Heartbeat)>,
}

impl Watch {
    /// Forgets those who asked more than `PROBE_ROUNDS` ago: their vote
    /// has gone, a vouch would come too late.
    fn drop_stale_waits(&mut self, now: Instant, round: Duration) {
        self.waiting
            .retain(|(_, at, _)| now.duration_since(*at) <= round * PROBE_ROUNDS);
    }
}

impl Probes {
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
                let (answered, waiting) = std::mem::take(&mut w.waiting)
                    .into_iter()
                    .partition(|(_, _, since)| echo >= *since);
                w.waiting = waiting;
                answered.into_iter().map(|(asker, _, _)| asker).collect()
            })
            .unwrap_or_default()
    }

    fn steady(&self, id: &ChitchatId, now: Instant, round: Duration) -> bool {
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
        if silent <= threshold / 3.0 {
            p.probes.asked.remove(id);
            return false;
        }
        let voucher = p.probes.vouchers.get(id).copied();
        // Whom to ask now: nobody (a probe is under way), the last to vouch
        // alone (vouched for at the last probe), or everyone.
        let ask = match p.probes.asked.get(id) {
            None => Some(None),
            Some(a) => {
                let since = now.duration_since(a.at);
                let due = since >= round * REPROBE_ROUNDS;
                if a.narrow && !a.vouched && since >= round * NARROW_ROUNDS {
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
                };
                p.probes.asked.insert(id.clone(), asked);
            }
        }
        silent > threshold
            && self.pulses.as_ref().is_some_and(|p| {
                p.probes.asked.get(id).is_some_and(|a| {
                    !a.vouched && !a.narrow && now.duration_since(a.at) >= round * PROBE_ROUNDS
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
        out.extend(p.probes.vouchers.get(id).copied());
        let live = p.live();
        let picks =
            rand::seq::index::sample(&mut rand::rng(), live.len(), RANDOM_HELPERS.min(live.len()));
        out.extend(picks.into_iter().map(|i| live[i].gossip_advertise_addr));
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
        watch.waiting.retain(|(asker, _, _)| *asker != from);
        watch.waiting.push((from, now, heartbeat));
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
        due.iter()
            .filter(|id| !p.is_neighbour(id))
            .map(|id| p.pulse_to(id, state_hash, heartbeat))
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
        if asked.vouched || Instant::now().duration_since(asked.at) > round * PROBE_ROUNDS {
            return;
        }
        debug!(node = %node.node_id, %from, "vouched for");
        asked.vouched = true;
        p.probes.vouchers.insert(node, from);
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
                waiting: vec![(asker, Instant::now(), Heartbeat(5))],
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
        // The fourth within five rounds: steady, and the asker gets its word once.
        assert_eq!(hear(&mut probes, 5), vec![asker]);
        assert!(hear(&mut probes, 5).is_empty());
        assert!(probes.steady(&node, Instant::now(), round));
        // Asked again: pulses that echo only heartbeats from before the ask
        // (a node that just went deaf) get no vouch; one that echoes a newer
        // one does.
        let again: SocketAddr = ([127, 0, 0, 3], 9).into();
        if let Some(w) = probes.watched.get_mut(&node) {
            w.waiting.push((again, Instant::now(), Heartbeat(9)));
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
                waiting: vec![(asker, start, Heartbeat(5))],
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
