//! Keeping request bodies for retries. A request with no body, or a small
//! body of known length (`SHOAL_RETRY_BODY_LIMIT`), is read whole so that
//! it can be sent again to another instance; a large or chunked body is
//! streamed through once and its request is never retried after the
//! connection opened.

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::forward::body::ProxyBody;

/// What can be done with the request body.
enum Keep {
    /// No body: retries are free.
    Empty,
    /// A body of known, small length: read it whole so it can be resent.
    Small(usize),
    /// A large or unknown-length body: stream it, once.
    Stream,
}

fn keepable_body(headers: &HeaderMap, limit: usize) -> Keep {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    match (length, chunked) {
        (Some(0), false) | (None, false) => Keep::Empty,
        (Some(n), false) if n <= limit => Keep::Small(n),
        _ => Keep::Stream,
    }
}

/// The body of the next attempt: a copy of the kept bytes, or the stream the
/// first time only.
fn next_body(kept: &Option<Bytes>, stream: &mut Option<Incoming>) -> Option<ProxyBody> {
    match kept {
        Some(bytes) => Some(ProxyBody::full(bytes.clone())),
        None => stream.take().map(|body| ProxyBody::Stream(body, None)),
    }
}

/// The body of a request as the retry loop holds it.
pub struct Replay {
    /// The whole body, when it was kept.
    kept: Option<Bytes>,
    /// The stream, until its one attempt takes it.
    stream: Option<Incoming>,
}

impl Replay {
    /// Reads `body` whole when `headers` say it is small enough to keep.
    pub async fn new(headers: &HeaderMap, body: Incoming, limit: usize) -> Result<Self, String> {
        Ok(match keepable_body(headers, limit) {
            Keep::Empty => Self {
                kept: Some(Bytes::new()),
                stream: None,
            },
            Keep::Small(limit) => match Limited::new(body, limit).collect().await {
                Ok(collected) => Self {
                    kept: Some(collected.to_bytes()),
                    stream: None,
                },
                Err(err) => return Err(format!("could not read the request body: {err}")),
            },
            Keep::Stream => Self {
                kept: None,
                stream: Some(body),
            },
        })
    }

    /// No body (a request the gateway makes itself).
    pub fn empty() -> Self {
        Self {
            kept: Some(Bytes::new()),
            stream: None,
        }
    }

    /// The body of the next attempt; `None` once a streamed body was sent.
    pub fn next(&mut self) -> Option<ProxyBody> {
        next_body(&self.kept, &mut self.stream)
    }

    /// Whether the body could be sent again.
    pub fn is_kept(&self) -> bool {
        self.kept.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn bodies_are_kept_only_when_small_and_sized() {
        let mut h = HeaderMap::new();
        assert!(matches!(keepable_body(&h, 10), Keep::Empty));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(matches!(keepable_body(&h, 10), Keep::Small(5)));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("50"));
        assert!(matches!(keepable_body(&h, 10), Keep::Stream));
        h.remove(header::CONTENT_LENGTH);
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(matches!(keepable_body(&h, 10), Keep::Stream));
    }
}
