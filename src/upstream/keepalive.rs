//! Plain-HTTP connections: HTTP/1 client connections to origins (or to an HTTP upstream that
//! takes absolute-form requests), kept alive and reused.
//!
//! Hand-written on `hyper::client::conn::http1` rather than hyper-util's pooling client so that
//! the proxy picks the route (and, in a pool, the member) *before* the request is handed over:
//! when a dial fails nothing of the request has been sent, so it can go to the next member, and
//! the member's credentials are known when the request head is written.
//!
//! Connections are keyed by how they were made: the route's identity (its hops *and* their
//! credentials, so two accounts on one upstream never share a session) and, unless the
//! connection ends at an absolute-form upstream, the origin. Idle connections are bounded: per
//! key, in total (the oldest goes first), and in time (a reaper closes them after the idle
//! timeout even when no request comes to look).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::{ConnectError, Dialer, Route};
use crate::target::Target;

/// The body of a request sent on: the client's, under its pace bounds.
pub type OutBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Idle connections kept per key (a benchmark's 64 client connections to one origin keep theirs).
const MAX_IDLE_PER_KEY: usize = 64;

/// Identifies interchangeable connections: the route's identity and, unless the connection
/// ends at an absolute-form upstream, the origin. Holds no credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnKey {
    route: u64,
    origin: Option<Target>,
}

/// A connection ready for one request.
pub struct Conn {
    pub sender: SendRequest<OutBody>,
    /// True when requests go in absolute-form (to an HTTP upstream).
    pub proxied: bool,
    pub key: ConnKey,
    /// True when it came from the idle set (it may have been closed by the peer meanwhile).
    pub reused: bool,
}

/// An idle connection and since when.
type Idle = (SendRequest<OutBody>, Instant);

/// The idle connections.
pub struct KeepAlive {
    idle: Mutex<HashMap<ConnKey, Vec<Idle>>>,
    /// Idle connections kept in all, at most.
    max_idle: usize,
    /// How long an idle connection is kept. Origins commonly close after 60-120 s.
    idle_timeout: Duration,
    reaper: AtomicBool,
}

impl KeepAlive {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            max_idle,
            idle_timeout,
            reaper: AtomicBool::new(false),
        }
    }

    /// A connection for `target` along `route`: an idle one if any (unless `fresh`), else a new
    /// dial.
    pub async fn acquire(
        &self,
        dialer: &Dialer,
        route: &Route,
        target: &Target,
        fresh: bool,
    ) -> Result<Conn, ConnectError> {
        let proxied = route.absolute_form_hop().is_some();
        let key = ConnKey {
            route: route.id(),
            origin: (!proxied).then(|| target.clone()),
        };
        if !fresh && let Some(sender) = self.checkout(&key) {
            return Ok(Conn {
                sender,
                proxied,
                key,
                reused: true,
            });
        }
        let (io, proxied) = dialer.forward(route, target).await?;
        let (sender, conn) = http1::Builder::new()
            .preserve_header_case(true)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ConnectError::Unreachable {
                peer: route.name().to_string(),
                source: std::io::Error::other(e),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Conn {
            sender,
            proxied,
            key,
            reused: false,
        })
    }

    fn checkout(&self, key: &ConnKey) -> Option<SendRequest<OutBody>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some((sender, since)) = list.pop() {
            if since.elapsed() < self.idle_timeout && sender.is_ready() {
                return Some(sender);
            }
        }
        idle.remove(key);
        None
    }

    /// Idle connections held right now.
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .map_or(0, |idle| idle.values().map(Vec::len).sum())
    }

    /// Closes the idle connections of routes not in `keep` (a reload changed or removed them:
    /// rotated credentials must not ride on sessions opened with the old ones).
    pub fn retain_routes(&self, keep: &HashSet<u64>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|key, _| keep.contains(&key.route));
        }
    }

    /// Puts `sender` back once its current response is done (hyper reports it ready again).
    pub fn recycle(self: &Arc<Self>, key: ConnKey, mut sender: SendRequest<OutBody>) {
        if self.max_idle == 0 {
            return;
        }
        self.start_reaper();
        let keepalive = Arc::clone(self);
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let Ok(mut idle) = keepalive.idle.lock() else {
                return;
            };
            let list = idle.entry(key).or_default();
            list.retain(|(s, since)| since.elapsed() < keepalive.idle_timeout && !s.is_closed());
            if list.len() >= MAX_IDLE_PER_KEY {
                return;
            }
            list.push((sender, Instant::now()));
            let total: usize = idle.values().map(Vec::len).sum();
            if total > keepalive.max_idle {
                evict_oldest(&mut idle, total - keepalive.max_idle);
            }
        });
    }

    /// One background task per set of kept-alive connections closes idle connections past the idle timeout; it holds
    /// only a `Weak`, so it ends with them.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let every =
            (self.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(keepalive) = weak.upgrade() else {
                    return;
                };
                if let Ok(mut idle) = keepalive.idle.lock() {
                    idle.retain(|_, list| {
                        list.retain(|(s, since)| {
                            since.elapsed() < keepalive.idle_timeout && !s.is_closed()
                        });
                        !list.is_empty()
                    });
                }
            }
        });
    }
}

/// Drops the `n` longest-idle connections.
fn evict_oldest(idle: &mut HashMap<ConnKey, Vec<Idle>>, n: usize) {
    let mut ages: Vec<(Instant, ConnKey)> = idle
        .iter()
        .flat_map(|(k, list)| list.iter().map(move |(_, since)| (*since, k.clone())))
        .collect();
    ages.sort_by_key(|(since, _)| *since);
    for (since, key) in ages.into_iter().take(n) {
        if let Some(list) = idle.get_mut(&key) {
            list.retain(|(_, s)| *s != since);
            if list.is_empty() {
                idle.remove(&key);
            }
        }
    }
}
