//! The portable relay's copy (tunnels that cannot splice: TLS on either side, HTTP/2 streams,
//! wrapped sockets): both directions in one future, as tokio's `copy_bidirectional`, except
//! that a direction holds a buffer only while it has bytes to move. A read that would block
//! with nothing left to write gives the buffer back to a shared set of spares, so a quiet
//! tunnel holds no copy buffer at all (tokio's holds two of 16 KiB for the tunnel's life),
//! and a busy one reuses spares instead of allocating.
//!
//! Half-close as tokio's: EOF on one side is passed on as a shutdown of the other's write
//! half while the reverse direction carries on; the copy ends when both directions have.

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::BUF_SIZE;

/// Spare buffers kept for reuse across tunnels (1 MiB at most): enough for the flows that are
/// moving bytes at one moment; more allocate and free.
const SPARE_MAX: usize = 64;

static SPARE: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

fn take() -> Box<[u8]> {
    SPARE
        .lock()
        .ok()
        .and_then(|mut spare| spare.pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

fn give_back(buf: Box<[u8]>) {
    if let Ok(mut spare) = SPARE.lock()
        && spare.len() < SPARE_MAX
    {
        spare.push(buf);
    }
}

/// One direction's state.
#[derive(Default)]
struct Direction {
    /// Held only while `pos < cap` (bytes read, not yet written) or a read is being tried.
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    eof: bool,
    flush: bool,
    done: bool,
}

impl Direction {
    /// Moves bytes from `r` to `w` until EOF (then shuts `w`'s write half down) or pending.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.cap && !self.eof {
                let buf = self.buf.get_or_insert_with(take);
                let mut rb = ReadBuf::new(buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        // Nothing to write and nothing to read: the buffer goes back.
                        if let Some(buf) = self.buf.take() {
                            give_back(buf);
                        }
                        if self.flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.eof = true;
                            if let Some(buf) = self.buf.take() {
                                give_back(buf);
                            }
                        } else {
                            (self.pos, self.cap) = (0, n);
                        }
                    }
                }
            }
            while self.pos < self.cap {
                let Some(buf) = self.buf.as_deref() else {
                    break;
                };
                let n = ready!(w.as_mut().poll_write(cx, &buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the other side accepted no bytes",
                    )));
                }
                self.pos += n;
                self.flush = true;
            }
            if self.eof && self.pos == self.cap {
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Copies between `a` and `b` both ways until both directions have ended, or an error.
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut ab, mut ba) = (Direction::default(), Direction::default());
    let res = std::future::poll_fn(|cx| {
        let forth = ab.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let back = ba.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (forth, back) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await;
    for buf in [ab.buf.take(), ba.buf.take()].into_iter().flatten() {
        give_back(buf);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every byte both ways, half-close passed on, and a quiet direction holds no buffer.
    #[tokio::test]
    async fn carries_both_ways_and_holds_no_buffer_when_quiet() {
        let (mut a_far, mut a) = tokio::io::duplex(4096);
        let (mut b, mut b_far) = tokio::io::duplex(4096);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let relay = tokio::spawn(async move { bidirectional(&mut a, &mut b).await });
        let writer = tokio::spawn(async move {
            a_far.write_all(&sent).await.unwrap();
            a_far.shutdown().await.unwrap();
            let mut back = Vec::new();
            a_far.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        b_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        b_far.write_all(b"done").await.unwrap();
        drop(b_far);
        assert_eq!(writer.await.unwrap(), b"done");
        relay.await.unwrap().unwrap();
    }

    /// A direction that read nothing yet holds no buffer while it waits.
    #[tokio::test]
    async fn a_waiting_direction_gives_its_buffer_back() {
        let (_a_far, mut a) = tokio::io::duplex(64);
        let (_b_far, mut b) = tokio::io::duplex(64);
        let mut d = Direction::default();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(
            d.poll(&mut cx, Pin::new(&mut a), Pin::new(&mut b))
                .is_pending()
        );
        assert!(d.buf.is_none());
    }
}
