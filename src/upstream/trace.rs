//! What a dial did, step by step: DNS, TCP, each hop's handshake, with timings. Filled in by
//! the dialer when it is given a [`Tracer`]; read by the session core (access log, metrics)
//! and by `viaduct probe` (which prints it).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One step of a dial.
#[derive(Debug, Clone)]
pub struct Step {
    /// `dns example.com`, `tcp upstream 10.0.0.1:3128 (10.0.0.1:3128)`, `hop 1 ... handshake`.
    pub what: String,
    pub took: Duration,
    /// What came of it, in words.
    pub outcome: String,
}

/// A dial's record.
#[derive(Debug, Clone, Default)]
pub struct DialTrace {
    /// Every step in words (only for a [`Tracer::detailed`]).
    pub steps: Vec<Step>,
    /// Each hop's own handshake time (TLS included), first to last.
    pub hops: Vec<Duration>,
    /// The target address dialed, when viaduct resolved the target's name itself.
    pub resolved: Option<SocketAddr>,
    /// Something was dialed (a request on a kept-alive connection dials nothing).
    pub dialed: bool,
}

/// A shared handle the dialer records into. Cheap to clone. By default it keeps what the
/// access log and metrics need (hop times, the address dialed, whether anything was dialed);
/// [`Tracer::detailed`] also keeps every step in words, for `viaduct probe`.
#[derive(Debug, Clone, Default)]
pub struct Tracer {
    trace: Arc<Mutex<DialTrace>>,
    detailed: bool,
}

impl Tracer {
    /// A tracer that keeps every step in words.
    pub fn detailed() -> Self {
        Self {
            trace: Arc::default(),
            detailed: true,
        }
    }

    /// Whether steps in words are wanted (callers skip formatting them otherwise).
    pub fn wants_steps(&self) -> bool {
        self.detailed
    }

    /// Records a step; without [`Tracer::detailed`], only that something was dialed.
    pub fn step(&self, what: String, took: Duration, outcome: String) {
        if let Ok(mut t) = self.trace.lock() {
            t.dialed = true;
            if self.detailed {
                t.steps.push(Step {
                    what,
                    took,
                    outcome,
                });
            }
        }
    }

    /// Notes that a dial happened, without words.
    pub fn touched(&self) {
        if let Ok(mut t) = self.trace.lock() {
            t.dialed = true;
        }
    }

    pub fn hop(&self, took: Duration) {
        if let Ok(mut t) = self.trace.lock() {
            t.hops.push(took);
        }
    }

    pub fn resolved(&self, addr: SocketAddr) {
        if let Ok(mut t) = self.trace.lock() {
            t.resolved = Some(addr);
        }
    }

    /// Forgets what an attempt recorded (a pool moving on to its next member).
    pub fn reset(&self) {
        if let Ok(mut t) = self.trace.lock() {
            *t = DialTrace::default();
        }
    }

    /// Whether anything was dialed, hop times and the address dialed, without the steps.
    pub fn summary(&self) -> (bool, Vec<Duration>, Option<SocketAddr>) {
        self.trace
            .lock()
            .map(|t| (t.dialed, t.hops.clone(), t.resolved))
            .unwrap_or_default()
    }

    /// A copy of everything recorded.
    pub fn get(&self) -> DialTrace {
        self.trace.lock().map(|t| t.clone()).unwrap_or_default()
    }
}
