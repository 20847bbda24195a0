//! The view from the gossip: rebuilt on every change of chitchat's live set
//! and whenever a lease runs out. Live members that joined by themselves,
//! and every live lease any member holds.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{Chitchat, ChitchatHandle};
use tokio::sync::watch;
use tracing::warn;

use crate::clock::now_ms;
use crate::leases::newest_leases;
use crate::member::Member;
use crate::view::ClusterView;

/// Rebuilds the view on every change of chitchat's live set, and when a
/// lease runs out.
pub(crate) fn spawn_view_builder(handle: &ChitchatHandle) -> watch::Receiver<Arc<ClusterView>> {
    let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
    // Weak: when the handle is dropped, chitchat and its watcher go with it,
    // `changed()` fails and this task ends.
    let chitchat = Arc::downgrade(&handle.chitchat());
    tokio::spawn(async move {
        let Some(strong) = chitchat.upgrade() else {
            return;
        };
        // A change number, not chitchat's snapshots: the view is built
        // from the states themselves, so a copy of them all at every change
        // would be thrown away.
        let mut live = strong.lock().await.live_changes();
        drop(strong);
        loop {
            live.borrow_and_update();
            let Some(strong) = chitchat.upgrade() else {
                return;
            };
            let (view, next_deadline) = build_view(&*strong.lock().await, now_ms());
            drop(strong);
            // Gossip changes that are not membership (traffic figures) leave
            // the view as it was: no new view then.
            view_tx.send_if_modified(|current| {
                let changed = **current != view;
                if changed {
                    *current = Arc::new(view);
                }
                changed
            });
            let expiry = async {
                match next_deadline {
                    Some(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms.saturating_sub(now_ms()))).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = live.changed() => if changed.is_err() { return },
                () = expiry => {}
            }
        }
    });
    view_rx
}

/// The view: live members that joined by themselves, and every live lease
/// held by any member, live or dead (a lease outlives the gateway that took
/// it). Also gives the next time a lease runs out.
pub(crate) fn build_view(c: &Chitchat, now_ms: u64) -> (ClusterView, Option<u64>) {
    let mut members: Vec<Member> = c
        .live_nodes()
        .filter_map(|id| {
            let state = c.node_state(id)?;
            Member::from_state(id, state).unwrap_or_else(|err| {
                warn!(%err, "ignoring member");
                None
            })
        })
        .collect();
    let native: HashSet<String> = members.iter().map(Member::instance_id).collect();
    let mut next_deadline: Option<u64> = None;
    for (id, (lease, holder)) in newest_leases(c.node_states().iter()) {
        if !lease.is_live(now_ms) || native.contains(&id) {
            continue;
        }
        next_deadline =
            Some(next_deadline.map_or(lease.deadline_ms(), |d| d.min(lease.deadline_ms())));
        members.push(Member::from_lease(&lease, holder.gossip_advertise_addr));
    }
    (ClusterView::from_members(members), next_deadline)
}

#[cfg(test)]
mod tests {
    use crate::lease::LeaseOp;
    use crate::member::Health;
    use crate::testkit::{members, registration, wait_for};

    #[tokio::test]
    async fn a_lease_is_a_member_until_it_runs_out_or_is_cancelled() {
        let g = members("gateway", 2).await;
        let (a, b) = (&g[0], &g[1]);
        let leased = |c: &crate::Cluster, id: &str| {
            c.view()
                .borrow()
                .members()
                .find(|m| m.lease.is_some() && m.instance_id() == id)
                .map(|m| m.health)
        };
        let mut short = registration("i-short");
        short.duration_secs = 1;
        a.lease("ORDERS", "i-short", LeaseOp::Register(Box::new(short)))
            .await
            .expect("registers");
        a.lease(
            "ORDERS",
            "i-long",
            LeaseOp::Register(Box::new(registration("i-long"))),
        )
        .await
        .expect("registers");
        wait_for("both leases in the other view, up", || async move {
            leased(b, "i-short") == Some(Health::Up) && leased(b, "i-long") == Some(Health::Up)
        })
        .await;
        // Nobody renews i-short: it leaves every view at its deadline,
        // though no gossip changes then.
        wait_for("the lease that ran out gone", || async move {
            leased(a, "i-short").is_none() && leased(b, "i-short").is_none()
        })
        .await;
        assert!(leased(b, "i-long").is_some());
        // Renewed at the other gateway (its renewal alone travels): a 1 s
        // lease stays in both views while renewed, and leaves them a second
        // after the last renewal, not before.
        let mut brief = registration("i-brief");
        brief.duration_secs = 1;
        a.lease("ORDERS", "i-brief", LeaseOp::Register(Box::new(brief)))
            .await
            .expect("registers");
        let mut last = std::time::Instant::now();
        for _ in 0..4 {
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            b.lease("ORDERS", "i-brief", LeaseOp::Renew { status: None })
                .await
                .expect("renews");
            last = std::time::Instant::now();
            assert!(leased(a, "i-brief").is_some() && leased(b, "i-brief").is_some());
        }
        wait_for("the brief lease gone", || async move {
            leased(a, "i-brief").is_none() && leased(b, "i-brief").is_none()
        })
        .await;
        let lasted = last.elapsed();
        assert!(
            lasted >= std::time::Duration::from_millis(950),
            "out {lasted:?} after the last renewal"
        );
        // The holder's upkeep keeps its record while renewals held elsewhere
        // keep the lease live (it judged by the record's own deadline once).
        let mut kept = registration("i-kept");
        kept.duration_secs = 1;
        a.lease("ORDERS", "i-kept", LeaseOp::Register(Box::new(kept)))
            .await
            .expect("registers");
        wait_for("the kept lease in b's view", || async move {
            leased(b, "i-kept").is_some()
        })
        .await;
        let later = crate::clock::now_ms() + 5_500;
        b.lease("ORDERS", "i-kept", LeaseOp::Renew { status: None })
            .await
            .expect("renews");
        wait_for("the renewal at the holder", || async move {
            let chitchat = a.chitchat();
            let c = chitchat.lock().await;
            crate::leases::newest_leases(c.node_states().iter())
                .get("i-kept")
                .is_some_and(|(l, _)| l.renewed_ms > l.registered_ms)
        })
        .await;
        {
            let chitchat = b.chitchat();
            let mut c = chitchat.lock().await;
            let own = crate::lease::renewal_key("i-kept");
            let (version, _) = c
                .self_node_state()
                .get(&own)
                .and_then(crate::lease::parse_renewal)
                .expect("b's renewal");
            // As if b renewed it 5.5 s from now: past the record's own
            // deadline and its grace.
            c.self_node_state()
                .set(own, crate::lease::renewal(version, later));
        }
        wait_for("the later renewal at the holder", || async move {
            let chitchat = a.chitchat();
            let c = chitchat.lock().await;
            crate::leases::newest_leases(c.node_states().iter())
                .get("i-kept")
                .is_some_and(|(l, _)| l.renewed_ms == later)
        })
        .await;
        let chitchat = a.chitchat();
        let mut c = chitchat.lock().await;
        crate::leases::keep(&mut c, later + 500);
        assert!(
            c.self_node_state()
                .get(&crate::lease::key("i-kept"))
                .is_some(),
            "the holder dropped a record renewals keep live"
        );
        drop(c);
        b.lease("ORDERS", "i-long", LeaseOp::Cancel)
            .await
            .expect("cancels");
        wait_for("the cancelled lease gone", || async move {
            leased(a, "i-long").is_none() && leased(b, "i-long").is_none()
        })
        .await;
    }

    #[tokio::test]
    async fn a_lease_in_the_name_of_a_member_that_joined_itself_is_refused() {
        let g = members("orders", 1).await;
        let own = g[0].id().node.clone();
        let refused = g[0]
            .lease(
                "ORDERS",
                &own,
                LeaseOp::Register(Box::new(registration(&own))),
            )
            .await;
        assert!(refused.is_err(), "{refused:?}");
    }
}
