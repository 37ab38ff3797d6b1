//! The connector that hyper-util's pooling client uses for plain HTTP forwarding.
//!
//! It turns the request URI's authority into a [`Target`] and asks the [`Dialer`] for a forward
//! connection along the route; `Connected::proxy(true)` makes hyper-util keep absolute-form when
//! that connection ends at an HTTP upstream. One client (and so one pool) exists per route.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{BoxIo, ConnectError, Dialer, Route};
use crate::target::{Target, TargetError};

/// Dials forward connections for one route.
#[derive(Clone)]
pub struct ForwardConnector {
    dialer: Dialer,
    route: Arc<Route>,
}

impl ForwardConnector {
    pub fn new(dialer: Dialer, route: Arc<Route>) -> Self {
        Self { dialer, route }
    }
}

/// A pooled forward connection.
pub struct ForwardConn {
    io: BoxIo,
    proxied: bool,
}

/// Why a forward connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ForwardConnectError {
    // Not `transparent`: the inner error must stay in the `source()` chain, where the
    // status mapping looks for it.
    #[error("invalid forward target")]
    Target(#[from] TargetError),
    #[error("cannot open a forward connection")]
    Connect(#[from] ConnectError),
}

impl tower_service::Service<Uri> for ForwardConnector {
    type Response = TokioIo<ForwardConn>;
    type Error = ForwardConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| TargetError::NotAuthorityForm(uri.to_string()))?;
            let target = Target::from_authority(authority, Some(80))?;
            let (io, proxied) = this.dialer.forward(&this.route, &target).await?;
            Ok(TokioIo::new(ForwardConn { io, proxied }))
        })
    }
}

impl Connection for ForwardConn {
    fn connected(&self) -> Connected {
        Connected::new().proxy(self.proxied)
    }
}

impl AsyncRead for ForwardConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ForwardConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
