//! Zero-copy relay for TCP-to-TCP tunnels on Linux: `splice(2)` moves bytes socket -> pipe ->
//! socket inside the kernel, so no tunnel byte is copied through user space.
//!
//! Pipes are taken from a shared pool only while a direction has data to move and returned as
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

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Activity;

/// Pipes kept for reuse across tunnels.
const POOL_MAX: usize = 256;
/// Pipe capacity asked for; the kernel may cap it (pipe-max-size), we use what we get.
const PIPE_SIZE: i32 = 1 << 20;

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    size: usize,
}

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

impl Pipe {
    fn take() -> io::Result<Pipe> {
        if let Some(p) = POOL.lock().ok().and_then(|mut pool| pool.pop()) {
            return Ok(p);
        }
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let size = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE))
            .or_else(|_| fcntl(&w, FcntlArg::F_GETPIPE_SZ))
            .map_or(64 * 1024, |s| s as usize);
        Ok(Pipe { r, w, size })
    }

    /// Returns an *empty* pipe to the pool (a pipe with bytes in it is dropped instead).
    fn give_back(self) {
        if let Ok(mut pool) = POOL.lock()
            && pool.len() < POOL_MAX
        {
            pool.push(self);
        }
    }
}

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

/// Moves bytes from `src` to `dst` until EOF (then half-closes `dst`) or an error.
pub(super) async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    act: &Activity,
    count: &AtomicU64,
) -> io::Result<()> {
    let mut pipe: Option<Pipe> = None;
    loop {
        src.readable().await?;
        let p = match pipe.take() {
            Some(p) => p,
            None => Pipe::take()?,
        };
        let read = src.try_io(Interest::READABLE, || {
            Ok(splice(
                src.as_fd(),
                None,
                p.w.as_fd(),
                None,
                p.size,
                flags(),
            )?)
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
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                Ok(splice(p.r.as_fd(), None, dst.as_fd(), None, left, flags())?)
            }) {
                Ok(m) => {
                    left -= m;
                    act.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        pipe = Some(p);
    }
}
