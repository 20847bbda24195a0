//! The upstream connector: hyper-util's `HttpConnector` (connect timeout,
//! `TCP_NODELAY`, keep-alive), minus the per-connection `HttpInfo` that the
//! pooled client would copy into the extensions of every response — two
//! allocations per request that nothing here reads.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects like `HttpConnector`, yields a [`Plain`] stream.
#[derive(Clone)]
pub struct Connector(pub HttpConnector);

impl tower_service::Service<Uri> for Connector {
    type Response = Plain;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Plain, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.0, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Connects are rare (the pool keeps them): one box each is nothing.
        let connecting = tower_service::Service::call(&mut self.0, uri);
        Box::pin(async move { Ok(Plain(connecting.await?)) })
    }
}

/// A TCP stream to an upstream that carries no connection info.
pub struct Plain(TokioIo<TcpStream>);

impl Connection for Plain {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for Plain {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for Plain {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
