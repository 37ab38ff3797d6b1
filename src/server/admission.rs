//! Admission: the connection caps (global and per client IP) and the rate of new connections
//! per client IP. A connection's place is held by an [`Admitted`] guard for as long as the
//! connection, or a tunnel that took it over, lives.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::access::Clients;
use crate::lograte::EverySecond;
use crate::metrics::Metrics;
use crate::rate::Bucket;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The limit's name (its config key), for the metric and the answer.
    pub limit: &'static str,
    /// When the client may try again (rate limits).
    pub retry_after: Option<Duration>,
}

impl From<&'static str> for Refused {
    fn from(limit: &'static str) -> Self {
        Self {
            limit,
            retry_after: None,
        }
    }
}

/// `new_connections_per_ip`: a bucket per client address holding `count` new connections,
/// refilled at `count` per period.
struct NewConnections {
    rate: f64,
    burst: f64,
    by_ip: HashMap<IpAddr, Bucket>,
    /// Full buckets are forgotten when the table grows past this.
    prune_at: usize,
}

impl NewConnections {
    fn new((count, per): (u64, Duration)) -> Self {
        Self {
            rate: count as f64 / per.as_secs_f64(),
            burst: count as f64,
            by_ip: HashMap::new(),
            prune_at: 4096,
        }
    }

    fn take(&mut self, ip: IpAddr) -> Result<(), Duration> {
        let (rate, burst) = (self.rate, self.burst);
        let res = self
            .by_ip
            .entry(ip)
            .or_insert_with(|| Bucket::new(rate, burst))
            .try_take();
        if self.by_ip.len() > self.prune_at {
            // A full bucket is the same as none: only clients that connected lately stay.
            self.by_ip.retain(|_, b| !b.is_full());
            self.prune_at = (self.by_ip.len() * 2).max(4096);
        }
        res
    }
}

/// The connection caps and the count of refusals (logged at most once a second).
pub struct Admission {
    max: usize,
    metrics: Arc<Metrics>,
    /// Who may connect at all (`--allow-clients`): swapped at a reload.
    clients: ArcSwap<Clients>,
    connections: Arc<tokio::sync::Semaphore>,
    per_ip_max: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// `new_connections_per_ip`, swapped at a reload.
    new_connections: Mutex<Option<NewConnections>>,
    refused: EverySecond,
    conn_ids: AtomicU64,
}

impl Admission {
    /// `max`: open client connections at most; `per_ip_max`: per client IP (0: no limit).
    pub fn new(max: usize, per_ip_max: usize, clients: Clients, metrics: Arc<Metrics>) -> Self {
        Self {
            max: max.max(1),
            metrics,
            clients: ArcSwap::from_pointee(clients),
            connections: Arc::new(tokio::sync::Semaphore::new(max.max(1))),
            per_ip_max,
            per_ip: Mutex::new(HashMap::new()),
            new_connections: Mutex::new(None),
            refused: EverySecond::default(),
            conn_ids: AtomicU64::new(1),
        }
    }

    /// Client connections open now (tunnels that took a connection's place included).
    pub fn open_connections(&self) -> usize {
        self.max - self.connections.available_permits()
    }

    /// Whether `ip` may connect at all.
    pub fn permits_client(&self, ip: IpAddr) -> bool {
        self.clients.load().permits(ip)
    }

    /// Puts a new list of allowed clients in force (a reload).
    pub fn set_clients(&self, clients: Clients) {
        self.clients.store(Arc::new(clients));
    }

    /// Puts a rate of new connections per client address in force (`None`: no limit); a
    /// reload that keeps the rate keeps the clients' buckets.
    pub fn set_new_connections(&self, rate: Option<(u64, Duration)>) {
        if let Ok(mut nc) = self.new_connections.lock() {
            let same = match (nc.as_ref(), rate) {
                (Some(old), Some((count, per))) => {
                    old.burst == count as f64 && old.rate == count as f64 / per.as_secs_f64()
                }
                (None, None) => true,
                _ => false,
            };
            if !same {
                *nc = rate.map(NewConnections::new);
            }
        }
    }

    /// Admits a new client connection from `ip`, or names the limit that refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        self.admit_holding(ip, None)
    }

    /// A place under `max_connections` for a connection whose client is not known yet (a
    /// PROXY protocol header still to come): it counts from accept, so connections that never
    /// send their header cannot pile up outside the limit.
    pub fn hold_place(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Refused> {
        Arc::clone(&self.connections)
            .try_acquire_owned()
            .map_err(|_| Refused::from("max_connections"))
    }

    /// [`Admission::admit`], for a connection that already holds its place (`held`).
    pub fn admit_holding(
        self: &Arc<Self>,
        ip: IpAddr,
        held: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<Admitted, Refused> {
        if let Ok(mut nc) = self.new_connections.lock()
            && let Some(nc) = nc.as_mut()
            && let Err(wait) = nc.take(crate::target::normalize(ip))
        {
            return Err(Refused {
                limit: "new_connections_per_ip",
                retry_after: Some(wait),
            });
        }
        let permit = match held {
            Some(permit) => permit,
            None => self.hold_place()?,
        };
        if self.per_ip_max > 0 {
            let mut per_ip = self.per_ip.lock().map_err(|_| Refused::from("per_ip"))?;
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= self.per_ip_max {
                return Err("max_connections_per_ip".into());
            }
            *n += 1;
        }
        Ok(Admitted {
            _permit: permit,
            admission: Arc::clone(self),
            ip,
        })
    }

    /// Counts a refused connection; logs at most once a second, with the count since.
    pub fn note_refused(&self, why: &'static str) {
        self.metrics.limit(why);
        if let Some(n) = self.refused.count() {
            tracing::warn!(limit = why, refused = n, "connections refused at the limit");
        }
    }

    /// A number for the next connection's log span.
    pub fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// A client connection's place under the limits, given back on drop.
pub struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted").field("ip", &self.ip).finish()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.admission.per_ip_max > 0
            && let Ok(mut per_ip) = self.admission.per_ip.lock()
            && let Some(n) = per_ip.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}
