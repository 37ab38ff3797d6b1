//! Token buckets: bytes per second for bandwidth limits, new connections per second for
//! admission. Hand-written because the well-known crates (`governor`, `leaky-bucket`) answer
//! "may I now?" for small cells, while a relay needs "I moved n bytes (a splice of unknown
//! size), how long until the next move?" with debt: flows post-pay what they moved, and each
//! waits for its own share of the debt, so the flows sharing a bucket interleave fairly.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket of `rate` units per second holding at most `burst`. Its tokens may go
/// negative (debt), which later takers wait off.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// `rate` units per second, at most `burst` at once; starts full.
    pub fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate.max(1e-3),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Units per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    fn refill(&self, state: &mut (f64, Instant)) {
        let now = Instant::now();
        let gained = now.duration_since(state.1).as_secs_f64() * self.rate;
        state.0 = (state.0 + gained).min(self.burst);
        state.1 = now;
    }

    /// Takes `n` units whether or not they are there; returns how long to wait until the
    /// bucket is out of debt again (zero when it is not in debt).
    pub fn charge(&self, n: u64) -> Duration {
        let Ok(mut state) = self.state.lock() else {
            return Duration::ZERO;
        };
        self.refill(&mut state);
        state.0 -= n as f64;
        if state.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.0 / self.rate)
        }
    }

    /// Takes one unit if there is one; else how long until there is.
    pub fn try_take(&self) -> Result<(), Duration> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(());
        };
        self.refill(&mut state);
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - state.0) / self.rate))
        }
    }

    /// Full again (no debt, nothing taken since): the bucket can be forgotten.
    pub fn is_full(&self) -> bool {
        self.state.lock().is_ok_and(|s| {
            s.0 + Instant::now().duration_since(s.1).as_secs_f64() * self.rate >= self.burst
        })
    }
}

/// The buckets one direction of one flow obeys (its user's, its client address's). Empty:
/// unlimited, and then it costs nothing.
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    buckets: Vec<Arc<Bucket>>,
}

impl Throttle {
    pub fn new(buckets: Vec<Arc<Bucket>>) -> Self {
        Self { buckets }
    }

    pub fn is_limited(&self) -> bool {
        !self.buckets.is_empty()
    }

    /// The most one move should carry: 50 ms at the tightest rate, between 16 KiB and 1 MiB,
    /// so that flows sharing a bucket take turns in small steps.
    pub fn chunk(&self) -> usize {
        let tightest = self
            .buckets
            .iter()
            .map(|b| b.rate())
            .fold(f64::INFINITY, f64::min);
        (tightest / 20.0).clamp(16.0 * 1024.0, 1024.0 * 1024.0) as usize
    }

    /// Accounts for `n` units moved; returns how long the flow must pause before its next
    /// move (the longest any of its buckets asks for).
    pub fn charge(&self, n: usize) -> Duration {
        self.buckets
            .iter()
            .map(|b| b.charge(n as u64))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// [`Throttle::charge`], then the pause.
    pub async fn pay(&self, n: usize) {
        let wait = self.charge(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The throttles of both directions of a flow.
#[derive(Debug, Clone, Default)]
pub struct Throttles {
    /// Client to target.
    pub up: Throttle,
    /// Target to client.
    pub down: Throttle,
}

impl Throttles {
    pub fn is_limited(&self) -> bool {
        self.up.is_limited() || self.down.is_limited()
    }
}

/// Parses a bandwidth: `10MB/s`, `500KB/s`, `1MiB/s`, `100Mbit/s`, `2500B/s` (k/M/G decimal,
/// Ki/Mi/Gi binary, bit or B). Returns bytes per second.
pub fn parse_bandwidth(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid bandwidth \"{s}\" (write 10MB/s, 512KiB/s, 100Mbit/s)");
    let amount = s.trim().strip_suffix("/s").ok_or_else(bad)?;
    let split = amount
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(amount.len());
    let (number, unit) = amount.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let (scale, unit) = match unit.trim() {
        u if u.starts_with("Ki") => (1024.0, &u[2..]),
        u if u.starts_with("Mi") => (1024.0 * 1024.0, &u[2..]),
        u if u.starts_with("Gi") => (1024.0 * 1024.0 * 1024.0, &u[2..]),
        u if u.starts_with(['k', 'K']) => (1e3, &u[1..]),
        u if u.starts_with('M') => (1e6, &u[1..]),
        u if u.starts_with('G') => (1e9, &u[1..]),
        u => (1.0, u),
    };
    let bytes = match unit {
        "B" => number * scale,
        "bit" | "b" => number * scale / 8.0,
        _ => return Err(bad()),
    };
    if !(1.0..=1e12).contains(&bytes) {
        return Err(format!(
            "bandwidth \"{s}\" is out of range (1 B/s to 1 TB/s)"
        ));
    }
    Ok(bytes as u64)
}

/// Parses a rate of events: `50/s`, `600/m` (per minute). Returns the count and its period.
pub fn parse_per_second(s: &str) -> Result<(u64, Duration), String> {
    let bad = || format!("invalid rate \"{s}\" (write 50/s or 600/m)");
    let (count, per) = s.trim().split_once('/').ok_or_else(bad)?;
    let count: u64 = count.trim().parse().map_err(|_| bad())?;
    let per = match per.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        _ => return Err(bad()),
    };
    if count == 0 {
        return Err(format!("rate \"{s}\" must allow at least 1"));
    }
    Ok((count, per))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bandwidths() {
        assert_eq!(parse_bandwidth("10MB/s"), Ok(10_000_000));
        assert_eq!(parse_bandwidth("1MiB/s"), Ok(1 << 20));
        assert_eq!(parse_bandwidth("100Mbit/s"), Ok(12_500_000));
        assert_eq!(parse_bandwidth("512KiB/s"), Ok(512 * 1024));
        assert_eq!(parse_bandwidth("2500B/s"), Ok(2500));
        assert_eq!(parse_bandwidth("1.5MB/s"), Ok(1_500_000));
        for bad in ["10MB", "fast/s", "10XB/s", "0B/s", "-1MB/s", "10 MB"] {
            assert!(parse_bandwidth(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_per_second("50/s"), Ok((50, Duration::from_secs(1))));
        assert_eq!(
            parse_per_second("600/m"),
            Ok((600, Duration::from_secs(60)))
        );
        assert!(parse_per_second("0/s").is_err() && parse_per_second("5").is_err());
    }

    /// Post-paid debt: a flow that moved more than the burst waits it off; flows sharing a
    /// bucket each wait for the debt at the time they paid (FIFO).
    #[tokio::test(start_paused = true)]
    async fn debt_is_waited_off_in_order() {
        let b = Bucket::new(1000.0, 1000.0);
        assert_eq!(b.charge(500), Duration::ZERO);
        assert_eq!(b.charge(1500), Duration::from_secs(1));
        assert_eq!(b.charge(500), Duration::from_millis(1500));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(b.charge(0), Duration::ZERO);
        assert!(!b.is_full());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.is_full());
    }

    #[tokio::test(start_paused = true)]
    async fn try_take_allows_the_burst_then_the_rate() {
        let b = Bucket::new(5.0, 5.0);
        for _ in 0..5 {
            assert!(b.try_take().is_ok());
        }
        assert_eq!(b.try_take(), Err(Duration::from_millis(200)));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(b.try_take().is_ok());
    }
}
