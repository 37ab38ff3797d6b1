//! `Proxy`: the state every connection shares, built once from a [`Config`].
//!
//! It owns the dialer and route (outbound), the pooled client for plain forwarding, the `Via`
//! identity, timeouts, and the shutdown machinery (task tracker and cancellation tokens).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::inbound::headers::Via;
use crate::outbound::forward::ForwardConnector;
use crate::outbound::tls::{self, TlsConfigError};
use crate::outbound::{Dialer, Resolve, Route, SystemResolver, TlsOptions};

/// Everything viaduct needs to run. `Config::default()` is the safe default: loopback, direct.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to accept clients. Default `127.0.0.1:8083` (loopback: nothing else can reach it).
    pub listen: SocketAddr,
    /// How to reach targets. Default: direct.
    pub route: Route,
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
            listen: SocketAddr::from(([127, 0, 0, 1], 8083)),
            route: Route::direct(),
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
pub enum ConfigError {
    #[error("via name \"{0}\" must be a single token (letters, digits, -._~ ...)")]
    ViaName(String),
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
}

/// The shared state of a running proxy.
pub struct Proxy {
    route: Arc<Route>,
    dialer: Dialer,
    client: Client<ForwardConnector, Incoming>,
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
    pub fn new(config: Config) -> Result<Arc<Self>, ConfigError> {
        Self::with_resolver(config, Arc::new(SystemResolver))
    }

    /// Builds a proxy with an injected resolver (tests, custom DNS).
    pub fn with_resolver(
        config: Config,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Arc<Self>, ConfigError> {
        let via = Via::new(&config.via_name)
            .ok_or_else(|| ConfigError::ViaName(config.via_name.clone()))?;
        let route = Arc::new(config.route);
        let dialer = Dialer::new(
            resolver,
            tls::connector(&config.tls)?,
            config.connect_timeout,
            via.value(http::Version::HTTP_11).clone(),
        );
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .set_host(false)
            .http1_preserve_header_case(true)
            .build(ForwardConnector::new(dialer.clone(), Arc::clone(&route)));
        Ok(Arc::new(Self {
            route,
            dialer,
            client,
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

    pub(crate) fn route(&self) -> &Route {
        &self.route
    }
    pub(crate) fn dialer(&self) -> &Dialer {
        &self.dialer
    }
    pub(crate) fn client(&self) -> &Client<ForwardConnector, Incoming> {
        &self.client
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
