//! The Eureka leases held in gossip: every gateway may hold a copy of a
//! lease under `eureka:{instanceId}`; the newest copy wins. An operation
//! reads the newest copy and writes the result as this member's own; the
//! first live gateway adopts the leases of gateways that are gone, and each
//! forgets its own copies a while after they ran out.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chitchat::{Chitchat, ChitchatId, NodeState};
use tracing::info;

use crate::lease::{self, Lease, LeaseError, LeaseLimits, LeaseOp};
use crate::member::{Health, keys};

/// Applies `op` to the lease of instance `id` of `app`: the newest copy any
/// member holds (with its latest renewal), written back as this member's
/// own, one version higher — or, for a renewal that changes nothing else,
/// only the renewal's time (see [`lease::RENEWAL_PREFIX`]). A registration
/// of an instance not registered yet is refused over `limits`.
pub fn apply(
    c: &mut Chitchat,
    app: &str,
    id: &str,
    op: LeaseOp,
    now_ms: u64,
    limits: Option<LeaseLimits>,
) -> Result<Lease, LeaseError> {
    let key = lease::key(id);
    let renewal_key = lease::renewal_key(id);
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
    if let Some((lease, _)) = current.as_mut() {
        for state in c.node_states().values() {
            if let Some(at) = renewed_at(lease, state.get(&renewal_key)) {
                lease.renewed_ms = at;
            }
        }
    }
    let new_instance = current.as_ref().is_none_or(|(l, _)| !l.is_live(now_ms));
    if let (LeaseOp::Register(_), Some(limits), true) = (&op, limits, new_instance) {
        within_limits(c, app, id, now_ms, limits)?;
    }
    let current = current.map(|(l, _)| l);
    let renewal = matches!(op, LeaseOp::Renew { .. });
    let mut next = Lease::apply(current.as_ref(), app, id, op, now_ms)?;
    match current {
        // A renewal that changed nothing of the registration (no new status).
        Some(current) if renewal && next.registration == current.registration => {
            next.version = current.version;
            c.self_node_state()
                .set(renewal_key, lease::renewal(current.version, now_ms));
        }
        _ => c.self_node_state().set(key, next.encode()?),
    }
    Ok(next)
}

/// When a renewal (as stored) renews `lease`, if it moves its deadline: a
/// renewal of its version at a later time (one of an older version — from
/// before a cancel or a re-registration — counts for nothing).
fn renewed_at(lease: &Lease, renewal: Option<&str>) -> Option<u64> {
    renewal
        .and_then(lease::parse_renewal)
        .filter(|&(version, at)| version == lease.version && at > lease.renewed_ms)
        .map(|(_, at)| at)
}

/// Whether one more live lease (of `app`, instance `id`) stays within
/// `limits`.
fn within_limits(
    c: &Chitchat,
    app: &str,
    id: &str,
    now_ms: u64,
    limits: LeaseLimits,
) -> Result<(), LeaseError> {
    let live: Vec<Arc<Lease>> = newest_leases(c.node_states().iter())
        .into_iter()
        .filter(|(other, (lease, _))| other != id && lease.is_live(now_ms))
        .map(|(_, (lease, _))| lease)
        .collect();
    if live.len() >= limits.total {
        return Err(LeaseError::TooMany {
            held: live.len(),
            max: limits.total,
        });
    }
    let of_app = live
        .iter()
        .filter(|l| l.registration.app.eq_ignore_ascii_case(app))
        .count();
    if of_app >= limits.per_app {
        return Err(LeaseError::TooManyOfApp {
            app: app.to_ascii_uppercase(),
            held: of_app,
            max: limits.per_app,
        });
    }
    Ok(())
}

/// The newest copy of every lease found in `states`, with its holder.
pub(crate) fn newest_leases<'a>(
    states: impl Iterator<Item = (&'a ChitchatId, &'a NodeState)>,
) -> BTreeMap<String, (Arc<Lease>, ChitchatId)> {
    let states: Vec<_> = states.collect();
    let mut newest: BTreeMap<String, (Arc<Lease>, ChitchatId)> = BTreeMap::new();
    for &(holder, state) in &states {
        for (key, value) in state.iter_prefix(lease::KEY_PREFIX) {
            let Some(copy) = Lease::decoded(&value.value) else {
                continue;
            };
            let id = key[lease::KEY_PREFIX.len()..].to_string();
            match newest.get(&id) {
                Some((seen, seen_holder))
                    if !copy.beats(&holder.node_id, seen, &seen_holder.node_id) => {}
                _ => {
                    newest.insert(id, (copy, holder.clone()));
                }
            }
        }
    }
    // Renewals held anywhere move their lease's deadline.
    for (_, state) in &states {
        for (key, value) in state.iter_prefix(lease::RENEWAL_PREFIX) {
            let id = &key[lease::RENEWAL_PREFIX.len()..];
            if let Some((lease, _)) = newest.get_mut(id) {
                // Copied (from the decoded one all share) only if it moves.
                if let Some(at) = renewed_at(lease, Some(&value.value)) {
                    Arc::make_mut(lease).renewed_ms = at;
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
    let newest = newest_leases(c.node_states().iter());
    let mut writes = Vec::new();
    if adopt {
        for (id, (lease, holder)) in &newest {
            if !live.contains(holder) && now_ms < lease.deadline_ms() {
                if let Ok(text) = lease.encode() {
                    info!(instance = %id, from = %holder.node_id, "adopting the lease of a gateway that is gone");
                    writes.push((lease::key(id), text));
                }
            }
        }
    }
    // A copy runs out at its deadline with the renewals of its version held
    // anywhere (the newest lease's), or at its own if it was superseded.
    let mut expired: Vec<String> = c
        .self_node_state()
        .iter_prefix(lease::KEY_PREFIX)
        .filter(|(k, v)| {
            Lease::decoded(&v.value).is_none_or(|l| {
                let deadline = match newest.get(&k[lease::KEY_PREFIX.len()..]) {
                    Some((n, _)) if n.version == l.version => n.deadline_ms().max(l.deadline_ms()),
                    _ => l.deadline_ms(),
                };
                deadline.saturating_add(LEASE_GC_MS) < now_ms
            })
        })
        .map(|(k, _)| k.to_string())
        .collect();
    // Renewals of leases gone, run out, or written again since.
    expired.extend(
        c.self_node_state()
            .iter_prefix(lease::RENEWAL_PREFIX)
            .filter(|(k, v)| {
                let id = &k[lease::RENEWAL_PREFIX.len()..];
                match (newest.get(id), lease::parse_renewal(&v.value)) {
                    (Some((lease, _)), Some((version, _))) => {
                        version != lease.version
                            || lease.deadline_ms().saturating_add(LEASE_GC_MS) < now_ms
                    }
                    _ => true,
                }
            })
            .map(|(k, _)| k.to_string()),
    );
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

#[cfg(test)]
mod tests {
    use chitchat::ChitchatId;

    use super::*;
    use crate::clock::now_ms;
    use crate::testkit::{members, register, registration, wait_for};

    fn copy(version_of: &[LeaseOp], now: u64) -> Lease {
        let mut lease: Option<Lease> = None;
        for op in version_of {
            lease = Some(
                Lease::apply(lease.as_ref(), "ORDERS", "i-1", op.clone(), now).expect("applies"),
            );
        }
        lease.expect("at least one operation")
    }

    #[test]
    fn the_newest_copy_wins_and_garbage_is_skipped() {
        let now = 1_000_000;
        let register = LeaseOp::Register(Box::new(registration("i-1")));
        let old = copy(std::slice::from_ref(&register), now);
        let new = copy(&[register, LeaseOp::Renew { status: None }], now);
        assert!(new.version > old.version);
        let holder =
            |n: &str| ChitchatId::new(n.to_string(), 1, "127.0.0.1:1".parse().expect("addr"));
        let (a, b, c) = (holder("a"), holder("b"), holder("c"));
        let mut sa = NodeState::for_test();
        sa.set(lease::key("i-1"), old.encode().expect("encodes"));
        let mut sb = NodeState::for_test();
        sb.set(lease::key("i-1"), new.encode().expect("encodes"));
        let mut sc = NodeState::for_test();
        sc.set(lease::key("i-2"), "not a lease");
        let newest = newest_leases([(&a, &sa), (&b, &sb), (&c, &sc)].into_iter());
        assert_eq!(newest.len(), 1, "the garbage copy of i-2 is no lease");
        let (lease, by) = &newest["i-1"];
        assert_eq!((lease.version, &*by.node_id), (new.version, "b"));
    }

    #[test]
    fn renewals_move_the_deadline_of_their_version_only() {
        let now = 1_000_000;
        let register = LeaseOp::Register(Box::new(registration("i-1")));
        let lease = copy(std::slice::from_ref(&register), now);
        let holder =
            |n: &str| ChitchatId::new(n.to_string(), 1, "127.0.0.1:1".parse().expect("addr"));
        let (a, b) = (holder("a"), holder("b"));
        let mut sa = NodeState::for_test();
        sa.set(lease::key("i-1"), lease.encode().expect("encodes"));
        let mut sb = NodeState::for_test();
        sb.set(
            lease::renewal_key("i-1"),
            lease::renewal(lease.version, now + 60_000),
        );
        let newest = newest_leases([(&a, &sa), (&b, &sb)].into_iter());
        let (folded, by) = &newest["i-1"];
        assert_eq!((folded.renewed_ms, &*by.node_id), (now + 60_000, "a"));
        assert!(folded.is_live(now + 60_000 + 89_000));
        // A renewal of an older version (from before a cancel) revives nothing.
        let cancelled = copy(&[register, LeaseOp::Cancel], now + 1);
        sa.set(lease::key("i-1"), cancelled.encode().expect("encodes"));
        let newest = newest_leases([(&a, &sa), (&b, &sb)].into_iter());
        let (folded, _) = &newest["i-1"];
        assert!(folded.cancelled && folded.renewed_ms < now + 60_000);
        assert_eq!(lease::parse_renewal("3:12"), Some((3, 12)));
        assert_eq!(lease::parse_renewal("x:12"), None);
    }

    #[tokio::test]
    async fn an_operation_starts_from_the_newest_copy_any_gateway_holds() {
        let g = members("gateway", 2).await;
        let (a, b) = (&g[0], &g[1]);
        let registered = register(a, "i-1").await;
        // b renews a lease only a holds: it reads a's copy, one version up.
        wait_for("the lease in b's view", || async move {
            b.view().borrow().members().any(|m| m.lease.is_some())
        })
        .await;
        let renewed = b
            .lease("ORDERS", "i-1", LeaseOp::Renew { status: None })
            .await
            .expect("renews");
        // A renewal changes the time alone: b writes that, not the record.
        assert_eq!(renewed.version, registered.version);
        assert!(renewed.renewed_ms >= registered.renewed_ms);
        {
            let chitchat = b.chitchat();
            let mut c = chitchat.lock().await;
            let own = c.self_node_state();
            assert!(
                own.get(&lease::key("i-1")).is_none(),
                "no copy of the record"
            );
            let renewal = own.get(&lease::renewal_key("i-1")).expect("a renewal");
            assert_eq!(
                lease::parse_renewal(renewal),
                Some((registered.version, renewed.renewed_ms))
            );
        }
        // A status change writes the record, one version up.
        let down = b
            .lease(
                "ORDERS",
                "i-1",
                LeaseOp::Renew {
                    status: Some(crate::lease::Status::Down),
                },
            )
            .await
            .expect("renews with a status");
        assert_eq!(down.version, registered.version + 1);
        // An unknown instance cannot be renewed.
        assert!(
            b.lease("ORDERS", "i-9", LeaseOp::Renew { status: None })
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_first_gateway_adopts_the_leases_of_one_that_is_gone() {
        let g = members("gateway", 3).await;
        // The keeper is the first live gateway by node id; the holder, another.
        let mut ids: Vec<(String, usize)> = g
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id().node.clone(), i))
            .collect();
        ids.sort();
        let (keeper, other, holder) = (&g[ids[0].1], &g[ids[1].1], &g[ids[2].1]);
        register(holder, "i-1").await;
        let key = lease::key("i-1");
        let holds = |c: &crate::Cluster| {
            let chitchat = c.chitchat();
            let key = key.clone();
            async move { chitchat.lock().await.self_node_state().get(&key).is_some() }
        };
        wait_for("the lease seen by the keeper", || async move {
            keeper.view().borrow().members().any(|m| m.lease.is_some())
        })
        .await;
        // While its holder lives, nobody else copies it.
        assert_eq!(keep(&mut *keeper.chitchat().lock().await, now_ms()), (0, 0));
        holder.abort();
        wait_for("the holder out of the keeper's view", || async move {
            keeper.view().borrow().members().count() == 2 + 1
        })
        .await;
        wait_for("the holder dead to the keeper", || async move {
            keep(&mut *keeper.chitchat().lock().await, now_ms()).0 == 1
        })
        .await;
        assert!(holds(keeper).await, "the keeper holds its own copy");
        assert_eq!(
            keep(&mut *other.chitchat().lock().await, now_ms()).0,
            0,
            "only the first keeper adopts"
        );
        assert!(!holds(other).await);
    }

    #[tokio::test]
    async fn a_copy_that_ran_out_is_forgotten() {
        let g = members("gateway", 1).await;
        let mut r = registration("i-1");
        r.duration_secs = 1;
        g[0].lease("ORDERS", "i-1", LeaseOp::Register(Box::new(r)))
            .await
            .expect("registers");
        let chitchat = g[0].chitchat();
        let later = now_ms() + 1_000 + LEASE_GC_MS + 1;
        assert_eq!(
            keep(&mut *chitchat.lock().await, now_ms()),
            (0, 0),
            "kept while live"
        );
        assert_eq!(keep(&mut *chitchat.lock().await, later), (0, 1));
        assert!(
            chitchat
                .lock()
                .await
                .self_node_state()
                .get(&lease::key("i-1"))
                .is_none()
        );
    }
}
