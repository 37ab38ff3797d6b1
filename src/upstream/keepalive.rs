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
//! connection ends at an absolute-form upstream, the origin; on a route with a sticky source
//! address (`bind`), that address too, so one session never rides another's. Idle connections are bounded: per
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
    /// The pinned source address the connection leaves from.
    source: Option<std::net::IpAddr>,
}

/// A connection ready for one request.
pub struct Conn {
    pub sender: SendRequest<OutBody>,
    /// True when requests go in absolute-form (to an HTTP upstream).
    pub proxied: bool,
    pub key: ConnKey,
    /// True when it came from the idle set (it may have been closed by the peer meanwhile).
    pub reused: bool,
    /// Every request on it carries the upstream's Basic credentials (NTLM and Negotiate
    /// authenticate the connection once instead).
    pub basic: bool,
}

/// An idle connection, since when, and whether its requests carry Basic credentials.
type Idle = (SendRequest<OutBody>, Instant, bool);

/// The idle connections by key, and how many there are in all.
#[derive(Default)]
struct IdleSet {
    by_key: HashMap<ConnKey, Vec<Idle>>,
    total: usize,
}

impl IdleSet {
    /// The most recently parked connection for `key` that is still usable.
    fn take(&mut self, key: &ConnKey, timeout: Duration) -> Option<(SendRequest<OutBody>, bool)> {
        let list = self.by_key.get_mut(key)?;
        let mut found = None;
        while let Some((sender, since, basic)) = list.pop() {
            self.total -= 1;
            if since.elapsed() < timeout && sender.is_ready() {
                found = Some((sender, basic));
                break;
            }
        }
        if list.is_empty() {
            self.by_key.remove(key);
        }
        found
    }

    /// Parks `sender` under `key`, within the per-key and total bounds (the longest idle goes
    /// first when the total is full).
    fn put(&mut self, key: ConnKey, sender: SendRequest<OutBody>, basic: bool, max_total: usize) {
        let list = self.by_key.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_KEY {
            return;
        }
        list.push((sender, Instant::now(), basic));
        self.total += 1;
        if self.total > max_total {
            self.evict_oldest();
        }
    }

    /// Drops the longest-idle connection.
    fn evict_oldest(&mut self) {
        let oldest = self
            .by_key
            .iter()
            .filter_map(|(k, list)| list.first().map(|(_, since, _)| (*since, k.clone())))
            .min_by_key(|(since, _)| *since);
        if let Some((_, key)) = oldest {
            self.remove_where(|k, i, _| k == &key && i == 0);
        }
    }

    /// Closes connections past `timeout` or closed by their peer.
    fn prune(&mut self, timeout: Duration) {
        self.remove_where(|_, _, (s, since, _)| since.elapsed() >= timeout || s.is_closed());
    }

    /// Drops every connection for which `gone(key, position in its list, connection)` holds.
    fn remove_where(&mut self, mut gone: impl FnMut(&ConnKey, usize, &Idle) -> bool) {
        let mut removed = 0;
        self.by_key.retain(|key, list| {
            let mut i = 0;
            list.retain(|idle| {
                let drop = gone(key, i, idle);
                i += 1;
                removed += usize::from(drop);
                !drop
            });
            !list.is_empty()
        });
        self.total -= removed;
    }
}

/// The idle connections.
pub struct KeepAlive {
    idle: Mutex<IdleSet>,
    /// Idle connections kept in all, at most.
    max_idle: usize,
    /// How long an idle connection is kept. Origins commonly close after 60-120 s.
    idle_timeout: Duration,
    reaper: AtomicBool,
}

impl KeepAlive {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(IdleSet::default()),
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
        let source = dialer.source_for(route);
        let key = ConnKey {
            route: route.id(),
            origin: (!proxied).then(|| target.clone()),
            source: source.filter(|s| s.pinned).map(|s| s.addr),
        };
        if !fresh && let Some((sender, basic)) = self.checkout(&key) {
            return Ok(Conn {
                sender,
                proxied,
                key,
                reused: true,
                basic,
            });
        }
        let (io, proxied) = dialer.forward(route, target, source).await?;
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
            basic: false,
        })
    }

    fn checkout(&self, key: &ConnKey) -> Option<(SendRequest<OutBody>, bool)> {
        self.idle.lock().ok()?.take(key, self.idle_timeout)
    }

    /// Idle connections held right now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.total)
    }

    /// Closes the idle connections of routes not in `keep` (a reload changed or removed them:
    /// rotated credentials must not ride on sessions opened with the old ones).
    pub fn retain_routes(&self, keep: &HashSet<u64>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.remove_where(|key, _, _| !keep.contains(&key.route));
        }
    }

    /// Puts `sender` back once its current response is done (hyper reports it ready again).
    /// `basic`: its requests carry Basic credentials (see [`Conn::basic`]).
    pub fn recycle(self: &Arc<Self>, key: ConnKey, mut sender: SendRequest<OutBody>, basic: bool) {
        if self.max_idle == 0 {
            return;
        }
        self.start_reaper();
        let keepalive = Arc::clone(self);
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            if let Ok(mut idle) = keepalive.idle.lock() {
                idle.put(key, sender, basic, keepalive.max_idle);
            }
        });
    }

    /// One background task closes idle connections past the idle timeout (or closed by their
    /// peer); it holds only a `Weak`, so it ends with the set.
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
                    idle.prune(keepalive.idle_timeout);
                }
            }
        });
    }
}
