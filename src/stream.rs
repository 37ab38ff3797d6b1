//! The byte stream a dial hands back, and `Prefixed`, which replays bytes read past a handshake.
//!
//! A hop's handshake reads in chunks, so a read can return the end of the hop's answer *and* the
//! first bytes of the tunnel (a server that speaks first, or a chained hop's reply). Those bytes
//! belong to whoever reads the stream next; `Prefixed` hands them out before reading the socket.

use std::any::Any;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Any bidirectional byte stream we can relay or speak HTTP over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// For recovering the concrete stream (a plain `TcpStream` can be relayed zero-copy).
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// An open connection to a target (or to the last upstream hop, for absolute-form forwarding).
pub type BoxIo = Box<dyn Io>;

/// A stream that yields `prefix` before reading from `inner`. Writes go straight to `inner`.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        // An empty `Bytes` can still pin the whole buffer it was cut from.
        let prefix = if prefix.is_empty() {
            Bytes::new()
        } else {
            prefix
        };
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Let go of the buffer it was cut from.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The plain TCP stream inside `io`, when that is all it is (no TLS, no leftover to replay).
pub fn into_tcp(io: BoxIo) -> Result<TcpStream, BoxIo> {
    // `(*io)`: ask the boxed stream, not the box (which is itself an `Io`).
    if !(*io).as_any().is::<TcpStream>() {
        return Err(io);
    }
    match io.into_any().downcast::<TcpStream>() {
        Ok(tcp) => Ok(*tcp),
        // Cannot happen (checked just above); kept total rather than panicking on the data
        // path: a stream whose far end is gone, so the tunnel just closes.
        Err(_) => Err(Box::new(tokio::io::duplex(1).0)),
    }
}

/// The local address of `io` when it is a plain TCP stream (what a SOCKS reply calls the
/// bound address).
pub fn local_addr(io: &BoxIo) -> Option<std::net::SocketAddr> {
    (**io)
        .as_any()
        .downcast_ref::<TcpStream>()
        .and_then(|t| t.local_addr().ok())
}

/// `io`, replaying `leftover` first when there is any (never boxed twice).
pub fn with_leftover(leftover: Bytes, io: BoxIo) -> BoxIo {
    if leftover.is_empty() {
        io
    } else {
        Box::new(Prefixed::new(leftover, io))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Leftover bytes come out first, then the socket's, and writes are untouched.
    #[tokio::test]
    async fn replays_prefix_then_inner() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut p = with_leftover(Bytes::from_static(b"SSH-2.0-"), Box::new(a));
        b.write_all(b"banner").await.unwrap();
        drop(b);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "SSH-2.0-banner");
    }
}
