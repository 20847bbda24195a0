//! Route: which service a request goes to and with which path.
//!
//! - `/api/{service}/{rest}` → `{service}`, `GET /{rest}` (prefix and id stripped);
//! - `/api/{prefix}/...` where a service announced the route `/{prefix}` →
//!   that service, path kept after `/api` (`/api/story/7` → `/story/7`).
//!
//! Service ids win over announced routes, as in the classic Zuul setup.
//! Routing reads only the gossip view: a new service is routable the moment
//! it joins, with no gateway configuration.

use shoal_node::ClusterView;

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'a> {
    /// The target service.
    pub service: &'a str,
    /// Path and query to send upstream.
    pub upstream: String,
}

/// Why a request has no route.
#[derive(Debug, PartialEq, Eq)]
pub enum NoRoute {
    /// Not under `/api/`.
    NotApi,
    /// `/api/{name}/...` where no service or route `name` is known.
    UnknownService(String),
}

/// Resolves `path_and_query` against the view.
pub fn resolve<'v>(
    view: &'v ClusterView,
    path: &str,
    query: Option<&str>,
) -> Result<Route<'v>, NoRoute> {
    let rest = path.strip_prefix("/api/").ok_or(NoRoute::NotApi)?;
    let (name, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if name.is_empty() {
        return Err(NoRoute::NotApi);
    }
    let with_query = |p: &str| match query {
        Some(q) => format!("{p}?{q}"),
        None => p.to_string(),
    };
    if let Some((service, _)) = view.services().find(|(s, _)| *s == name) {
        let tail = if tail.is_empty() { "/" } else { tail };
        return Ok(Route {
            service,
            upstream: with_query(tail),
        });
    }
    let kept = &path[4..];
    match view.service_for_path(kept) {
        Some(service) => Ok(Route {
            service,
            upstream: with_query(kept),
        }),
        None => Err(NoRoute::UnknownService(name.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_node::{Health, Member, MemberId};

    fn view() -> ClusterView {
        let m = |service: &str, routes: &[&str]| Member {
            id: MemberId {
                node: service.into(),
                generation: 1,
            },
            service: service.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            health: Health::Up,
            routes: routes.iter().map(|r| r.to_string()).collect(),
            host: String::new(),
            version: String::new(),
            started_ms: 0,
            gossip_addr: "127.0.0.1:2".parse().unwrap(),
            lease: None,
            policy: Default::default(),
        };
        ClusterView::from_members([
            m("story-service", &["/story"]),
            m("notice-service", &["/notice"]),
        ])
    }

    #[test]
    fn service_id_routes_strip_prefix_and_id() {
        let v = view();
        let r = resolve(&v, "/api/story-service/story/service/host", None).unwrap();
        assert_eq!(
            (r.service, r.upstream.as_str()),
            ("story-service", "/story/service/host")
        );
        let r = resolve(&v, "/api/story-service", Some("a=1")).unwrap();
        assert_eq!(r.upstream, "/?a=1");
    }

    #[test]
    fn announced_path_routes_keep_the_path() {
        let v = view();
        let r = resolve(&v, "/api/story/alice", Some("x=1")).unwrap();
        assert_eq!(
            (r.service, r.upstream.as_str()),
            ("story-service", "/story/alice?x=1")
        );
        let r = resolve(&v, "/api/notice", None).unwrap();
        assert_eq!(
            (r.service, r.upstream.as_str()),
            ("notice-service", "/notice")
        );
    }

    #[test]
    fn unknown_and_non_api_paths_have_no_route() {
        let v = view();
        assert_eq!(
            resolve(&v, "/api/board-service/x", None),
            Err(NoRoute::UnknownService("board-service".into()))
        );
        assert_eq!(resolve(&v, "/story", None), Err(NoRoute::NotApi));
        assert_eq!(resolve(&v, "/api/", None), Err(NoRoute::NotApi));
    }
}
