//! Body types of the proxy, as enums rather than boxes: no allocation per
//! request, and bodies stream through frame by frame.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::balance::InFlight;

/// What the gateway sends upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// No body.
    Empty,
    /// A small body kept in memory so the request can be retried.
    Buffered(Full<Bytes>),
    /// A large body streamed from the client; the request cannot be retried.
    Streaming(Incoming),
}

/// What the gateway answers.
#[derive(Debug)]
pub enum ProxyBody {
    /// A body made by the gateway (errors, admin).
    Full(Full<Bytes>),
    /// The upstream's body, streamed; the instance counts the request in
    /// flight until the last frame is sent (or the client goes away).
    Upstream(Incoming, Option<InFlight>),
}

impl ProxyBody {
    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Full::new(bytes.into()))
    }
}

fn never(e: Infallible) -> hyper::Error {
    match e {}
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Buffered(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(never))),
            Self::Streaming(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Buffered(b) => b.is_end_stream(),
            Self::Streaming(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Buffered(b) => b.size_hint(),
            Self::Streaming(b) => b.size_hint(),
        }
    }
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
            Self::Upstream(b, guard) => {
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
            Self::Upstream(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => b.size_hint(),
            Self::Upstream(b, _) => b.size_hint(),
        }
    }
}
