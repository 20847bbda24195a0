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
        let mut live = strong.lock().await.live_nodes_watcher();
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
