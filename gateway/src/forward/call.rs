//! A client's request as the steps take it, past its route as the retry
//! loop and the upgrade read it, and the access log line filled in on its
//! way.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;

use crate::route::table::ServiceState;

/// A client's request as the steps take it: its parts lent (the URI taken
/// out, see [`crate::forward::proxy::handle`]), its body given.
pub struct ClientRequest<'a> {
    /// Method, headers (the steps may set some), extensions.
    pub parts: &'a mut http::request::Parts,
    /// The body, not read yet.
    pub body: hyper::body::Incoming,
    /// The URI's path.
    pub path: &'a str,
    /// The URI's query.
    pub query: Option<&'a str>,
}

/// A request past its route: what the retry loop or the upgrade reads.
pub struct Call<'a> {
    /// The client's path (for error answers).
    pub path: &'a str,
    /// The path (and query) to send to the instance.
    pub upstream_path: String,
    /// The client.
    pub peer: SocketAddr,
    /// The trace context sent on.
    pub traceparent: &'a HeaderValue,
    /// The access log line, filled in on the way.
    pub log: &'a mut Log,
}

/// What the access log line says of a request, filled in on the way.
pub struct Log {
    /// The service it was routed to.
    pub service: Option<Arc<ServiceState>>,
    /// The instance of its last attempt.
    pub upstream: Option<SocketAddr>,
    /// Attempts made.
    pub attempts: u32,
}
