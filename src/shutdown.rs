//! Shutdown, shared by everything that runs tasks: one tracker for the work that must finish
//! before the process exits (client connections and tunnels alike), a graceful signal
//! (finish what is in flight, take nothing new) and a hard stop (cut what is left).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cheap to clone: every clone is the same shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tracker: TaskTracker,
    graceful: CancellationToken,
    hard_stop: CancellationToken,
    grace: Duration,
}

impl Shutdown {
    /// `grace`: how long open work may finish once shutdown begins.
    pub fn new(grace: Duration) -> Self {
        Self {
            tracker: TaskTracker::new(),
            graceful: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            grace,
        }
    }

    /// Tracks work that shutdown waits for.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Fires when shutdown begins: finish in-flight work, take nothing new.
    pub fn graceful(&self) -> &CancellationToken {
        &self.graceful
    }

    /// Fires when the grace period is over: cut what is left.
    pub fn hard_stop(&self) -> &CancellationToken {
        &self.hard_stop
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Begins shutdown and waits for tracked work: up to the grace period, then cuts the rest
    /// and waits for it to go.
    pub async fn drain(&self) {
        tracing::info!(
            open = self.tracker.len(),
            grace_ms = self.grace.as_millis() as u64,
            "shutting down"
        );
        self.graceful.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open = self.tracker.len(),
                "grace period over; closing what is left"
            );
            self.hard_stop.cancel();
            self.tracker.wait().await;
        }
        tracing::info!("shut down");
    }
}
