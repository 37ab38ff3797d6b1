//! A counter of repeated events that reaches the log at most once a second: a flood of refused
//! connections or failed logins must not become a flood of log lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counts events; [`EverySecond::count`] says when (and how many since) to log.
#[derive(Debug)]
pub struct EverySecond {
    count: AtomicU64,
    logged_at_ms: AtomicU64,
    epoch: Instant,
}

impl Default for EverySecond {
    fn default() -> Self {
        Self {
            count: AtomicU64::new(0),
            logged_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl EverySecond {
    /// Counts one event. `Some(n)`: log now, `n` events since the last line.
    pub fn count(&self) -> Option<u64> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.logged_at_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .logged_at_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
            return Some(n);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_event_logs_then_at_most_once_a_second() {
        let e = EverySecond::default();
        assert_eq!(e.count(), Some(1));
        assert!((0..100).all(|_| e.count().is_none()));
    }
}
