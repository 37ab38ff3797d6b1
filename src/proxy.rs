//! `Proxy`: the state every connection shares, built once from a [`Config`].
//!
//! It owns the dialer and route (outbound), the pooled client for plain forwarding, the `Via`
//! identity, timeouts, and the shutdown machinery (task tracker and cancellation tokens).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::inbound::headers::Via;
use crate::outbound::forward::ConnPool;
use crate::outbound::tls::{self, TlsConfigError};
use crate::outbound::{Dialer, Resolve, SystemResolver, TlsOptions};
use crate::pool::health;
use crate::route::Router;

/// Everything viaduct needs to run. `Config::default()` is the safe default: loopback, direct.
#[derive(Debug)]
pub struct Config {
    /// Where to accept clients. Default `127.0.0.1:8083` (loopback: nothing else can reach it).
    pub listen: Vec<SocketAddr>,
    /// How to reach targets: bypass list, rules, pools, default. Default: everything direct.
    pub router: Router,
    /// Bound on a whole dial (DNS, TCP, every upstream handshake). Default 10 s.
    pub connect_timeout: Duration,
    /// A tunnel with no bytes either way for this long is closed. Default 10 min.
    pub idle_timeout: Duration,
    /// A forwarded plain request whose response head does not arrive within this gets 504.
    /// Default 60 s (nginx's proxy_read_timeout).
    pub response_timeout: Duration,
    /// Our name in `Via` and `Proxy-Status`, and how loops are recognised. Default `viaduct`.
    pub via_name: String,
    /// On SIGINT/SIGTERM, how long open work may finish before it is cut. Default 5 s.
    pub shutdown_grace: Duration,
    /// How HTTPS upstreams are trusted. Default: webpki roots, verification on.
    pub tls: TlsOptions,
    /// Client-side limits.
    pub limits: Limits,
}

/// What one client may cost us. Defaults suit a proxy on a workstation or a small server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head accepted; past it: 431 and the connection is closed. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Most header fields in a request head; past it: 431. Default 100.
    pub max_headers: usize,
    /// A request head must arrive within this (slowloris); else 408 and close. It also closes
    /// idle keep-alive connections. Default 10 s.
    pub header_read_timeout: Duration,
    /// Open client connections at most; more are answered 503 and closed. Default 10,000.
    pub max_connections: usize,
    /// Open client connections per client IP at most (0: no limit). Default 0.
    pub max_connections_per_ip: usize,
    /// A forwarded request body that sends nothing for this long gets the client 408 and frees
    /// the origin connection. Default 30 s.
    pub request_body_timeout: Duration,
    /// `(grace, bytes per second)`: after the grace period a request body must average at least
    /// this rate, else 408 (Apache mod_reqtimeout's defaults: 20 s, then 500 bytes/s).
    /// `None`: no rate bound.
    pub request_body_min_rate: Option<(Duration, u64)>,
    /// Kept-alive upstream connections held idle in all, at most (the oldest are closed
    /// first). Default 256; 0 keeps none.
    pub max_idle_upstream: usize,
    /// An idle kept-alive upstream connection is closed after this. Default 90 s.
    pub upstream_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_ip: 0,
            request_body_timeout: Duration::from_secs(30),
            request_body_min_rate: Some((Duration::from_secs(20), 500)),
            max_idle_upstream: 256,
            upstream_idle_timeout: Duration::from_secs(90),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8083))],
            router: Router::direct(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            response_timeout: Duration::from_secs(60),
            via_name: "viaduct".to_owned(),
            shutdown_grace: Duration::from_secs(5),
            tls: TlsOptions::default(),
            limits: Limits::default(),
        }
    }
}

/// Why a [`Config`] cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("via name \"{0}\" must be a single token (letters, digits, -._~ ...)")]
    ViaName(String),
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
}

/// The shared state of a running proxy.
pub struct Proxy {
    router: ArcSwap<Router>,
    resolver: Arc<dyn Resolve>,
    dialer: Dialer,
    conns: Arc<ConnPool>,
    via: Via,
    idle_timeout: Duration,
    response_timeout: Duration,
    shutdown_grace: Duration,
    tracker: TaskTracker,
    graceful: CancellationToken,
    hard_stop: CancellationToken,
    open_tunnels: AtomicUsize,
    conn_ids: AtomicU64,
    limits: Limits,
    connections: Arc<tokio::sync::Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    timeout_response: Arc<[u8]>,
    refused: AtomicU64,
    zero_copy: AtomicU64,
    refused_logged_at: AtomicU64,
    epoch: std::time::Instant,
}

impl Proxy {
    /// Builds a proxy that resolves names with the system resolver.
    pub fn new(config: Config) -> Result<Arc<Self>, BuildError> {
        Self::with_resolver(config, Arc::new(SystemResolver))
    }

    /// Builds a proxy with an injected resolver (tests, custom DNS).
    pub fn with_resolver(
        config: Config,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Arc<Self>, BuildError> {
        let via = Via::new(&config.via_name)
            .ok_or_else(|| BuildError::ViaName(config.via_name.clone()))?;
        let dialer = Dialer::new(
            Arc::clone(&resolver),
            tls::connector(&config.tls)?,
            config.connect_timeout,
            via.value(http::Version::HTTP_11).clone(),
        );
        for pool in config.router.pools() {
            health::spawn(&pool, dialer.clone());
        }
        Ok(Arc::new(Self {
            router: ArcSwap::from_pointee(config.router),
            resolver,
            dialer,
            conns: Arc::new(ConnPool::new(
                config.limits.max_idle_upstream,
                config.limits.upstream_idle_timeout,
            )),
            via,
            idle_timeout: config.idle_timeout,
            response_timeout: config.response_timeout,
            shutdown_grace: config.shutdown_grace,
            tracker: TaskTracker::new(),
            graceful: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            open_tunnels: AtomicUsize::new(0),
            conn_ids: AtomicU64::new(1),
            connections: Arc::new(tokio::sync::Semaphore::new(
                config.limits.max_connections.max(1),
            )),
            per_ip: Mutex::new(HashMap::new()),
            timeout_response: timeout_response(&config.via_name, config.limits.header_read_timeout),
            limits: config.limits,
            refused: AtomicU64::new(0),
            zero_copy: AtomicU64::new(0),
            refused_logged_at: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }))
    }

    /// Tunnels relayed with splice(2) since start.
    pub fn zero_copy_tunnels(&self) -> u64 {
        self.zero_copy.load(Ordering::Relaxed)
    }

    pub(crate) fn count_zero_copy(&self) {
        self.zero_copy.fetch_add(1, Ordering::Relaxed);
    }

    /// Tunnels (CONNECT and upgraded requests) open right now.
    pub fn open_tunnels(&self) -> usize {
        self.open_tunnels.load(Ordering::Relaxed)
    }

    /// Counts a tunnel as open until the returned guard drops.
    pub(crate) fn tunnel_opened(&self) -> TunnelGuard<'_> {
        self.open_tunnels.fetch_add(1, Ordering::Relaxed);
        TunnelGuard(&self.open_tunnels)
    }

    /// The routing in force now. A request keeps the snapshot it started with.
    pub fn router(&self) -> Arc<Router> {
        self.router.load_full()
    }

    /// Swaps in new routing (a config reload): new requests use it at once; open tunnels and
    /// in-flight requests keep what they had. Pool members that did not change keep their
    /// health state; health checks start for the new pools (the old pools' checkers stop when
    /// their last user drops them).
    pub fn reload(&self, router: Router) {
        let old = self.router.load();
        let old_pools = old.pools();
        for pool in router.pools() {
            if let Some(prev) = old_pools.iter().find(|p| p.name == pool.name) {
                pool.inherit(prev);
            }
            health::spawn(&pool, self.dialer.clone());
        }
        // Kept-alive connections of routes that changed (rotated credentials, moved upstreams)
        // must not carry further requests.
        self.conns.retain_routes(&router.route_ids());
        self.router.store(Arc::new(router));
    }

    /// Kept-alive upstream connections idle right now.
    pub fn idle_upstream_connections(&self) -> usize {
        self.conns.idle_count()
    }

    pub(crate) fn resolver(&self) -> &dyn Resolve {
        &*self.resolver
    }
    pub(crate) fn conns(&self) -> &Arc<ConnPool> {
        &self.conns
    }
    pub(crate) fn dialer(&self) -> &Dialer {
        &self.dialer
    }
    pub(crate) fn via(&self) -> &Via {
        &self.via
    }
    pub(crate) fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
    pub(crate) fn response_timeout(&self) -> Duration {
        self.response_timeout
    }
    pub(crate) fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }
    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }
    pub(crate) fn graceful(&self) -> &CancellationToken {
        &self.graceful
    }
    pub(crate) fn hard_stop(&self) -> &CancellationToken {
        &self.hard_stop
    }
    pub(crate) fn begin_shutdown(&self) {
        self.graceful.cancel();
    }
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }
    pub(crate) fn timeout_response(&self) -> &Arc<[u8]> {
        &self.timeout_response
    }

    /// Admits a new client connection from `ip`, or says why not. The returned guard holds its
    /// place until dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, &'static str> {
        let permit = Arc::clone(&self.connections)
            .try_acquire_owned()
            .map_err(|_| "max_connections")?;
        if self.limits.max_connections_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().map_err(|_| "per_ip")?;
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= self.limits.max_connections_per_ip {
                return Err("max_connections_per_ip");
            }
            *n += 1;
        }
        Ok(Admission {
            _permit: permit,
            proxy: Arc::clone(self),
            ip,
        })
    }

    /// Counts a refused connection; logs at most once a second, with the count since.
    pub(crate) fn note_refused(&self, why: &'static str) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.refused_logged_at.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .refused_logged_at
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.refused.store(0, Ordering::Relaxed);
            tracing::warn!(limit = why, refused = n, "connections refused at the limit");
        }
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// A client connection's place under the limits.
pub(crate) struct Admission {
    _permit: tokio::sync::OwnedSemaphorePermit,
    proxy: Arc<Proxy>,
    ip: IpAddr,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").field("ip", &self.ip).finish()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.proxy.limits.max_connections_per_ip > 0
            && let Ok(mut per_ip) = self.proxy.per_ip.lock()
            && let Some(n) = per_ip.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// The bytes of the 408 sent when a request head does not arrive in time.
fn timeout_response(via_name: &str, after: Duration) -> Arc<[u8]> {
    crate::inbound::respond::raw_error(
        via_name,
        http::StatusCode::REQUEST_TIMEOUT,
        "http_request_error",
        &format!(
            "no request head within {}",
            humantime::format_duration(after)
        ),
    )
    .into()
}

/// Decrements the open-tunnel gauge on drop.
pub(crate) struct TunnelGuard<'a>(&'a AtomicUsize);

impl Drop for TunnelGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
