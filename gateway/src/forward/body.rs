//! The one body type of the proxy, both ways, as an enum rather than a box:
//! no allocation per request, and bodies stream through frame by frame.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::route::balance::InFlight;

/// A body the gateway sends, upstream or to the client.
#[derive(Debug)]
pub enum ProxyBody {
    /// Bytes at hand: a body made by the gateway (errors, admin), or a
    /// small request body kept so the request can be retried.
    Full(Full<Bytes>),
    /// A body streamed from the other side. Answers carry the instance's
    /// in-flight guard, held until the last frame is sent (or the client
    /// goes away); a streamed request body cannot be retried.
    Stream(Incoming, Option<InFlight>),
}

impl ProxyBody {
    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Full::new(bytes.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }
}

fn never(e: Infallible) -> hyper::Error {
    match e {}
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Full(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(never))),
            Self::Stream(b, guard) => {
                let polled = Pin::new(b).poll_frame(cx);
                if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    guard.take();
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_end_stream(),
            Self::Stream(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => b.size_hint(),
            Self::Stream(b, _) => b.size_hint(),
        }
    }
}
