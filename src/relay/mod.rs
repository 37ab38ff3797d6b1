//! The tunnel data path: bytes both ways between the client and the target until both are done.
//!
//! Two paths: `splice(2)` between plain TCP sockets on Linux ([`splice`]), and a portable copy
//! ([`copy`]) for everything else, both with bounded buffers (backpressure: a slow reader
//! stalls the writer, nothing piles up), half-close (EOF on one side becomes a
//! `shutdown(SHUT_WR)` on the other while the reverse direction carries on), and nothing held
//! while a tunnel is quiet (pipes and copy buffers go back to shared spares).
//!
//! Around both: byte counts that survive an early end, an idle timeout, cancellation by
//! shutdown, and bandwidth limits ([`crate::rate::Throttles`]: each direction post-pays what it
//! moved and pauses before its next move while its buckets are in debt; an unlimited tunnel
//! never looks at a bucket). Activity is a timestamp that every read and write refreshes; a
//! watchdog sleeps until `last activity + idle` and ends the relay when nothing moved.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::rate::{Throttle, Throttles};
use crate::stream::{BoxIo, Prefixed};

pub mod body;
mod copy;
#[cfg(target_os = "linux")]
mod splice;
use tokio_util::sync::CancellationToken;

/// Per-direction copy buffer size of the portable relay, held only while bytes move.
pub const BUF_SIZE: usize = 16 * 1024;

/// Why a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both sides finished (EOF both ways).
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A read or write failed (reset, broken pipe, ...).
    Error(io::Error),
    /// The proxy is shutting down.
    Shutdown,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::Idle => f.write_str("idle timeout"),
            End::Error(e) => write!(f, "error: {e}"),
            End::Shutdown => f.write_str("shutdown"),
        }
    }
}

/// What a relay carried.
#[derive(Debug)]
pub struct Relayed {
    /// Bytes from the client to the target.
    pub up: u64,
    /// Bytes from the target to the client.
    pub down: u64,
    pub end: End,
    /// Relayed with splice(2), no byte through user space.
    pub zero_copy: bool,
}

pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// The client's end of a tunnel, as the listener hands it over.
pub enum ClientEnd {
    /// A plain TCP socket: with a plain TCP target, relayed zero-copy on Linux.
    Tcp(TcpStream),
    /// Any other stream (TLS, a multiplexed stream, a wrapped socket).
    Other(BoxIo),
}

/// Relays a tunnel between `client` and `target` until both are done: zero-copy `splice(2)`
/// when both ends are plain TCP on Linux, else the portable copy. `early` (client bytes the
/// listener had already read, such as a pipelined TLS ClientHello) goes to the target first.
pub async fn tunnel(
    client: ClientEnd,
    early: Bytes,
    target: BoxIo,
    idle: Duration,
    cancel: &CancellationToken,
    limits: &Throttles,
) -> Relayed {
    match client {
        #[cfg(target_os = "linux")]
        ClientEnd::Tcp(client) => match crate::stream::into_tcp(target) {
            Ok(target) => relay_tcp(client, early, target, idle, cancel, limits).await,
            Err(target) => {
                relay_limited(Prefixed::new(early, client), target, idle, cancel, limits).await
            }
        },
        #[cfg(not(target_os = "linux"))]
        ClientEnd::Tcp(client) => {
            relay_limited(Prefixed::new(early, client), target, idle, cancel, limits).await
        }
        ClientEnd::Other(client) => {
            relay_limited(Prefixed::new(early, client), target, idle, cancel, limits).await
        }
    }
}

/// Zero-copy relay between two TCP streams; `early` (client bytes already read) goes first.
#[cfg(target_os = "linux")]
async fn relay_tcp(
    client: TcpStream,
    early: Bytes,
    target: TcpStream,
    idle: Duration,
    cancel: &CancellationToken,
    limits: &Throttles,
) -> Relayed {
    let act = Activity::new();
    // The early bytes go first, under the same idle timeout and shutdown as the rest: a target
    // that never reads must not pin this task.
    let run = async {
        let early_len = early.len();
        write_early(&client, &target, early, &act).await?;
        // Charged, not waited for: the debt is paid off before the first splice goes on.
        limits.up.charge(early_len);
        let up = splice::one_way(&client, &target, &act, &act.up, &limits.up);
        let down = splice::one_way(&target, &client, &act, &act.down, &limits.down);
        tokio::try_join!(up, down).map(drop)
    };
    let relayed = supervise(&act, run, idle, cancel, true).await;
    if matches!(relayed.end, End::Error(_)) {
        // Given up (a peer reset or left a side that stopped reading): reset both sides rather
        // than close (idle and shutdown ends still close cleanly). A close
        // would queue our FIN behind bytes a stalled peer never reads, keeping the kernel's
        // socket and its buffers alive long after we let go.
        splice::abort(&client);
        splice::abort(&target);
    }
    relayed
}

/// Writes the client bytes hyper had already read, then drops them: even when empty, the
/// `Bytes` can pin hyper's whole read buffer for the tunnel's life.
#[cfg(target_os = "linux")]
async fn write_early(
    client: &TcpStream,
    target: &TcpStream,
    early: Bytes,
    act: &Activity,
) -> io::Result<()> {
    let mut rest = &early[..];
    while !rest.is_empty() {
        Box::pin(splice::writable_while_src_alive(target, client)).await?;
        match target.try_write(rest) {
            Ok(n) => {
                rest = &rest[n..];
                act.up.fetch_add(n as u64, Ordering::Relaxed);
                act.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs a relay's copying until it finishes, the tunnel idles out, or shutdown; then reports.
async fn supervise(
    act: &Activity,
    run: impl Future<Output = io::Result<()>>,
    idle: Duration,
    cancel: &CancellationToken,
    zero_copy: bool,
) -> Relayed {
    let end = tokio::select! {
        res = run => match res {
            Ok(()) => End::Closed,
            Err(e) => End::Error(e),
        },
        () = idle_watch(act, idle) => End::Idle,
        () = cancel.cancelled() => End::Shutdown,
    };
    Relayed {
        up: act.up.load(Ordering::Relaxed),
        down: act.down.load(Ordering::Relaxed),
        end,
        zero_copy,
    }
}

/// Relays between `client` and `target` until both directions end, `idle` passes with no
/// traffic, an I/O error occurs, or `cancel` fires. Both streams are dropped (closed) on return.
pub async fn relay<C, T>(
    client: C,
    target: T,
    idle: Duration,
    cancel: &CancellationToken,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    relay_limited(client, target, idle, cancel, &Throttles::default()).await
}

/// [`relay`] under bandwidth limits.
async fn relay_limited<C, T>(
    mut client: C,
    mut target: T,
    idle: Duration,
    cancel: &CancellationToken,
    limits: &Throttles,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let act = Activity::new();
    let mut c = Watched {
        io: &mut client,
        act: &act,
        reads: &act.up,
        throttle: &limits.up,
        pause: None,
    };
    let mut t = Watched {
        io: &mut target,
        act: &act,
        reads: &act.down,
        throttle: &limits.down,
        pause: None,
    };
    let run = copy::bidirectional(&mut c, &mut t);
    supervise(&act, run, idle, cancel, false).await
}

async fn idle_watch(act: &Activity, idle: Duration) {
    loop {
        let deadline =
            act.start + Duration::from_millis(act.last_ms.load(Ordering::Relaxed)) + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// A stream that refreshes the activity clock on every transfer, counts the bytes read, and
/// pays for them under its throttle: after a read that put the buckets in debt, the next
/// read waits the debt off (each read is at most the relay's buffer, [`BUF_SIZE`]).
struct Watched<'a, S> {
    io: &'a mut S,
    act: &'a Activity,
    reads: &'a AtomicU64,
    throttle: &'a Throttle,
    /// Armed only when a limited read left debt.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(pause) = self.pause.as_mut() {
            std::task::ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut *self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.reads.fetch_add(n as u64, Ordering::Relaxed);
            self.act.touch();
            if self.throttle.is_limited() {
                let wait = self.throttle.charge(n);
                if !wait.is_zero() {
                    self.pause = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut *self.io).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.act.touch();
        }
        res
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// EOF from the client reaches the target, which can still answer; then both close.
    #[tokio::test]
    async fn passes_half_close_and_counts() {
        let (client, mut client_far) = tokio::io::duplex(64);
        let (target, mut target_far) = tokio::io::duplex(64);
        let task = tokio::spawn(async move {
            relay(
                client,
                target,
                Duration::from_secs(60),
                &CancellationToken::new(),
            )
            .await
        });
        client_far.write_all(b"ping").await.unwrap();
        client_far.shutdown().await.unwrap();
        let mut got = Vec::new();
        target_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        target_far.write_all(b"pong!").await.unwrap();
        drop(target_far);
        let mut back = Vec::new();
        client_far.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong!");
        let r = task.await.unwrap();
        assert!(matches!(r.end, End::Closed), "{:?}", r.end);
        assert_eq!((r.up, r.down), (4, 5));
    }

    /// A tunnel with no traffic ends after the idle timeout, and traffic postpones it.
    #[tokio::test(start_paused = true)]
    async fn idle_timeout_ends_quiet_tunnels() {
        let (client, mut client_far) = tokio::io::duplex(64);
        let (target, _target_far) = tokio::io::duplex(64);
        let start = Instant::now();
        let task = tokio::spawn(async move {
            relay(
                client,
                target,
                Duration::from_secs(600),
                &CancellationToken::new(),
            )
            .await
        });
        tokio::time::sleep(Duration::from_secs(300)).await;
        client_far.write_all(b"x").await.unwrap();
        let r = task.await.unwrap();
        assert!(matches!(r.end, End::Idle));
        assert!(
            start.elapsed() >= Duration::from_secs(900),
            "{:?}",
            start.elapsed()
        );
    }
}
