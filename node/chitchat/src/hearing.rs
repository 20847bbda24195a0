//! shoal patch (protocol V4): a member that may be the deaf one declares
//! nobody dead.
//!
//! A Swarm node whose inbound traffic from the other nodes is cut: its
//! members hear each other and nothing else, and still send. To each of
//! them every neighbour on another node falls silent at once; the helpers
//! they ask to probe on other nodes vouch, but the vouches never arrive,
//! while the helpers on their own node, as deaf, answer that they hear
//! nothing — a quorum of votes against healthy members, which reaches the
//! others (the deaf can send). And the deaf accuse early: they find their
//! neighbours silent from the cut, where their own silence shows to others
//! only once the echoes they send run out ([`crate::pulse`]'s
//! `ECHO_ROUNDS`). The three-node Swarm test saw healthy replicas leave a
//! gateway's view for 130 ms, and requests in flight to them fail.
//!
//! From a member's own seat, "the others died" and "I hear no one" look
//! alike; the difference is in the rest of the cluster. So before a member
//! declares a node dead, it checks its hearing: it pings
//! [`HEARING_PINGS`] live members at random, none of them one it suspects
//! itself (any member answers a pulse), and hears well if more than half
//! of them answer within a round. A member that died with others leaves the survivors
//! hearing well; the deaf hear from their own node only. A member that
//! hears badly holds its deaths back for up to [`DOUBT_ROUNDS`] rounds:
//! the others meanwhile vote the deaf out of their views, after which the
//! deaf's votes count nowhere (only live members' votes count). Past that,
//! it declares anyway: when most of a small cluster dies at once, the
//! survivors are the ones that hear badly.
//!
//! A check stands for [`FRESH_ROUNDS`] rounds, and starts when a helper
//! first says it hears nothing of a node we probe (rounds before the vote
//! it may lead to; nothing is pinged while probes end in vouches), so a
//! death waits for one only where a member's first news of it is a quorum
//! of votes. Members that hear of a
//! death second-hand (not the node's neighbour, not a voter) take it as it
//! comes: it was declared by one that heard well.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::time::Instant;
use tracing::debug;

use crate::probe::rounds_past;
use crate::{Chitchat, ChitchatId};

/// Members pinged to check our hearing.
const HEARING_PINGS: usize = 24;
/// A check's result stands that many rounds.
const FRESH_ROUNDS: u32 = 6;
/// Most rounds a death waits on a member's poor hearing.
const DOUBT_ROUNDS: u32 = 10;

/// What a member knows of its own hearing.
#[derive(Default)]
pub(crate) struct Hearing {
    /// The last check: when, and whom it pinged.
    check: Option<(Instant, Vec<SocketAddr>)>,
    /// Deaths that wait on our hearing, and since when.
    doubted: HashMap<ChitchatId, Instant>,
}

impl Hearing {
    /// Whether `node`'s death waits on our hearing.
    pub(crate) fn doubts(&self, node: &ChitchatId) -> bool {
        self.doubted.contains_key(node)
    }

    /// The nodes whose deaths wait on our hearing (counted again each round).
    pub(crate) fn doubted(&self) -> Vec<ChitchatId> {
        self.doubted.keys().cloned().collect()
    }

    /// Forgets the doubts about nodes `keep` says no longer need counting.
    pub(crate) fn retain_doubts(&mut self, keep: impl Fn(&ChitchatId) -> bool) {
        self.doubted.retain(|id, _| keep(id));
    }

    /// The last check's verdict: `None` while it has no fresh result (none,
    /// stale, or its answers still on their way); `Some(true)` if more than
    /// half of those pinged (or nobody to ping) answered since.
    fn verdict(
        &self,
        now: Instant,
        round: std::time::Duration,
        answered_since: impl Fn(SocketAddr, Instant) -> bool,
    ) -> Option<bool> {
        let (at, asked) = self.check.as_ref()?;
        let age = now.duration_since(*at);
        if rounds_past(age, round, FRESH_ROUNDS) {
            return None;
        }
        let answered = asked.iter().filter(|a| answered_since(**a, *at)).count();
        if asked.is_empty() || answered * 2 > asked.len() {
            return Some(true);
        }
        // Answers come within a round; until then, not yet bad.
        (age >= round).then_some(false)
    }

    /// Whether a check is fresh or under way (no need to start one).
    fn checking(&self, now: Instant, round: std::time::Duration) -> bool {
        self.check
            .as_ref()
            .is_some_and(|(at, _)| !rounds_past(now.duration_since(*at), round, FRESH_ROUNDS))
    }
}

impl Chitchat {
    /// Checks our hearing unless a check is fresh: a pulse to
    /// [`HEARING_PINGS`] live members at random that we do not suspect.
    pub(crate) fn check_hearing(&mut self, now: Instant) {
        let round = self.config.gossip_interval;
        if self
            .pulses
            .as_ref()
            .is_none_or(|p| p.hearing.checking(now, round))
        {
            return;
        }
        let state_hash = self.state_hash();
        let heartbeat = self.own_heartbeat();
        let me = self.config.chitchat_id.clone();
        let Some(p) = self.pulses.as_mut() else {
            return;
        };
        let candidates: Vec<&ChitchatId> = p
            .live()
            .iter()
            .filter(|id| **id != me && !p.suspects(id))
            .collect();
        let pings: Vec<_> = rand::seq::index::sample(
            &mut rand::rng(),
            candidates.len(),
            HEARING_PINGS.min(candidates.len()),
        )
        .into_iter()
        .map(|i| p.pulse_to(candidates[i], state_hash, heartbeat))
        .collect();
        p.hearing.check = Some((now, pings.iter().map(|(addr, _)| *addr).collect()));
        debug!(pinged = pings.len(), "hearing check");
        self.outbox.extend(pings);
    }

    /// Whether this member hears well enough to declare `node` dead now;
    /// if not, the death waits (counted again each round) until it does, or
    /// for at most [`DOUBT_ROUNDS`] rounds.
    pub(crate) fn hears_enough_to_declare(&mut self, node: &ChitchatId, now: Instant) -> bool {
        let round = self.config.gossip_interval;
        let verdict = {
            let answered = &self.answered;
            let Some(p) = self.pulses.as_ref() else {
                return true;
            };
            p.hearing.verdict(now, round, |addr, at| {
                answered.get(&addr).is_some_and(|when| *when > at)
            })
        };
        if verdict.is_none() {
            self.check_hearing(now);
        }
        let Some(p) = self.pulses.as_mut() else {
            return true;
        };
        let since = *p.hearing.doubted.entry(node.clone()).or_insert(now);
        let declare = verdict == Some(true) || rounds_past(now - since, round, DOUBT_ROUNDS);
        if declare {
            p.hearing.doubted.remove(node);
        } else if since == now {
            debug!(node = %node.node_id, ?verdict, "death held: our hearing is in doubt");
        }
        declare
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }

    #[tokio::test(start_paused = true)]
    async fn hearing_is_good_when_half_answer_and_bad_only_after_a_round() {
        let round = Duration::from_millis(100);
        let start = Instant::now();
        let mut h = Hearing::default();
        assert_eq!(h.verdict(start, round, |_, _| true), None, "no check yet");
        h.check = Some((start, (1..=4).map(addr).collect()));
        let three = |a: SocketAddr, _| a.port() <= 3;
        let two = |a: SocketAddr, _| a.port() <= 2;
        assert_eq!(h.verdict(start, round, three), Some(true));
        assert_eq!(h.verdict(start, round, two), None, "answers on their way");
        let later = start + round;
        assert_eq!(
            h.verdict(later, round, two),
            Some(false),
            "half is not enough"
        );
        assert!(h.checking(later, round));
        let stale = start + round * FRESH_ROUNDS;
        assert_eq!(h.verdict(stale, round, three), None, "stale");
        assert!(!h.checking(stale, round));
        h.check = Some((start, Vec::new()));
        assert_eq!(
            h.verdict(start, round, |_, _| false),
            Some(true),
            "nobody to ask"
        );
    }
}
