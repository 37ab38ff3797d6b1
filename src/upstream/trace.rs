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
    pub steps: Vec<Step>,
    /// Each hop's own handshake time (TLS included), first to last.
    pub hops: Vec<Duration>,
    /// The target address dialed, when viaduct resolved the target's name itself.
    pub resolved: Option<SocketAddr>,
}

/// A shared handle the dialer records into. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tracer(Arc<Mutex<DialTrace>>);

impl Tracer {
    pub fn step(&self, what: String, took: Duration, outcome: String) {
        if let Ok(mut t) = self.0.lock() {
            t.steps.push(Step {
                what,
                took,
                outcome,
            });
        }
    }

    pub fn hop(&self, took: Duration) {
        if let Ok(mut t) = self.0.lock() {
            t.hops.push(took);
        }
    }

    pub fn resolved(&self, addr: SocketAddr) {
        if let Ok(mut t) = self.0.lock() {
            t.resolved = Some(addr);
        }
    }

    /// Forgets what an attempt recorded (a pool moving on to its next member).
    pub fn reset(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = DialTrace::default();
        }
    }

    /// A copy of what was recorded.
    pub fn get(&self) -> DialTrace {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }
}
