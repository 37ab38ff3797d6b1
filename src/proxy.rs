//! `Proxy`: a running viaduct, composed from its parts and built once from a [`Config`].
//!
//! The parts are separate concerns: the session core (routing in force, dialing, kept-alive
//! connections, tunnels and their counters), admission (connection caps), shutdown, and the
//! listener protocol (HTTP). This module only wires them together and serves listeners.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::admin::{Admin, RunInfo};
use crate::config::Config;
use crate::failure::Failure;
use crate::http::Http;
use crate::http::headers::Via;
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::server::{self, Admission, Admitted, ListenKind, Protocol, ProxyProtocol};
use crate::session::access_log::AccessLog;
use crate::session::{BandwidthLimits, Core, Observe, Policy};
use crate::shutdown::Shutdown;
use crate::socks::Socks;
use crate::upstream::keepalive::KeepAlive;
use crate::upstream::tls::{self, TlsConfigError};
use crate::upstream::{Dialer, DnsResolver, Resolve};

/// Why a [`Config`] cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("via name \"{0}\" must be a single token (letters, digits, -._~ ...)")]
    ViaName(String),
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    #[error("{0}")]
    Pac(String),
}

/// The configured PAC loaded into an engine (none when none is configured), its URL kept
/// fresh by a background task while the handle lives.
fn load_pac(
    pac: Option<&crate::routing::autoconfig::PacSource>,
    resolver: &Arc<dyn Resolve>,
) -> Result<Option<Arc<crate::routing::autoconfig::PacHandle>>, BuildError> {
    let Some(src) = pac else {
        return Ok(None);
    };
    let natives = crate::routing::autoconfig::engine::Natives::system(
        Arc::clone(resolver),
        tokio::runtime::Handle::current(),
    );
    let handle = crate::routing::autoconfig::PacHandle::new(src.clone(), natives)
        .map(Arc::new)
        .map_err(BuildError::Pac)?;
    if let Some(e) = &src.fetch_error {
        tracing::warn!(error = %e, "PAC not loaded yet; requests that need it get 502 until it loads");
    }
    handle.refresh(src.refresh);
    Ok(Some(handle))
}

/// Our `Via` and the dialer `config` asks for (routes' TLS trust, connect timeout,
/// destination policy): what the proxy dials with, and what `viaduct probe` dials with.
pub fn dialer(config: &Config, resolver: Arc<dyn Resolve>) -> Result<(Via, Dialer), BuildError> {
    let via = Via::new(&config.settings.via_name)
        .ok_or_else(|| BuildError::ViaName(config.settings.via_name.clone()))?;
    let dialer = Dialer::new(
        resolver,
        tls::connector(&config.tls)?,
        config.settings.connect_timeout,
        via.value(http::Version::HTTP_11).clone(),
    );
    dialer.set_policy(config.access.destinations.clone());
    Ok((via, dialer))
}

/// A running proxy's parts.
pub struct Proxy {
    core: Arc<Core>,
    http: Arc<Http>,
    socks: Arc<Socks>,
    admission: Arc<Admission>,
    shutdown: Shutdown,
    info: Arc<RunInfo>,
    admin: Option<Arc<Admin>>,
    proxy_protocol: Option<Arc<ProxyProtocol>>,
    /// The `https://` listeners' certificate, swapped at a reload.
    tls: Arc<ArcSwapOption<TlsAcceptor>>,
}

/// The part of `config` the session core replaces at a reload: users, destinations,
/// bandwidth.
fn policy(
    auth: Option<crate::auth::AuthSettings>,
    destinations: crate::access::Destinations,
    limits: &crate::config::Limits,
) -> Policy {
    Policy {
        auth,
        destinations,
        bandwidth: BandwidthLimits {
            per_user: limits.bandwidth_per_user.map(|b| b.0),
            per_ip: limits.bandwidth_per_ip.map(|b| b.0),
            by_user: limits
                .user_bandwidth
                .iter()
                .map(|(u, b)| (u.clone(), b.map(|b| b.0)))
                .collect(),
        },
    }
}

impl Proxy {
    /// Builds a proxy that resolves names with the system's DNS configuration, through a
    /// cache that honours TTLs.
    pub fn new(config: Config) -> Result<Arc<Self>, BuildError> {
        Self::with_resolver(config, DnsResolver::system_or_fallback())
    }

    /// Builds a proxy with an injected resolver (tests, custom DNS).
    pub fn with_resolver(
        config: Config,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Arc<Self>, BuildError> {
        let (via, dialer) = dialer(&config, Arc::clone(&resolver))?;
        let shutdown = Shutdown::new(config.settings.shutdown_grace);
        let metrics = Arc::new(Metrics::default());
        let keepalive = KeepAlive::new(
            config.limits.max_idle_upstream,
            config.limits.upstream_idle_timeout,
        );
        let mut router = config.router;
        router.pac = load_pac(config.pac.as_ref(), &resolver)?;
        let core = Arc::new(Core::new(
            router,
            policy(config.auth, config.access.destinations, &config.limits),
            Observe {
                metrics: Arc::clone(&metrics),
                access_log: AccessLog::new(
                    config.settings.access_log,
                    config.settings.access_log_file.clone(),
                ),
            },
            resolver,
            dialer,
            keepalive,
            config.settings.idle_timeout,
            shutdown.clone(),
        ));
        let admission = Arc::new(Admission::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
            config.access.clients,
            Arc::clone(&metrics),
        ));
        admission.set_new_connections(
            config
                .limits
                .new_connections_per_ip
                .map(|r| (r.count, r.per)),
        );
        let socks = Arc::new(Socks::new(Arc::clone(&core), &config.limits));
        let info = Arc::new(RunInfo::new(config.config_file.clone()));
        let admin = config.admin.map(|settings| {
            Arc::new(Admin::new(
                Arc::clone(&core),
                Arc::clone(&admission),
                Arc::clone(&info),
                settings,
            ))
        });
        let http = Arc::new(Http::new(
            Arc::clone(&core),
            via,
            config.limits,
            config.settings.response_timeout,
            shutdown.clone(),
        ));
        Ok(Arc::new(Self {
            core,
            http,
            socks,
            admission,
            shutdown,
            info,
            admin,
            proxy_protocol: config.proxy_protocol.map(Arc::new),
            tls: Arc::new(ArcSwapOption::from(
                config.tls_listener.map(|c| Arc::new(TlsAcceptor::from(c))),
            )),
        }))
    }

    /// The session core.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Tunnels relayed with splice(2) since start.
    pub fn zero_copy_tunnels(&self) -> u64 {
        self.core.zero_copy_tunnels()
    }

    /// Tunnels (CONNECT and upgraded requests) open right now.
    pub fn open_tunnels(&self) -> usize {
        self.core.open_tunnels()
    }

    /// The routing in force now.
    pub fn router(&self) -> Arc<Router> {
        self.core.router()
    }

    /// Puts a reloaded configuration in force: routing, users, who may connect and where they
    /// may go (see [`Core::reload`]), bandwidth and connection-rate limits. Listen addresses,
    /// the other limits and timeouts stay as started.
    pub fn reload(&self, config: Config) {
        self.core.metrics().reload(true);
        self.info.reloaded(Ok(()));
        self.core.ledger().reopen_access_log();
        self.admission.set_clients(config.access.clients);
        self.admission.set_new_connections(
            config
                .limits
                .new_connections_per_ip
                .map(|r| (r.count, r.per)),
        );
        if let Some(tls) = config.tls_listener {
            self.tls.store(Some(Arc::new(TlsAcceptor::from(tls))));
        }
        let mut router = config.router;
        router.pac = match load_pac(config.pac.as_ref(), self.core.resolver()) {
            Ok(p) => p,
            Err(e) => {
                // The previous good script stays (a PAC server serving garbage must not take
                // routing down); the rest of the configuration goes in.
                tracing::error!(error = %e, "PAC not reloaded; keeping the previous script");
                self.core.router().pac.clone()
            }
        };
        self.core.reload(
            router,
            policy(config.auth, config.access.destinations, &config.limits),
        );
    }

    /// Records a rejected reload (the status page and metrics show it); the access log file is
    /// reopened all the same (logrotate sends SIGHUP whatever the config says).
    pub fn reload_rejected(&self, error: &str) {
        self.core.metrics().reload(false);
        self.info.reloaded(Err(error.to_owned()));
        self.core.ledger().reopen_access_log();
    }

    /// Serves the admin pages on `listener` (when the configuration has an admin listener)
    /// until shutdown begins. Returns false when there is no admin configured.
    pub fn spawn_admin(&self, listener: TcpListener) -> bool {
        let Some(admin) = &self.admin else {
            return false;
        };
        tokio::spawn(crate::admin::serve(
            listener,
            Arc::clone(admin),
            self.shutdown.clone(),
        ));
        true
    }

    /// Why the proxy is not ready (see `/readyz`), `None` when it is or has no admin.
    pub fn not_ready(&self) -> Option<String> {
        self.admin.as_ref().and_then(|a| a.not_ready())
    }

    /// Kept-alive upstream connections idle right now.
    pub fn idle_upstream_connections(&self) -> usize {
        self.core.keepalive().idle_count()
    }
}

/// Serves clients on `listener` (HTTP and SOCKS on one port) until `shutdown` resolves, then
/// drains.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
    serve_all(vec![(listener, ListenKind::Mixed)], proxy, shutdown).await;
}

/// Serves clients on every listener, each speaking its kind, until `shutdown` resolves; then
/// stops accepting, lets open connections and tunnels finish within the grace period, and
/// cuts what is left.
pub async fn serve_all(
    listeners: Vec<(TcpListener, ListenKind)>,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) {
    for (l, _) in &listeners {
        if let Ok(addr) = l.local_addr() {
            proxy.core.dialer().own_listeners().add(addr);
            if let Ok(mut bound) = proxy.info.listeners.lock() {
                bound.push(addr);
            }
        }
    }
    let listeners = listeners
        .into_iter()
        .map(|(l, kind)| {
            let protocol = Arc::new(Listener {
                kind,
                http: Arc::clone(&proxy.http),
                socks: Arc::clone(&proxy.socks),
                tls: Arc::clone(&proxy.tls),
            });
            (l, protocol)
        })
        .collect();
    server::accept_all(
        listeners,
        Arc::clone(&proxy.admission),
        proxy.proxy_protocol.clone(),
        &proxy.shutdown,
        shutdown,
    )
    .await;
    proxy.shutdown.drain().await;
}

/// A fatal TLS alert record (RFC 8446 6, sent in the clear before any handshake):
/// `access_denied` for a client that may not connect, `internal_error` for a limit (TLS has no
/// "busy").
fn tls_alert(failure: Failure) -> [u8; 7] {
    const ACCESS_DENIED: u8 = 49;
    const INTERNAL_ERROR: u8 = 80;
    let description = match failure {
        Failure::ClientDenied => ACCESS_DENIED,
        _ => INTERNAL_ERROR,
    };
    // ContentType alert (21), legacy version TLS 1.2, length 2, level fatal (2).
    [21, 3, 3, 0, 2, 2, description]
}

/// One listener's protocol: HTTP, SOCKS, or both on one port told apart by the first byte
/// (0x05 and 0x04 are SOCKS versions; an HTTP request starts with a method's letter).
struct Listener {
    kind: ListenKind,
    http: Arc<Http>,
    socks: Arc<Socks>,
    tls: Arc<ArcSwapOption<TlsAcceptor>>,
}

impl Protocol for Listener {
    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        admitted: Admitted,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let socks = match self.kind {
                ListenKind::Https => {
                    let Some(acceptor) = self.tls.load_full() else {
                        return;
                    };
                    let wait = self.http.limits().header_read_timeout;
                    match tokio::time::timeout(wait, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => Arc::clone(&self.http).serve_tls(tls, peer, admitted).await,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake with the client failed")
                        }
                        Err(_) => tracing::debug!("no TLS handshake in time"),
                    }
                    return;
                }
                ListenKind::Http => false,
                ListenKind::Socks => true,
                ListenKind::Mixed => {
                    // Peek, not read: whichever protocol it is reads the byte itself.
                    let mut first = [0u8; 1];
                    let wait = self.http.limits().header_read_timeout;
                    match tokio::time::timeout(wait, stream.peek(&mut first)).await {
                        Ok(Ok(1)) => matches!(first[0], 4 | 5),
                        Ok(Ok(_)) | Ok(Err(_)) => false,
                        Err(_) => {
                            self.http.refuse(
                                &stream,
                                Failure::ClientTimeout,
                                &format!("no request within {}", humantime::format_duration(wait)),
                                None,
                            );
                            return;
                        }
                    }
                }
            };
            if socks {
                Arc::clone(&self.socks).serve(stream, peer, admitted).await;
            } else {
                Arc::clone(&self.http).serve(stream, peer, admitted).await;
            }
        })
    }

    fn refuse(
        &self,
        stream: &TcpStream,
        failure: Failure,
        details: &str,
        retry_after: Option<std::time::Duration>,
    ) {
        if self.kind == ListenKind::Https {
            // Plain text in a TLS stream reads as garbage ("wrong version number"); a TLS
            // alert is what a TLS client understands, without paying for a handshake.
            tracing::debug!(details, "refused on the TLS listener: alert");
            let _ = stream.try_write(&tls_alert(failure));
            return;
        }
        // Before the first byte nobody knows the protocol: HTTP's answer is the readable one.
        self.http.refuse(stream, failure, details, retry_after);
    }
}
