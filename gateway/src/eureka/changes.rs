//! The registry and its recent changes, kept together so that a delta and
//! the hash code it carries always come from one snapshot.
//!
//! A task follows the gateway's view: each new view gives a new registry,
//! compared with the previous one instance by instance (renewals are not
//! changes); what was added, modified or deleted is remembered for
//! [`WINDOW`], as Eureka does, and served by `GET apps/delta`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use shoal_node::ClusterView;
use tokio::sync::watch;
use tokio::time::Instant;

use super::record::{Instance, Registry};

/// How long a change stays in the delta (Eureka keeps about 180 s).
pub const WINDOW: Duration = Duration::from_secs(180);

/// What happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It appeared.
    Added,
    /// Something other than a renewal changed.
    Modified,
    /// It left (cancelled, ran out, or gone from gossip).
    Deleted,
}

impl Action {
    /// Eureka's `actionType`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Added => "ADDED",
            Action::Modified => "MODIFIED",
            Action::Deleted => "DELETED",
        }
    }
}

/// The registry now and the changes of the last [`WINDOW`].
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// The full registry.
    pub registry: Registry,
    /// Changes, oldest first; an instance appears once, with its last change.
    pub changes: Vec<(Action, Instance)>,
    /// Grows with every change (`versions__delta`).
    pub version: u64,
}

#[derive(Default)]
struct Log {
    version: u64,
    changes: VecDeque<(Instant, Action, Instance)>,
}

impl Log {
    /// Records the difference between two registries, at `now`.
    fn record(&mut self, before: &Registry, after: &Registry, now: Instant) {
        let old: BTreeMap<&str, &Instance> = before
            .instances()
            .map(|i| (i.instance_id.as_str(), i))
            .collect();
        let new: BTreeMap<&str, &Instance> = after
            .instances()
            .map(|i| (i.instance_id.as_str(), i))
            .collect();
        let mut push = |action, instance: &Instance| {
            self.changes.push_back((now, action, instance.clone()));
            self.version += 1;
        };
        for (id, instance) in &new {
            match old.get(id) {
                None => push(Action::Added, instance),
                Some(was) if was.differs(instance) => push(Action::Modified, instance),
                Some(_) => {}
            }
        }
        for (id, instance) in &old {
            if !new.contains_key(id) {
                push(Action::Deleted, instance);
            }
        }
        while self
            .changes
            .front()
            .is_some_and(|(at, ..)| now.duration_since(*at) > WINDOW)
        {
            self.changes.pop_front();
        }
    }

    fn snapshot(&self, registry: Registry) -> Snapshot {
        // The last change of each instance, in the order they happened.
        let mut last: BTreeMap<&str, usize> = BTreeMap::new();
        for (n, (_, _, i)) in self.changes.iter().enumerate() {
            last.insert(i.instance_id.as_str(), n);
        }
        let mut keep: Vec<usize> = last.into_values().collect();
        keep.sort_unstable();
        Snapshot {
            registry,
            changes: keep
                .into_iter()
                .map(|n| {
                    let (_, action, instance) = &self.changes[n];
                    (*action, instance.clone())
                })
                .collect(),
            version: self.version.max(1),
        }
    }
}

/// Follows `views` and publishes a new [`Snapshot`] on every change, and
/// when old changes leave the window.
pub fn follow(mut views: watch::Receiver<Arc<ClusterView>>) -> watch::Receiver<Arc<Snapshot>> {
    let first = Registry::of(&views.borrow_and_update());
    let mut log = Log::default();
    log.record(&Registry::default(), &first, Instant::now());
    let (tx, rx) = watch::channel(Arc::new(log.snapshot(first.clone())));
    tokio::spawn(async move {
        let mut current = first;
        loop {
            let expire = async {
                match log.changes.front() {
                    Some((at, ..)) => tokio::time::sleep_until(*at + WINDOW).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let next = Registry::of(&views.borrow_and_update());
                    log.record(&current, &next, Instant::now());
                    current = next;
                }
                () = expire => log.record(&current, &current, Instant::now()),
            }
            tx.send_replace(Arc::new(log.snapshot(current.clone())));
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, status: &'static str, renewed: u64) -> Instance {
        Instance {
            instance_id: id.into(),
            app: "ORDERS".into(),
            host_name: "h".into(),
            ip: "10.0.0.1".into(),
            port: 80,
            secure_port: None,
            status,
            overridden: "UNKNOWN",
            vip: "orders".into(),
            secure_vip: "orders".into(),
            data_center: "MyOwn".into(),
            metadata: BTreeMap::new(),
            urls: Default::default(),
            lease_secs: (30, 90),
            registered_ms: 0,
            renewed_ms: Some(renewed),
            updated_ms: 0,
            dirty_ms: 0,
        }
    }

    fn registry(instances: &[Instance]) -> Registry {
        let mut r = Registry::default();
        for i in instances {
            r.apps.entry(i.app.clone()).or_default().push(i.clone());
        }
        r
    }

    #[test]
    fn adds_modifications_and_deletes_are_logged_renewals_are_not() {
        let t0 = Instant::now();
        let mut log = Log::default();
        let a = registry(&[instance("a", "UP", 1), instance("b", "UP", 1)]);
        log.record(&Registry::default(), &a, t0);
        let renewed = registry(&[instance("a", "UP", 2), instance("b", "UP", 2)]);
        log.record(&a, &renewed, t0);
        assert_eq!(log.version, 2, "a renewal is not a change");
        let changed = registry(&[instance("a", "OUT_OF_SERVICE", 2)]);
        log.record(&renewed, &changed, t0 + Duration::from_secs(1));
        let s = log.snapshot(changed.clone());
        let got: Vec<(&str, Action)> = s
            .changes
            .iter()
            .map(|(act, i)| (i.instance_id.as_str(), *act))
            .collect();
        assert_eq!(got, [("a", Action::Modified), ("b", Action::Deleted)]);
        assert_eq!(s.version, 4);
        assert_eq!(s.registry.hashcode(), "OUT_OF_SERVICE_1_");
        // Old changes leave the window.
        log.record(&changed, &changed, t0 + WINDOW + Duration::from_secs(2));
        assert!(log.snapshot(changed).changes.is_empty());
    }
}
