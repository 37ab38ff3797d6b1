//! The data path of forwarded HTTP bodies: a body wrapper that bounds how long a peer may
//! stall, how slowly a client may send, and that holds what must live exactly as long as the
//! body (a pool member's connection count).
//!
//! Time is counted only while the body waits for its *sender*: while the receiving side is not
//! polling (backpressure from a slow reader) the clocks stand still, so a slow reader never
//! makes a fast sender look stalled.

use std::any::Any;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::BoxError;

/// How a sender's pace is bounded.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Longest wait for the next bytes.
    pub idle: Duration,
    /// After `grace` of waiting in total, the sender must have averaged at least `min_rate`
    /// bytes per second of waiting (Apache mod_reqtimeout's body rule); `None`: no rate bound.
    pub min_rate: Option<(Duration, u64)>,
}

/// Which way the body flows: it decides who is blamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// From the client to the origin.
    Request,
    /// From the origin (or upstream) to the client.
    Response,
}

/// A body ended by its pace bound.
#[derive(Debug, thiserror::Error)]
pub enum PaceError {
    #[error("the {side} body stalled: no bytes for {}", humantime::format_duration(*.after))]
    Stalled { side: &'static str, after: Duration },
    #[error("the request body was slower than {rate} bytes/s after {}", humantime::format_duration(*.grace))]
    TooSlow { rate: u64, grace: Duration },
}

impl PaceError {
    /// True when the client is to blame (its request body).
    pub fn is_client(&self) -> bool {
        match self {
            Self::Stalled { side, .. } => *side == "request",
            Self::TooSlow { .. } => true,
        }
    }
}

/// A body under a [`Pace`], holding `hold` until it ends or is dropped.
pub struct Paced<B> {
    inner: B,
    pace: Pace,
    side: Side,
    /// Armed on the first wait only: most bodies never wait, and then cost no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    /// When the current wait for the sender began; `None` while not waiting.
    waiting_since: Option<Instant>,
    /// Time spent waiting for the sender before the current wait.
    waited: Duration,
    bytes: u64,
    hold: Option<Box<dyn Any + Send + Sync>>,
}

impl<B> Paced<B> {
    pub fn new(inner: B, pace: Pace, side: Side) -> Self {
        Self {
            inner,
            pace,
            side,
            sleep: None,
            waiting_since: None,
            waited: Duration::ZERO,
            bytes: 0,
            hold: None,
        }
    }

    /// Keeps `value` (when there is one) alive until the body ends (or is dropped).
    pub fn holding<T: Any + Send + Sync>(mut self, value: Option<T>) -> Self {
        self.hold = value.map(|v| Box::new(v) as Box<dyn Any + Send + Sync>);
        self
    }

    /// When the current wait (begun at `since`) breaks a bound.
    fn deadline(&self, since: Instant) -> Instant {
        let mut at = since + self.pace.idle;
        if let Some((grace, rate)) = self.pace.min_rate {
            // Total waiting must stay below bytes/rate once past the grace period.
            let allowed = grace.max(Duration::from_secs_f64(
                self.bytes as f64 / rate.max(1) as f64,
            ));
            let left = allowed.saturating_sub(self.waited);
            at = at.min(since + left);
        }
        at
    }

    /// Begins a wait for the sender: notes when, and sets the timer to the wait's deadline.
    fn start_wait(&mut self) -> Instant {
        let now = Instant::now();
        self.waiting_since = Some(now);
        let at = self.deadline(now);
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        now
    }

    fn breach(&self, since: Instant, now: Instant) -> PaceError {
        let side = match self.side {
            Side::Request => "request",
            Side::Response => "response",
        };
        if now.duration_since(since) >= self.pace.idle {
            return PaceError::Stalled {
                side,
                after: self.pace.idle,
            };
        }
        match self.pace.min_rate {
            Some((grace, rate)) => PaceError::TooSlow { rate, grace },
            None => PaceError::Stalled {
                side,
                after: self.pace.idle,
            },
        }
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                match frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            this.bytes += data.len() as u64;
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                    None => {
                        this.hold = None;
                        Poll::Ready(None)
                    }
                }
            }
            Poll::Pending => {
                let since = match this.waiting_since {
                    Some(since) => since,
                    None => this.start_wait(),
                };
                // The deadline cannot move during a wait (bytes and time waited change only
                // when the sender delivers), so the timer firing is the breach.
                let fired = this
                    .sleep
                    .as_mut()
                    .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                if !fired {
                    return Poll::Pending;
                }
                this.hold = None;
                let breach = this.breach(since, Instant::now());
                // The connections on both sides close with this error: say why.
                tracing::info!(reason = %breach, bytes = this.bytes, "forwarded body cut");
                Poll::Ready(Some(Err(Box::new(breach))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The [`PaceError`] behind `err`, if a pace bound ended it (looked up through the source chain,
/// as hyper wraps body errors).
pub fn pace_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a PaceError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(p) = e.downcast_ref::<PaceError>() {
            return Some(p);
        }
        cur = e.source();
    }
    None
}

/// A body that reports the size of each data frame to `count` as it passes, and is otherwise
/// the body it wraps: size hint and end of stream included (hyper frames the message from
/// them, so a `Content-Length` body stays one).
pub struct Counted<B, F> {
    inner: B,
    count: F,
}

impl<B, F: FnMut(usize)> Counted<B, F> {
    pub fn new(inner: B, count: F) -> Self {
        Self { inner, count }
    }
}

impl<B, F> Body for Counted<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    F: FnMut(usize) + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            (this.count)(data.len());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body under a bandwidth limit: each data frame is paid for as it passes, and the next
/// frame is not asked for until the throttle's debt is waited off (the sender meanwhile
/// meets backpressure, so nothing piles up here). An unlimited throttle costs a branch.
pub struct Throttled<B> {
    inner: B,
    throttle: crate::rate::Throttle,
    pause: Option<Pin<Box<Sleep>>>,
}

impl<B> Throttled<B> {
    pub fn new(inner: B, throttle: crate::rate::Throttle) -> Self {
        Self {
            inner,
            throttle,
            pause: None,
        }
    }
}

impl<B> Body for Throttled<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(pause) = this.pause.as_mut() {
            std::task::ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if this.throttle.is_limited()
            && let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let wait = this.throttle.charge(data.len());
            if !wait.is_zero() {
                this.pause = Some(Box::pin(tokio::time::sleep(wait)));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that ends (with an error, so the client sees a cut, not a complete response) when
/// `revoked` fires: a user removed at a reload loses their streaming responses as they lose
/// their tunnels.
pub struct Revocable<B> {
    inner: B,
    revoked: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
}

impl<B> Revocable<B> {
    /// `revoked`: `None` for a client without a user (nothing to revoke).
    pub fn new(inner: B, revoked: Option<tokio_util::sync::CancellationToken>) -> Self {
        Self {
            inner,
            revoked: revoked.map(|t| Box::pin(t.cancelled_owned())),
        }
    }
}

/// Why a revocable body ended early.
#[derive(Debug, thiserror::Error)]
#[error("the user's access was revoked")]
pub struct Revoked;

impl<B> Body for Revocable<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(revoked) = this.revoked.as_mut()
            && revoked.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(Box::new(Revoked))));
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body whose bytes arrive one at a time, `every` apart.
    struct Dribble(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Dribble {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    /// `n` bytes `every` apart; then the body ends (`end`) or goes silent.
    fn dribble(every: Duration, n: usize, end: bool) -> Dribble {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..n {
                tokio::time::sleep(every).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
            if !end {
                tx.closed().await;
            }
        });
        Dribble(rx)
    }

    /// A sender that stalls longer than the idle bound ends the body with `Stalled`.
    #[tokio::test(start_paused = true)]
    async fn stall_ends_the_body() {
        let pace = Pace {
            idle: Duration::from_secs(30),
            min_rate: None,
        };
        let body = Paced::new(
            dribble(Duration::from_secs(10), 2, false),
            pace,
            Side::Request,
        );
        let started = Instant::now();
        let err = body.collect().await.err().unwrap();
        let p = pace_error(&*err).unwrap();
        assert!(
            matches!(p, PaceError::Stalled { .. }) && p.is_client(),
            "{p}"
        );
        // Two bytes at 10 s and 20 s, then 30 s of nothing.
        assert_eq!(started.elapsed(), Duration::from_secs(50));
    }

    /// A sender under the minimum rate is cut once the grace period has passed.
    #[tokio::test(start_paused = true)]
    async fn slow_sender_is_cut_after_grace() {
        let pace = Pace {
            idle: Duration::from_secs(30),
            min_rate: Some((Duration::from_secs(20), 500)),
        };
        let body = Paced::new(
            dribble(Duration::from_secs(5), 1000, true),
            pace,
            Side::Request,
        );
        let started = Instant::now();
        let err = body.collect().await.err().unwrap();
        assert!(matches!(pace_error(&*err), Some(PaceError::TooSlow { .. })));
        assert_eq!(started.elapsed(), Duration::from_secs(20));
    }

    /// A sender at a good pace is never cut, and what is held is released at the end.
    #[tokio::test(start_paused = true)]
    async fn fast_sender_passes_and_releases_hold() {
        let pace = Pace {
            idle: Duration::from_secs(1),
            min_rate: Some((Duration::from_secs(1), 5)),
        };
        let held = std::sync::Arc::new(());
        let body = Paced::new(
            dribble(Duration::from_millis(100), 50, true),
            pace,
            Side::Request,
        )
        .holding(Some(std::sync::Arc::clone(&held)));
        let mut body = std::pin::pin!(body);
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            got += frame.unwrap().into_data().unwrap().len();
        }
        assert_eq!(got, 50);
        assert_eq!(
            std::sync::Arc::strong_count(&held),
            1,
            "released at the end"
        );
    }
}
