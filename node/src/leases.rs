//! The Eureka leases held in gossip: every gateway may hold a copy of a
//! lease under `eureka:{instanceId}`; the newest copy wins. An operation
//! reads the newest copy and writes the result as this member's own; the
//! first live gateway adopts the leases of gateways that are gone, and each
//! forgets its own copies a while after they ran out.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chitchat::{Chitchat, ChitchatId, NodeState};
use tracing::info;

use crate::lease::{self, Lease, LeaseError, LeaseOp};
use crate::member::{Health, keys};

/// Applies `op` to the lease of instance `id` of `app`: the newest copy any
/// member holds, written back as this member's own, one version higher.
pub(crate) fn apply(
    c: &mut Chitchat,
    app: &str,
    id: &str,
    op: LeaseOp,
    now_ms: u64,
) -> Result<Lease, LeaseError> {
    let key = lease::key(id);
    let mut current: Option<(Lease, String)> = None;
    for (holder, state) in c.node_states() {
        let Some(copy) = state.get(&key).and_then(Lease::decode) else {
            continue;
        };
        if current
            .as_ref()
            .is_none_or(|(seen, by)| copy.beats(&holder.node_id, seen, by))
        {
            current = Some((copy, holder.node_id.to_string()));
        }
    }
    let next = Lease::apply(current.as_ref().map(|(l, _)| l), app, id, op, now_ms)?;
    c.self_node_state().set(key, next.encode()?);
    Ok(next)
}

/// The newest copy of every lease found in `states`, with its holder.
pub(crate) fn newest_leases<'a>(
    states: impl Iterator<Item = (&'a ChitchatId, &'a NodeState)>,
) -> BTreeMap<String, (Arc<Lease>, ChitchatId)> {
    let mut newest: BTreeMap<String, (Arc<Lease>, ChitchatId)> = BTreeMap::new();
    for (holder, state) in states {
        for (key, value) in state.iter_prefix(lease::KEY_PREFIX) {
            let Some(copy) = Lease::decode(&value.value) else {
                continue;
            };
            let id = key[lease::KEY_PREFIX.len()..].to_string();
            match newest.get(&id) {
                Some((seen, seen_holder))
                    if !copy.beats(&holder.node_id, seen, &seen_holder.node_id) => {}
                _ => {
                    newest.insert(id, (Arc::new(copy), holder.clone()));
                }
            }
        }
    }
    newest
}

/// One round of lease upkeep by a gateway: adopt the leases whose newest copy
/// is held only by a member that is gone (only the first live gateway by
/// node id does, so they are not copied everywhere), and drop this gateway's
/// copies that ran out (a cancel's tombstone included) a while ago.
pub(crate) fn keep(c: &mut Chitchat, now_ms: u64) -> (usize, usize) {
    let me = c.self_chitchat_id().clone();
    let my_service = c
        .node_state(&me)
        .and_then(|s| s.get(keys::SERVICE))
        .map(str::to_string);
    let live: HashSet<ChitchatId> = c.live_nodes().cloned().collect();
    let first_keeper = live
        .iter()
        .filter(|id| {
            c.node_state(id).is_some_and(|s| {
                s.get(keys::SERVICE).map(str::to_string) == my_service
                    && s.get(keys::HEALTH) != Some(Health::Left.as_str())
            })
        })
        .map(|id| &*id.node_id)
        .min();
    let adopt = first_keeper == Some(&*me.node_id);
    let mut writes = Vec::new();
    if adopt {
        for (id, (lease, holder)) in newest_leases(c.node_states().iter()) {
            if !live.contains(&holder) && now_ms < lease.deadline_ms() {
                if let Ok(text) = lease.encode() {
                    info!(instance = %id, from = %holder.node_id, "adopting the lease of a gateway that is gone");
                    writes.push((lease::key(&id), text));
                }
            }
        }
    }
    let expired: Vec<String> = c
        .self_node_state()
        .iter_prefix(lease::KEY_PREFIX)
        .filter(|(_, v)| {
            Lease::decode(&v.value)
                .is_none_or(|l| l.deadline_ms().saturating_add(LEASE_GC_MS) < now_ms)
        })
        .map(|(k, _)| k.to_string())
        .collect();
    let state = c.self_node_state();
    for key in &expired {
        state.delete(key);
    }
    let adopted = writes.len();
    for (key, text) in writes {
        state.set(key, text);
    }
    (adopted, expired.len())
}

/// How long a gateway keeps its copy of a lease after it ran out.
const LEASE_GC_MS: u64 = 5_000;
