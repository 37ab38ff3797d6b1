//! Zero-copy relay for TCP-to-TCP tunnels on Linux: `splice(2)` moves bytes socket -> pipe ->
//! socket inside the kernel, so no tunnel byte is copied through user space.
//!
//! Pipes are taken from a shared set of spare pipes only while a direction has data to move and returned as
//! soon as its socket runs dry, so an idle tunnel holds no pipe (no descriptors, no buffer) and
//! a busy one makes no pipe syscalls per burst. A pipe is always drained before the socket is
//! read again, so `EAGAIN` from a read-side splice can only mean "socket not readable": that
//! keeps tokio's readiness tracking (`try_io`) exact.
//!
//! Half-close and byte counting match the portable relay: EOF from one side becomes
//! `shutdown(SHUT_WR)` on the other while the reverse direction carries on.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Activity;
use crate::rate::Throttle;

/// How long a direction whose source has gone (EOF or reset) may wait for its destination to
/// take more bytes before the tunnel is given up: a client that left a target that never reads
/// must not pin two sockets and a pipe for the whole idle timeout (squid frees such tunnels
/// within 5 s too).
pub(super) const LINGER: Duration = Duration::from_secs(5);

/// Pipes kept for reuse across tunnels.
const SPARE_MAX: usize = 256;
/// Pipe capacity asked for; the kernel may cap it (pipe-max-size), we use what we get.
const PIPE_SIZE: i32 = 1 << 20;

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    size: usize,
}

static SPARE: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

impl Pipe {
    fn take() -> io::Result<Pipe> {
        if let Some(p) = SPARE.lock().ok().and_then(|mut spare| spare.pop()) {
            return Ok(p);
        }
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let size = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE))
            .or_else(|_| fcntl(&w, FcntlArg::F_GETPIPE_SZ))
            .map_or(64 * 1024, |s| s as usize);
        Ok(Pipe { r, w, size })
    }

    /// Returns an *empty* pipe to the spares (a pipe with bytes in it is dropped instead).
    fn give_back(self) {
        if let Ok(mut spare) = SPARE.lock()
            && spare.len() < SPARE_MAX
        {
            spare.push(self);
        }
    }
}

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

/// Waits until `dst` can take bytes. While it cannot, checks every [`LINGER`] whether `src`
/// has gone (its peer closed or reset): then nobody is left to wait for, and the tunnel ends.
pub(super) async fn writable_while_src_alive(dst: &TcpStream, src: &TcpStream) -> io::Result<()> {
    loop {
        match tokio::time::timeout(LINGER, dst.writable()).await {
            Ok(res) => return res,
            Err(_) => {
                // A zero timeout still polls once: readiness already known is reported.
                let gone = tokio::time::timeout(Duration::ZERO, src.ready(Interest::READABLE))
                    .await
                    .is_ok_and(|r| r.is_ok_and(|r| r.is_read_closed()));
                if gone {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "one side left and the other stopped reading",
                    ));
                }
            }
        }
    }
}

/// Moves bytes from `src` to `dst` until EOF (then half-closes `dst`) or an error. Under a
/// limiting `throttle`, each move is at most its chunk and is paid for before the next.
pub(super) async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    act: &Activity,
    count: &AtomicU64,
    throttle: &Throttle,
) -> io::Result<()> {
    let mut pipe: Option<Pipe> = None;
    loop {
        src.readable().await?;
        let p = match pipe.take() {
            Some(p) => p,
            None => match Pipe::take() {
                Ok(p) => p,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE): the client was already answered 200,
                    // so carry the tunnel on by copying rather than killing it.
                    tracing::debug!(error = %e, "no pipe for splice; copying this direction");
                    // Boxed: the rare path must not grow every tunnel's task.
                    return Box::pin(copy_plain(src, dst, act, count, throttle)).await;
                }
            },
        };
        let most = if throttle.is_limited() {
            throttle.chunk().min(p.size)
        } else {
            p.size
        };
        let read = src.try_io(Interest::READABLE, || {
            Ok(splice(src.as_fd(), None, p.w.as_fd(), None, most, flags())?)
        });
        let n = match read {
            Ok(0) => {
                p.give_back();
                // EOF: pass the half-close on; the other direction carries on.
                let _ = shutdown(dst.as_raw_fd(), Shutdown::Write);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Ran dry: the pipe is empty, so it goes back; an idle direction holds none.
                p.give_back();
                continue;
            }
            Err(e) => return Err(e),
        };
        count.fetch_add(n as u64, Ordering::Relaxed);
        act.touch();
        let mut left = n;
        while left > 0 {
            // Write first, wait only when the socket is full: the wait (with its linger timer)
            // is boxed, so an idle tunnel's task does not carry its space.
            match dst.try_io(Interest::WRITABLE, || {
                Ok(splice(p.r.as_fd(), None, dst.as_fd(), None, left, flags())?)
            }) {
                Ok(m) => {
                    left -= m;
                    act.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    Box::pin(writable_while_src_alive(dst, src)).await?;
                }
                Err(e) => return Err(e),
            }
        }
        pipe = Some(p);
        if throttle.is_limited() {
            // Boxed: unlimited tunnels' tasks do not carry the pause's space.
            Box::pin(throttle.pay(n)).await;
        }
    }
}

/// The user-space fallback for one direction when no pipe can be had: same half-close, counts
/// and linger as the splice path, through one buffer.
async fn copy_plain(
    src: &TcpStream,
    dst: &TcpStream,
    act: &Activity,
    count: &AtomicU64,
    throttle: &Throttle,
) -> io::Result<()> {
    let mut buf = vec![0u8; super::BUF_SIZE];
    loop {
        src.readable().await?;
        let n = match src.try_read(&mut buf) {
            Ok(0) => {
                let _ = shutdown(dst.as_raw_fd(), Shutdown::Write);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        count.fetch_add(n as u64, Ordering::Relaxed);
        act.touch();
        let mut off = 0;
        while off < n {
            match dst.try_write(&buf[off..n]) {
                Ok(m) => {
                    off += m;
                    act.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    writable_while_src_alive(dst, src).await?;
                }
                Err(e) => return Err(e),
            }
        }
        throttle.pay(n).await;
    }
}

/// Makes the coming close a reset (`SO_LINGER` 0): no FIN queued behind unsent bytes.
pub(super) fn abort(s: &TcpStream) {
    let reset = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Linger, &reset);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (far, _) = l.accept().await.unwrap();
        (near, far)
    }

    /// The fallback used when no pipe can be had (EMFILE) carries every byte, counts them and
    /// passes the half-close on, like the splice path.
    #[tokio::test]
    async fn copying_fallback_carries_bytes_and_half_close() {
        let (mut client_far, client) = pair().await;
        let (target, mut target_far) = pair().await;
        let act = Activity::new();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client_far.write_all(&sent).await.unwrap();
            client_far.shutdown().await.unwrap();
            client_far
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            target_far.read_to_end(&mut got).await.unwrap();
            got
        });
        copy_plain(&client, &target, &act, &act.up, &Throttle::default())
            .await
            .unwrap();
        assert_eq!(reader.await.unwrap(), data);
        assert_eq!(act.up.load(Ordering::Relaxed), data.len() as u64);
        writer.await.unwrap();
    }
}
