//! `ClusterView`: service name → its members, as this member sees them now.
//!
//! A view is immutable and cheap to share (`Arc`); a new one is built on
//! every membership change and published on a `tokio::sync::watch` channel,
//! so readers (the gateway's balancer) never lock and never see a half-built
//! view.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::member::{Health, Member};

/// The members of every service, grouped and sorted.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ClusterView {
    services: BTreeMap<String, Vec<Arc<Member>>>,
    /// Announced path prefixes, longest first: `(prefix, service)`.
    #[serde(skip)]
    routes: Vec<(String, String)>,
}

impl ClusterView {
    /// Builds a view from live members. When a member restarted, only its
    /// newest generation is kept: a restarted member replaces its predecessor
    /// at once rather than lingering beside it until the failure detector
    /// notices the old one is gone. Members that announced `left` are dropped.
    pub fn from_members(members: impl IntoIterator<Item = Member>) -> Self {
        let mut newest: BTreeMap<String, Member> = BTreeMap::new();
        for member in members {
            match newest.get(&member.id.node) {
                Some(seen) if seen.id.generation >= member.id.generation => {}
                _ => {
                    newest.insert(member.id.node.clone(), member);
                }
            }
        }
        let mut services: BTreeMap<String, Vec<Arc<Member>>> = BTreeMap::new();
        let mut routes = Vec::new();
        for member in newest.into_values().filter(|m| m.health != Health::Left) {
            for route in &member.routes {
                routes.push((route.clone(), member.service.clone()));
            }
            services
                .entry(member.service.clone())
                .or_default()
                .push(Arc::new(member));
        }
        for members in services.values_mut() {
            members.sort_by(|a, b| a.addr.cmp(&b.addr).then(a.id.cmp(&b.id)));
        }
        routes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.cmp(b)));
        routes.dedup();
        Self { services, routes }
    }

    /// Every member of `service`, whatever its health; `None` if no member
    /// of that service is known.
    pub fn service(&self, service: &str) -> Option<&[Arc<Member>]> {
        self.services.get(service).map(Vec::as_slice)
    }

    /// The members of `service` that may receive traffic.
    pub fn up(&self, service: &str) -> impl Iterator<Item = &Arc<Member>> {
        self.service(service)
            .unwrap_or(&[])
            .iter()
            .filter(|m| m.is_up())
    }

    /// Services and their members, sorted by name.
    pub fn services(&self) -> impl Iterator<Item = (&str, &[Arc<Member>])> {
        self.services
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Every member.
    pub fn members(&self) -> impl Iterator<Item = &Arc<Member>> {
        self.services.values().flatten()
    }

    /// The service that announced the longest prefix matching `path` on a
    /// segment boundary (`/story` matches `/story` and `/story/7`, not `/storyx`).
    pub fn service_for_path(&self, path: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|(prefix, _)| {
                path.strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .map(|(_, service)| service.as_str())
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.services.values().map(Vec::len).sum()
    }

    /// Whether the view has no member.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::MemberId;

    fn member(
        node: &str,
        generation: u64,
        service: &str,
        health: Health,
        routes: &[&str],
    ) -> Member {
        Member {
            id: MemberId {
                node: node.into(),
                generation,
            },
            service: service.into(),
            addr: format!("127.0.0.{}:8768", node.len()).parse().unwrap(),
            health,
            routes: routes.iter().map(|r| r.to_string()).collect(),
            host: node.into(),
            version: "0".into(),
            started_ms: 0,
            gossip_addr: "127.0.0.1:7950".parse().unwrap(),
        }
    }

    #[test]
    fn only_up_members_are_eligible() {
        let view = ClusterView::from_members([
            member("a", 1, "story-service", Health::Up, &[]),
            member("bb", 1, "story-service", Health::Starting, &[]),
            member("ccc", 1, "story-service", Health::Draining, &[]),
        ]);
        assert_eq!(view.service("story-service").unwrap().len(), 3);
        let up: Vec<_> = view
            .up("story-service")
            .map(|m| m.id.node.as_str())
            .collect();
        assert_eq!(up, ["a"]);
        assert!(view.service("notice-service").is_none());
    }

    #[test]
    fn restarted_member_replaces_its_predecessor() {
        let view = ClusterView::from_members([
            member("a", 2, "story-service", Health::Starting, &[]),
            member("a", 1, "story-service", Health::Up, &[]),
        ]);
        let members = view.service("story-service").unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].id.generation, 2);
        assert_eq!(view.up("story-service").count(), 0);
    }

    #[test]
    fn left_members_vanish() {
        let view = ClusterView::from_members([member("a", 1, "s", Health::Left, &[])]);
        assert!(view.is_empty());
    }

    #[test]
    fn path_routes_match_longest_prefix_on_segment_boundary() {
        let view = ClusterView::from_members([
            member("a", 1, "story-service", Health::Up, &["/story"]),
            member("bb", 1, "story-admin", Health::Up, &["/story/admin"]),
        ]);
        assert_eq!(view.service_for_path("/story"), Some("story-service"));
        assert_eq!(view.service_for_path("/story/7"), Some("story-service"));
        assert_eq!(view.service_for_path("/story/admin/x"), Some("story-admin"));
        assert_eq!(view.service_for_path("/storyx"), None);
        assert_eq!(view.service_for_path("/notice"), None);
    }
}
