//! Plain-HTTP connections: HTTP/1 client connections to origins (or to an HTTP upstream that
//! takes absolute-form requests), kept alive and reused.
//!
//! Hand-written on `hyper::client::conn::http1` rather than hyper-util's pooling client so that
//! the proxy picks the route (and, in a pool, the member) *before* the request is handed over:
//! when a dial fails nothing of the request has been sent, so it can go to the next member, and
//! the member's credentials are known when the request head is written.
//!
//! Connections are keyed by how they were made: through an absolute-form upstream a connection
//! serves every destination; otherwise it belongs to one origin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::{ConnectError, Dialer, Route};
use crate::target::Target;

/// How long an idle connection is kept. Origins commonly close after 60-120 s.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per key.
const MAX_IDLE_PER_KEY: usize = 64;

/// Identifies interchangeable connections: the route (as displayed: hops' kinds and addresses)
/// and, unless the connection ends at an absolute-form upstream, the origin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnKey {
    route: Arc<str>,
    origin: Option<String>,
}

/// A connection ready for one request.
pub struct Conn {
    pub sender: SendRequest<Incoming>,
    /// True when requests go in absolute-form (to an HTTP upstream).
    pub proxied: bool,
    pub key: ConnKey,
    /// True when it came from the idle set (it may have been closed by the peer meanwhile).
    pub reused: bool,
}

/// An idle connection and since when.
type Idle = (SendRequest<Incoming>, Instant);

/// The idle connections.
#[derive(Default)]
pub struct ConnPool {
    idle: Mutex<HashMap<ConnKey, Vec<Idle>>>,
}

impl ConnPool {
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
            route: Arc::clone(route.name()),
            origin: (!proxied).then(|| target.to_string()),
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
                peer: key.route.to_string(),
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

    fn checkout(&self, key: &ConnKey) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some((sender, since)) = list.pop() {
            if since.elapsed() < IDLE_TIMEOUT && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Puts `sender` back once its current response is done (hyper reports it ready again).
    pub fn recycle(self: &Arc<Self>, key: ConnKey, mut sender: SendRequest<Incoming>) {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let Ok(mut idle) = pool.idle.lock() else {
                return;
            };
            if idle.len() > 1024 {
                idle.retain(|_, list| {
                    list.retain(|(s, since)| since.elapsed() < IDLE_TIMEOUT && !s.is_closed());
                    !list.is_empty()
                });
            }
            let list = idle.entry(key).or_default();
            list.retain(|(s, since)| since.elapsed() < IDLE_TIMEOUT && !s.is_closed());
            if list.len() < MAX_IDLE_PER_KEY {
                list.push((sender, Instant::now()));
            }
        });
    }
}
