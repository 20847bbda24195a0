//! `ClusterView`: service name → its members, as this member sees them now.
//!
//! A view is immutable and cheap to share (`Arc`); a new one is built on
//! every membership change and published on a `tokio::sync::watch` channel,
//! so readers (the gateway's balancer) never lock and never see a half-built
//! view.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::member::{Health, Member, MemberId};

/// The members of every service, grouped and sorted. Serialized as the map
/// `{"<service>": [<member>, …]}`.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
#[serde(transparent)]
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

/// What happened to a member between two views: the event log of the
/// dashboard and of `shoal members --watch`, like Eureka's "last registered /
/// last cancelled".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberEvent {
    /// Appeared (a new member, or a new generation of a restarted one).
    Joined,
    /// Became ready for traffic.
    Up,
    /// Went back to not ready (e.g. lost its database).
    Starting,
    /// Announced it is stopping.
    Draining,
    /// Vanished after announcing it (drained, or an Eureka cancel).
    Left,
    /// Vanished without a word: killed, partitioned, replaced by its next
    /// generation, or its Eureka lease ran out (a cancelled one left).
    Failed,
}

impl MemberEvent {
    /// The word shown.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberEvent::Joined => "joined",
            MemberEvent::Up => "up",
            MemberEvent::Starting => "starting",
            MemberEvent::Draining => "draining",
            MemberEvent::Left => "left",
            MemberEvent::Failed => "failed",
        }
    }
}

impl ClusterView {
    /// The events that lead from `old` to `self`, departures first.
    pub fn events_since(&self, old: &ClusterView) -> Vec<(MemberEvent, Arc<Member>)> {
        let before: BTreeMap<&MemberId, &Arc<Member>> = old.members().map(|m| (&m.id, m)).collect();
        let after: BTreeMap<&MemberId, &Arc<Member>> = self.members().map(|m| (&m.id, m)).collect();
        let mut events = Vec::new();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        for (id, m) in &before {
            if !after.contains_key(id) {
                // A drained member left; so did an Eureka instance whose lease
                // had time left (cancelled). One whose lease ran out failed.
                let announced = match &m.lease {
                    Some(lease) => now_ms < lease.deadline_ms(),
                    None => m.health == Health::Draining,
                };
                let event = if announced {
                    MemberEvent::Left
                } else {
                    MemberEvent::Failed
                };
                events.push((event, Arc::clone(m)));
            }
        }
        for (id, m) in &after {
            let health_event = |h: Health| match h {
                Health::Up => Some(MemberEvent::Up),
                Health::Starting => Some(MemberEvent::Starting),
                Health::Draining => Some(MemberEvent::Draining),
                Health::Left => None,
            };
            match before.get(id) {
                None => {
                    events.push((MemberEvent::Joined, Arc::clone(m)));
                    if let Some(e) = health_event(m.health).filter(|e| *e != MemberEvent::Starting)
                    {
                        events.push((e, Arc::clone(m)));
                    }
                }
                Some(was) if was.health != m.health => {
                    if let Some(e) = health_event(m.health) {
                        events.push((e, Arc::clone(m)));
                    }
                }
                Some(_) => {}
            }
        }
        events
    }
}

/// What a gateway's admin port answers on `GET /members`: who answers, and
/// its view. The one typed form of that document, written by the gateway and
/// read by `shoal local`, the chaos tool and the tests.
///
/// ```json
/// {"self": {"node": "gateway@10.0.9.3:4000", "generation": 1764145371123},
///  "services": {"story-service": [{"id": {…}, "service": "story-service",
///    "addr": "10.0.9.7:8768", "health": "up", "routes": ["/story"],
///    "host": "a1b2c3", "version": "0.1.0", "started_ms": 1764145370000,
///    "gossip_addr": "10.0.9.7:7950"}]},
///  "protocol": "v4"}
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersDoc {
    /// The member that answered.
    #[serde(rename = "self")]
    pub self_id: MemberId,
    /// Its view: service → members, as [`ClusterView`] serializes.
    pub services: BTreeMap<String, Vec<Arc<Member>>>,
    /// The gossip protocol it speaks now (`"v3"`, `"v4"`); absent from
    /// releases before `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

impl MembersDoc {
    /// The document for `view`, as seen by `self_id`.
    pub fn new(self_id: MemberId, view: &ClusterView) -> Self {
        Self {
            self_id,
            services: view.services.clone(),
            protocol: None,
        }
    }

    /// Every member, of every service.
    pub fn members(&self) -> impl Iterator<Item = &Arc<Member>> {
        self.services.values().flatten()
    }

    /// How many members of `service` are `up`.
    pub fn up_count(&self, service: &str) -> usize {
        self.services
            .get(service)
            .map_or(0, |m| m.iter().filter(|m| m.is_up()).count())
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
            lease: None,
            policy: Default::default(),
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
    fn members_doc_round_trips_and_matches_the_view_serialization() {
        let view = ClusterView::from_members([
            member("a", 1, "story-service", Health::Up, &["/story"]),
            member("bb", 1, "story-service", Health::Starting, &[]),
        ]);
        let id = MemberId {
            node: "gw".into(),
            generation: 7,
        };
        let doc = MembersDoc::new(id.clone(), &view);
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["services"], serde_json::to_value(&view).unwrap());
        assert_eq!(json["self"]["generation"], 7);
        let back: MembersDoc = serde_json::from_value(json).unwrap();
        assert_eq!(back.self_id, id);
        assert_eq!(back.up_count("story-service"), 1);
        assert_eq!(back.members().count(), 2);
        assert_eq!(
            *back.services["story-service"][0],
            *view.members().next().unwrap().clone()
        );
    }

    #[test]
    fn events_tell_joins_health_changes_departures_and_failures() {
        let old = ClusterView::from_members([
            member("a", 1, "s", Health::Up, &[]),
            member("bb", 1, "s", Health::Draining, &[]),
            member("ccc", 1, "s", Health::Starting, &[]),
            member("dddd", 1, "s", Health::Up, &[]),
        ]);
        let new = ClusterView::from_members([
            member("a", 2, "s", Health::Starting, &[]),
            member("ccc", 1, "s", Health::Up, &[]),
            member("dddd", 1, "s", Health::Up, &[]),
            member("eeeee", 1, "s", Health::Up, &[]),
        ]);
        let got: Vec<(MemberEvent, String)> = new
            .events_since(&old)
            .into_iter()
            .map(|(e, m)| (e, m.id.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (MemberEvent::Failed, "a#1".to_string()),
                (MemberEvent::Left, "bb#1".to_string()),
                (MemberEvent::Joined, "a#2".to_string()),
                (MemberEvent::Up, "ccc#1".to_string()),
                (MemberEvent::Joined, "eeeee#1".to_string()),
                (MemberEvent::Up, "eeeee#1".to_string()),
            ]
        );
        assert!(new.events_since(&new).is_empty());
    }

    #[test]
    fn left_members_vanish() {
        let view = ClusterView::from_members([member("a", 1, "s", Health::Left, &[])]);
        assert!(view.is_empty());
    }

    #[test]
    fn a_route_of_slashes_is_no_route_at_all() {
        // Found by fuzzing: `//` trimmed to an empty prefix matched every path.
        let gossip = "127.0.0.1:7950".parse().unwrap();
        let keys = |k: &str| match k {
            "service" => Some("x"),
            "addr" => Some("10.0.0.1:80"),
            "health" => Some("up"),
            "routes" => Some("//, / ,/ok/"),
            _ => None,
        };
        let m = Member::from_keys("x@1", 1, gossip, keys).unwrap().unwrap();
        assert_eq!(m.routes, ["/ok"]);
        let view = ClusterView::from_members([m]);
        assert_eq!(view.service_for_path("/story/7"), None);
        assert_eq!(view.service_for_path("/ok/1"), Some("x"));
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
