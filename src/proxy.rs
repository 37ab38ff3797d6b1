//! `Proxy`: the state every connection shares, built once from a [`Config`].
//!
//! It owns the dialer and route (outbound), the pooled client for plain forwarding, the `Via`
//! identity, timeouts, and the shutdown machinery (task tracker and cancellation tokens).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// Our name in `Via` and `Proxy-Status`, and how loops are recognised. Default `viaduct`.
    pub via_name: String,
    /// On SIGINT/SIGTERM, how long open work may finish before it is cut. Default 5 s.
    pub shutdown_grace: Duration,
    /// How HTTPS upstreams are trusted. Default: webpki roots, verification on.
    pub tls: TlsOptions,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8083))],
            router: Router::direct(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            via_name: "viaduct".to_owned(),
            shutdown_grace: Duration::from_secs(5),
            tls: TlsOptions::default(),
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
    shutdown_grace: Duration,
    tracker: TaskTracker,
    graceful: CancellationToken,
    hard_stop: CancellationToken,
    open_tunnels: AtomicUsize,
    conn_ids: AtomicU64,
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
            conns: Arc::new(ConnPool::default()),
            via,
            idle_timeout: config.idle_timeout,
            shutdown_grace: config.shutdown_grace,
            tracker: TaskTracker::new(),
            graceful: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            open_tunnels: AtomicUsize::new(0),
            conn_ids: AtomicU64::new(1),
        }))
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
    /// in-flight requests keep what they had. Health checks start for the new pools; the old
    /// pools' checkers stop when their last user drops them.
    pub fn reload(&self, router: Router) {
        for pool in router.pools() {
            health::spawn(&pool, self.dialer.clone());
        }
        self.router.store(Arc::new(router));
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
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Decrements the open-tunnel gauge on drop.
pub(crate) struct TunnelGuard<'a>(&'a AtomicUsize);

impl Drop for TunnelGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
