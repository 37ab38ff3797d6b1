//! The client's socket as hyper sees it, so that a header-read timeout can still be answered.
//!
//! hyper closes a connection whose request head does not arrive in time without writing a
//! response. We want the client told why (`408` with `Proxy-Status`), and hyper owns the socket
//! until it drops it. So the socket sits in this wrapper, which shares a small state with the
//! connection task: when that task sees hyper's timeout on a connection that has not yet had a
//! request, it marks the state, and the wrapper writes the 408 (best effort, non-blocking) as
//! hyper drops it. After an upgrade the plain `TcpStream` comes back out for the relay.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::server::Admitted;

/// Shared between the wrapper, the connection task and the service.
#[derive(Debug)]
pub struct ConnState {
    /// A request head has been received on this connection.
    pub served: AtomicBool,
    /// Answer 408 when the socket is dropped.
    pub timed_out: AtomicBool,
    /// A tunnel has taken the connection over: its bytes are the client's and the target's,
    /// never rewritten.
    pub tunneled: AtomicBool,
    /// The connection's place under the connection limits. A tunnel takes it over when the
    /// connection upgrades, so tunnels count toward `max_connections` for their whole life.
    pub(crate) admission: Mutex<Option<Admitted>>,
    /// Requests (with their response bodies) and tunnels of this connection in progress.
    streams: AtomicUsize,
    /// When the last of them ended, in milliseconds after `born` (atomics only: every
    /// request passes here).
    idle_since_ms: AtomicU64,
    born: std::time::Instant,
}

impl Default for ConnState {
    fn default() -> Self {
        Self {
            served: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            tunneled: AtomicBool::new(false),
            admission: Mutex::new(None),
            streams: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            born: std::time::Instant::now(),
        }
    }
}

/// One request or tunnel in progress on a connection: the connection is not idle while any
/// is held.
pub struct StreamGuard(Arc<ConnState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0
                .idle_since_ms
                .store(self.0.since_born(), Ordering::Release);
        }
    }
}

impl ConnState {
    pub(crate) fn new(admission: Admitted) -> Self {
        Self {
            admission: Mutex::new(Some(admission)),
            ..Self::default()
        }
    }

    /// A request or tunnel starts: held until it is done.
    pub fn enter(self: &Arc<Self>) -> StreamGuard {
        self.streams.fetch_add(1, Ordering::AcqRel);
        StreamGuard(Arc::clone(self))
    }

    /// How long nothing has been in progress (zero while something is).
    pub fn idle_for(&self) -> std::time::Duration {
        if self.streams.load(Ordering::Acquire) > 0 {
            return std::time::Duration::ZERO;
        }
        let since = self.idle_since_ms.load(Ordering::Acquire);
        std::time::Duration::from_millis(self.since_born().saturating_sub(since))
    }

    fn since_born(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// What a tunnel keeps for its whole life: the connection's place under the limits (the
    /// first tunnel of the connection takes it) and its own place as a stream in progress.
    pub(crate) fn tunnel_hold(self: &Arc<Self>) -> (Option<Admitted>, StreamGuard) {
        (self.take_admission(), self.enter())
    }

    /// Takes the admission over (for a tunnel outliving the HTTP connection); from then on the
    /// connection carries tunnel bytes.
    pub(crate) fn take_admission(&self) -> Option<Admitted> {
        self.tunneled.store(true, Ordering::Relaxed);
        self.admission.lock().ok().and_then(|mut a| a.take())
    }
}

/// A client stream that can (when it is plain TCP) answer a header-read timeout on drop, and
/// that puts our answer (with `Proxy-Status`) in place of hyper's own bare answers to
/// malformed heads. `S` is the plain socket, or TLS over it for an `https://` listener.
pub struct ClientIo<S: Socket = TcpStream> {
    tcp: Option<S>,
    state: Arc<ConnState>,
    timeout_response: Arc<[u8]>,
    pseudonym: Arc<str>,
    /// Our replacement for a hyper answer, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

/// What a client stream can do beyond reading and writing.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// One non-blocking write of `buf` if that can be done right now (plain TCP), else nothing
    /// (TLS: a record cannot be written from a destructor).
    fn write_now(&self, buf: &[u8]);
}

impl Socket for TcpStream {
    fn write_now(&self, buf: &[u8]) {
        let _ = self.try_write(buf);
    }
}

impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    fn write_now(&self, _: &[u8]) {}
}

impl<S: Socket> ClientIo<S> {
    pub fn new(
        tcp: S,
        state: Arc<ConnState>,
        timeout_response: Arc<[u8]>,
        pseudonym: Arc<str>,
    ) -> Self {
        Self {
            tcp: Some(tcp),
            state,
            timeout_response,
            pseudonym,
            pending: None,
        }
    }

    /// Writes what is left of a replacement answer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((buf, at)) = &mut self.pending {
            let Some(tcp) = self.tcp.as_mut() else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            match Pin::new(tcp).poll_write(cx, &buf[*at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *at += n;
                    if *at >= buf.len() {
                        self.pending = None;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `out` as written, sending our answer instead, when it is one of hyper's own.
    fn replaced(&mut self, cx: &mut Context<'_>, out: &[u8]) -> Option<Poll<io::Result<usize>>> {
        if self.state.tunneled.load(Ordering::Relaxed) {
            return None;
        }
        let ours = super::respond::replace_hyper_error(&self.pseudonym, out)?;
        self.pending = Some((ours, 0));
        Some(match self.poll_drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(out.len())),
        })
    }

    /// The socket, for the relay after an upgrade.
    pub fn into_tcp(mut self) -> Option<S> {
        self.tcp.take()
    }

    fn tcp(&mut self) -> io::Result<&mut S> {
        self.tcp
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<S: Socket> Drop for ClientIo<S> {
    fn drop(&mut self) {
        if self.state.timed_out.load(Ordering::Relaxed)
            && let Some(tcp) = &self.tcp
        {
            // Best effort: one non-blocking write into an empty send buffer.
            tcp.write_now(&self.timeout_response);
        }
    }
}

impl<S: Socket> AsyncRead for ClientIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.tcp() {
            Ok(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: Socket> AsyncWrite for ClientIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.poll_drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        if let Some(done) = self.replaced(cx, buf) {
            return done;
        }
        match self.tcp() {
            Ok(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.poll_drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(done) = self.replaced(cx, first)
        {
            return done;
        }
        match self.tcp() {
            Ok(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.poll_drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        match self.tcp() {
            Ok(tcp) => Pin::new(tcp).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.poll_drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        match self.tcp() {
            Ok(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
