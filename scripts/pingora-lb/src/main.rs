//! Pingora's load-balancer example, as `scripts/bench gateway` runs it:
//! `PINGORA_LISTEN=addr PINGORA_UPSTREAMS="a:p b:p" pingora-lb -c conf.yaml`.
//! Requests under `/api/story-service/` go to the upstreams in turn with
//! that prefix removed, as nginx's and haproxy's configurations in the
//! bench do.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};

struct Lb(Arc<LoadBalancer<RoundRobin>>);

const PREFIX: &str = "/api/story-service";

#[async_trait]
impl ProxyHttp for Lb {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let upstream = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no upstream"))?;
        Ok(Box::new(HttpPeer::new(upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        let uri = upstream_request.uri.clone();
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
        if let Some(rest) = path_and_query.strip_prefix(PREFIX) {
            let rest = if rest.is_empty() { "/" } else { rest };
            let new = rest
                .parse()
                .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "bad path"))?;
            upstream_request.set_uri(new);
        }
        Ok(())
    }
}

fn main() {
    let listen = std::env::var("PINGORA_LISTEN").expect("PINGORA_LISTEN=host:port");
    let upstreams = std::env::var("PINGORA_UPSTREAMS").expect("PINGORA_UPSTREAMS=\"a:p b:p\"");
    let mut server = Server::new(Some(Opt::parse_args())).expect("pingora server");
    server.bootstrap();
    let lb = LoadBalancer::try_from_iter(upstreams.split_whitespace()).expect("upstreams");
    let mut proxy = http_proxy_service(&server.configuration, Lb(Arc::new(lb)));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
