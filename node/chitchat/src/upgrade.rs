//! shoal patch: a rolling upgrade from protocol V3 to V4, and back.
//!
//! V3 judges liveness by heartbeats in every digest, V4 by pulses between
//! ring neighbours (see `pulse`): a V3 member would take every V4 member for
//! dead, and a V4 member every V3 one. So a member configured for V4 with
//! [`ChitchatConfig::upgrade`] speaks V3 until every live member can speak
//! V4, and V3 again as soon as one cannot:
//!
//! - **Who can.** Such a member sets [`PROTOCOL_KEY`] first of its keys (the
//!   lowest version, so it travels before the others). A live node whose
//!   state holds keys but not that one cannot speak V4 (an older release, a
//!   member pinned to V3); a node with no keys yet is waited for.
//! - **Up.** Every live node able, for [`SETTLE_ROUNDS`] rounds in a row:
//!   V4. Members switch within a round trip or two of each other (they see
//!   the last V3 member leave at about the same time); for
//!   [`BRIDGE_ROUNDS`] rounds after its switch a member also gossips as V3
//!   did (SYNs to random peers, carrying everyone's heartbeats) and counts
//!   the heartbeats it hears as signs of life, so that members still on V3
//!   keep hearing from it, and it votes against no neighbour that has not
//!   switched yet. Nodes dead under V3 stay dead.
//! - **Down.** A live node that cannot: V3 at once. Every live node starts
//!   a fresh sampling window (V4 fed only its neighbours'), and for
//!   [`GRACE_ROUNDS`] rounds phi removes no one, while the members that have
//!   not yet seen that node still pulse and the heartbeats start to flow.
//!
//! [`ChitchatConfig::upgrade`]: crate::ChitchatConfig::upgrade

use tokio::time::Instant;
use tracing::info;

use crate::configuration::V3Settings;
use crate::{Chitchat, ProtocolVersion};

/// The key a member able to speak V4 sets, first of its keys.
pub const PROTOCOL_KEY: &str = "chitchat:protocol";
/// The value of [`PROTOCOL_KEY`] a member of this release sets: its
/// feature level. 4: V4. 5: V4, and it takes rumors as
/// [`crate::ChitchatMessage::SynNamed`] (news by node, not by bucket), sent
/// only to members whose level says so — the envelope stays V4, and a
/// member of an earlier release, reading any level of 4 or more as "can
/// speak V4", is sent `SynScoped` as before.
pub const NAMED_RUMORS_LEVEL: u8 = 5;
/// Rounds every live member must have been able before V4.
pub(crate) const SETTLE_ROUNDS: u32 = 30;
/// Rounds after switching to V4 during which a member also gossips as V3.
pub(crate) const BRIDGE_ROUNDS: u32 = 100;
/// Rounds after falling back to V3 during which phi removes no one.
pub(crate) const GRACE_ROUNDS: u32 = 30;

/// Whether every live member can speak V4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ability {
    All,
    /// Some have no keys yet.
    Pending,
    /// At least one cannot.
    NotAll,
}

/// What a member that upgrades keeps.
pub(crate) struct Upgrade {
    v3: V3Settings,
    v4: V3Settings,
    /// The (live set, states) epochs `ability` was computed for.
    checked_for: Option<(u64, u64)>,
    ability: Ability,
    /// The lowest feature level among the live members whose keys reached
    /// us, as of `checked_for`.
    lowest_level: u8,
    able_since: Option<Instant>,
    bridge_until: Option<Instant>,
    grace_until: Option<Instant>,
    /// Switches so far (for tests and logs).
    switches: u32,
    /// When a peer last spoke V4 to us (a pulse, a vote, buckets): the
    /// cluster is on V4 already (or switching), and a member that joins it
    /// switches as soon as every member it holds live can, not after
    /// settling (its neighbours would vote it dead meanwhile).
    v4_heard_at: Option<Instant>,
    /// When this member started, and when a peer first spoke V4 to it: a
    /// member that hears V4 within [`SETTLE_ROUNDS`] of starting is new to
    /// a cluster on V4 (see `switch_to_v4`).
    started: Instant,
    first_v4_heard_at: Option<Instant>,
    /// Nodes that died here under V3 (not those never live): they stay
    /// dead on the switch to V4.
    died: std::collections::HashSet<crate::ChitchatId>,
}

/// Most deaths under V3 remembered for the switch.
const MAX_DIED: usize = 4096;

impl Upgrade {
    /// `v4`: the configured (V4) settings, `v3`: what to run meanwhile.
    pub(crate) fn new(v3: V3Settings, v4: V3Settings) -> Self {
        Upgrade {
            v3,
            v4,
            checked_for: None,
            ability: Ability::Pending,
            lowest_level: NAMED_RUMORS_LEVEL,
            able_since: None,
            bridge_until: None,
            grace_until: None,
            switches: 0,
            v4_heard_at: None,
            started: Instant::now(),
            first_v4_heard_at: None,
            died: Default::default(),
        }
    }
}

/// The feature level a member's value of [`PROTOCOL_KEY`] gives.
pub(crate) fn level(value: Option<&str>) -> Option<u8> {
    value.and_then(|v| v.parse::<u8>().ok())
}

/// What a member's value of [`PROTOCOL_KEY`] says it can speak.
fn can_speak_v4(value: Option<&str>) -> bool {
    level(value).is_some_and(|v| v >= ProtocolVersion::V4.to_code())
}

impl Chitchat {
    /// The protocol this member speaks now.
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.config.protocol_version
    }

    /// Starts in V3 if configured to upgrade (the settings swapped for V3's).
    pub(crate) fn start_upgrade(&mut self) {
        let Some(v3) = self.config.upgrade else {
            return;
        };
        if self.config.protocol_version < ProtocolVersion::V4 {
            return;
        }
        let v4 = V3Settings {
            phi_threshold: self.config.failure_detector_config.phi_threshold,
            gossip_fanout: self.config.gossip_fanout,
        };
        self.upgrade = Some(Upgrade::new(v3, v4));
        self.apply_settings(ProtocolVersion::V3, v3);
    }

    fn apply_settings(&mut self, version: ProtocolVersion, settings: V3Settings) {
        self.config.protocol_version = version;
        self.config.failure_detector_config.phi_threshold = settings.phi_threshold;
        self.config.gossip_fanout = settings.gossip_fanout;
        self.failure_detector
            .set_phi_threshold(settings.phi_threshold);
    }

    /// Whether every live member can speak V4 (walks the live set only when
    /// it or a state changed).
    fn ability(&mut self) -> Ability {
        let signature = (self.failure_detector.live_epoch(), self.state_epoch);
        if let Some(u) = &self.upgrade {
            if u.checked_for == Some(signature) {
                return u.ability;
            }
        }
        let me = self.self_chitchat_id();
        let mut ability = Ability::All;
        let mut lowest_level = NAMED_RUMORS_LEVEL;
        for id in self.failure_detector.live_nodes() {
            if id == me {
                continue;
            }
            let Some(state) = self.cluster_state.node_state(id) else {
                continue;
            };
            let value = state.get(PROTOCOL_KEY);
            if can_speak_v4(value) {
                lowest_level = lowest_level.min(level(value).unwrap_or(0));
                continue;
            }
            if state.num_key_values() == 0 {
                ability = Ability::Pending;
            } else {
                ability = Ability::NotAll;
                break;
            }
        }
        if let Some(u) = self.upgrade.as_mut() {
            u.checked_for = Some(signature);
            u.ability = ability;
            u.lowest_level = lowest_level;
        }
        ability
    }

    /// The feature level to assume of a member whose keys have not reached
    /// us yet: on `auto`, the lowest among the live members (a rolling
    /// upgrade's members of the earlier release are sent what it reads);
    /// pinned to V4, this release's.
    pub(crate) fn assumed_level(&self) -> u8 {
        self.upgrade
            .as_ref()
            .map_or(NAMED_RUMORS_LEVEL, |u| u.lowest_level)
    }

    /// Switches protocol if the cluster calls for it (every round).
    pub(crate) fn adapt_protocol(&mut self) {
        if self.upgrade.is_none() {
            return;
        }
        let now = Instant::now();
        let interval = self.config.gossip_interval;
        let ability = self.ability();
        let on_v4 = self.pulses.is_some();
        let Some(u) = self.upgrade.as_mut() else {
            return;
        };
        match (on_v4, ability) {
            (false, Ability::All) => {
                let since = *u.able_since.get_or_insert(now);
                // A peer spoke V4 lately: the cluster is on V4 already (or
                // switching), no need to settle.
                let cluster_on_v4 = u
                    .v4_heard_at
                    .is_some_and(|at| now.duration_since(at) < interval * SETTLE_ROUNDS);
                if cluster_on_v4 || now.duration_since(since) >= interval * SETTLE_ROUNDS {
                    let joining = u
                        .first_v4_heard_at
                        .is_some_and(|at| at.duration_since(u.started) < interval * SETTLE_ROUNDS);
                    self.switch_to_v4(now, joining);
                }
            }
            (false, _) => u.able_since = None,
            (true, Ability::NotAll) => self.switch_to_v3(now),
            (true, _) => {
                // Bridging over: V3's windows are of no more use.
                if u.bridge_until.is_some_and(|until| now >= until) {
                    u.bridge_until = None;
                    self.keep_neighbours_windows();
                }
            }
        }
    }

    /// `joining`: new to a cluster on V4, whose members pass on no dead
    /// member (every member it holds is live, if not heard from yet).
    fn switch_to_v4(&mut self, now: Instant, joining: bool) {
        let Some(u) = self.upgrade.as_mut() else {
            return;
        };
        let v4 = u.v4;
        u.able_since = None;
        u.grace_until = None;
        u.bridge_until = Some(now + self.config.gossip_interval * BRIDGE_ROUNDS);
        u.switches += 1;
        let died = std::mem::take(&mut u.died);
        self.apply_settings(ProtocolVersion::V4, v4);
        let mut pulses = crate::pulse::Pulses::default();
        // Dead under V3 stays dead: V4 takes every node it holds that no
        // votes killed for live. Dead: those that died here, and, but for
        // a member new to a cluster on V4, every node not live here and not
        // heard within 10 rounds (joining) — V3 passes on the states of
        // the dead for a while, and a member that joined since never saw
        // them live. A member new to a cluster on V4 has heard of most
        // members once (V4 relays no heartbeats): not live to V3, yet live.
        let heard_since = now.checked_sub(self.config.gossip_interval * 10);
        let me = self.self_chitchat_id().clone();
        let dead: Vec<_> = self
            .cluster_state
            .nodes()
            .filter(|id| **id != me && !self.failure_detector.is_live(id))
            .filter(|id| {
                let heard_lately = self
                    .failure_detector
                    .last_heard(id)
                    .zip(heard_since)
                    .is_some_and(|(heard, since)| heard >= since);
                died.contains(*id) || (!joining && !heard_lately)
            })
            .cloned()
            .collect();
        for id in dead {
            let heartbeat = self
                .cluster_state
                .node_state(&id)
                .map_or(crate::Heartbeat(0), |s| s.heartbeat());
            pulses.seed_death(id, heartbeat, now);
        }
        self.pulses = Some(pulses);
        self.states_changed();
        info!(
            members = self.live_node_count() + 1,
            "every member speaks protocol V4: switched to V4"
        );
    }

    fn switch_to_v3(&mut self, now: Instant) {
        let Some(u) = self.upgrade.as_mut() else {
            return;
        };
        let v3 = u.v3;
        u.bridge_until = None;
        u.able_since = None;
        u.grace_until = Some(now + self.config.gossip_interval * GRACE_ROUNDS);
        u.switches += 1;
        self.apply_settings(ProtocolVersion::V3, v3);
        self.pulses = None;
        let live: Vec<_> = self.failure_detector.live_nodes().cloned().collect();
        for id in &live {
            self.failure_detector.restart(id);
        }
        self.states_changed();
        info!(
            members = live.len() + 1,
            "a member cannot speak protocol V4: back to V3"
        );
    }

    /// A peer spoke V4 to us (see `Upgrade::v4_heard_at`).
    pub(crate) fn heard_v4(&mut self) {
        if let Some(u) = self.upgrade.as_mut() {
            let now = Instant::now();
            u.v4_heard_at = Some(now);
            u.first_v4_heard_at.get_or_insert(now);
        }
    }

    /// `ids` died here under V3 (see `Upgrade::died`).
    pub(crate) fn died_under_v3<'a>(
        &mut self,
        ids: impl IntoIterator<Item = &'a crate::ChitchatId>,
    ) {
        if let Some(u) = self.upgrade.as_mut() {
            if u.died.len() >= MAX_DIED {
                u.died.clear();
            }
            u.died.extend(ids.into_iter().cloned());
        }
    }

    /// Whether this member switched to V4 lately and also gossips as V3
    /// (a switch to V3 clears the deadline).
    pub fn bridging(&self) -> bool {
        self.upgrade_before(|u| u.bridge_until)
    }

    /// Whether this member fell back to V3 lately (phi removes no one; a
    /// switch to V4 clears the deadline).
    pub(crate) fn in_grace(&self) -> bool {
        self.upgrade_before(|u| u.grace_until)
    }

    /// Whether the deadline `of` picks is still ahead.
    fn upgrade_before(&self, of: impl Fn(&Upgrade) -> Option<Instant>) -> bool {
        self.upgrade
            .as_ref()
            .and_then(of)
            .is_some_and(|until| Instant::now() < until)
    }

    /// V3's fanout, for the SYNs of a bridging member.
    pub(crate) fn bridge_fanout(&self) -> usize {
        self.upgrade.as_ref().map_or(0, |u| u.v3.gossip_fanout)
    }

    /// How many times this member switched protocol.
    pub fn protocol_switches(&self) -> u32 {
        self.upgrade.as_ref().map_or(0, |u| u.switches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_says_who_can() {
        assert!(can_speak_v4(Some("4")));
        assert!(can_speak_v4(Some("5")));
        assert!(!can_speak_v4(Some("3")));
        assert!(!can_speak_v4(Some("four")));
        assert!(!can_speak_v4(None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_whose_keys_have_not_come_is_taken_for_the_lowest_level_live() {
        let mut config = crate::ChitchatConfig::for_test(41_000);
        config.protocol_version = ProtocolVersion::V4;
        config.upgrade = Some(V3Settings {
            phi_threshold: 8.0,
            gossip_fanout: 3,
        });
        let seeds = tokio::sync::watch::channel(Default::default()).1;
        let mut chitchat = Chitchat::with_chitchat_id_and_seeds(config, seeds, Vec::new());
        assert_eq!(chitchat.assumed_level(), NAMED_RUMORS_LEVEL);
        let mut levels = vec![("5", 41_001), ("4", 41_002)];
        for (level, port) in &levels {
            let id = crate::ChitchatId::for_local_test(*port);
            chitchat.report_heartbeat(&id, crate::Heartbeat(3));
            let state = chitchat
                .cluster_state
                .node_state_mut(&id)
                .expect("reported");
            state.set(PROTOCOL_KEY, *level);
        }
        for _ in 0..5 {
            for (_, port) in &levels {
                let id = crate::ChitchatId::for_local_test(*port);
                chitchat.failure_detector.report_heartbeat(&id);
            }
            tokio::time::advance(std::time::Duration::from_millis(100)).await;
        }
        chitchat.update_nodes_liveness();
        assert_eq!(
            chitchat.failure_detector.live_nodes().count(),
            2,
            "both live"
        );
        chitchat.states_changed();
        chitchat.ability();
        assert_eq!(
            chitchat.assumed_level(),
            4,
            "a member of the earlier release is live"
        );
        // It leaves: this release's level again.
        levels.pop();
        let gone = crate::ChitchatId::for_local_test(41_002);
        chitchat.failure_detector.mark_dead(&gone);
        chitchat.states_changed();
        chitchat.ability();
        assert_eq!(chitchat.assumed_level(), NAMED_RUMORS_LEVEL);
    }
}
