//! The session core: what every listener (HTTP today; SOCKS5 and TLS next) does with a client's
//! request once it has parsed it, independent of the wire protocol.
//!
//! - who the client is ([`Client`]: address, user name, sticky-session key);
//! - the routing decision under the configuration in force ([`Core::decide`]);
//! - reaching the target through the seam ([`reach`]: direct, upstream, chain, or a pool with
//!   failover and health feedback);
//! - running a tunnel once both ends are there ([`Core::spawn_tunnel`]), tracked for shutdown;
//! - the accounting of each request and tunnel (open-tunnel and zero-copy counters, the access
//!   line).
//!
//! A listener turns its protocol into calls here and the [`SessionError`] it gets back into its
//! protocol's answer, through the one classifier in [`crate::failure`].

pub mod access_log;
pub mod bandwidth;
pub mod ledger;
pub mod reach;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tracing::Instrument;

use self::access_log::AccessLog;
pub use self::bandwidth::{Bandwidth, BandwidthLimits};
pub use self::ledger::{Finished, Ledger, RecentError, RouteCount};
pub use self::reach::{Connector, Opening, Reached, reach};
use crate::access::Destinations;
use crate::auth::{Auth, AuthError, AuthSettings, Grant};
use crate::failure::Failure;
use crate::metrics::Metrics;
use crate::pool::{MemberGuard, PoolError};
use crate::relay::{self, ClientEnd};
use crate::routing::{Action, Router};
use crate::shutdown::Shutdown;
use crate::stream::BoxIo;
use crate::target::Target;
use crate::upstream::direct::check_destination;
use crate::upstream::trace::Tracer;

/// What opened a tunnel: how the access line and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    /// HTTP CONNECT (on HTTP/1.1 or an HTTP/2 stream).
    Connect,
    /// A forwarded request the origin switched to another protocol (WebSocket).
    Upgrade,
    Socks5,
    Socks4,
}

impl TunnelKind {
    /// The `protocol` label of `viaduct_requests_total` and the JSON record.
    pub fn protocol(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Upgrade => "http",
            Self::Socks5 => "socks5",
            Self::Socks4 => "socks4",
        }
    }

    /// The `method` of the access line.
    pub fn method(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::Upgrade => "UPGRADE",
            Self::Socks5 => "socks5",
            Self::Socks4 => "socks4",
        }
    }
}

/// Where the session core reports: metrics and the access log.
#[derive(Debug, Default)]
pub struct Observe {
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
}
use crate::upstream::keepalive::KeepAlive;
use crate::upstream::{ConnectError, Dialer, Resolve};

/// Who may use the proxy and where they may go: the part of the configuration, besides
/// routing, that a reload replaces.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `[auth]`; `None`: clients are not asked for credentials.
    pub auth: Option<AuthSettings>,
    pub destinations: Destinations,
    /// Bandwidth per user and per client address.
    pub bandwidth: BandwidthLimits,
}

/// Who sent a request, as far as routing and sessions care.
#[derive(Debug, Clone)]
pub struct Client {
    /// Where the connection came from.
    pub addr: SocketAddr,
    /// The authenticated user (never merely a claimed name): drives `users` rules and the
    /// access line. `None` without `[auth]`.
    pub user: Option<String>,
    /// The sticky-session key: the `-session-ID` suffix of the user name, else the client IP.
    pub session: Arc<str>,
    /// The client named its session (a `-session-ID` suffix), rather than it being its IP.
    pub session_named: bool,
    /// The authenticated user's place (cap, revocation), held by the request and its tunnel.
    pub grant: Option<Arc<Grant>>,
    /// What routing and dialing did for this request.
    pub trail: Arc<Trail>,
}

/// What routing and dialing did for one request: the route and member chosen, the dial's
/// steps and time. Read for the access record and the metrics.
#[derive(Debug, Default)]
pub struct Trail {
    pub(crate) chosen: std::sync::Mutex<Chosen>,
    tracer: Tracer,
    /// Body bytes of a plain request, each way (tunnels count theirs in the relay).
    up: AtomicU64,
    down: AtomicU64,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Chosen {
    route: Option<String>,
    member: Option<String>,
    dial: Option<Duration>,
}

impl Trail {
    /// The route's label (`direct`, an upstream or pool name), `none` before routing.
    pub fn route(&self) -> String {
        self.chosen
            .lock()
            .ok()
            .and_then(|c| c.route.clone())
            .unwrap_or_else(|| "none".into())
    }

    fn set_route(&self, route: &str) {
        if let Ok(mut c) = self.chosen.lock() {
            c.route = Some(route.to_owned());
        }
    }

    /// Records a finished dial: the member it went through and how long it took.
    fn dialed(&self, member: Option<&str>, took: Duration) {
        if let Ok(mut c) = self.chosen.lock() {
            c.member = member.map(str::to_owned);
            c.dial = Some(took);
        }
    }

    /// Where the dialer records its steps.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// Counts body bytes of a plain request: `up` from the client, else to it.
    pub fn carried(&self, up: bool, n: usize) {
        let counter = if up { &self.up } else { &self.down };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn bytes(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// Splits `alice-session-42` into `alice` and `42`; a name without a suffix is all user.
pub fn split_session(name: &str) -> (&str, Option<&str>) {
    match name.rsplit_once("-session-") {
        Some((user, session)) if !session.is_empty() && !user.is_empty() => (user, Some(session)),
        _ => (name, None),
    }
}

impl Client {
    /// A client not (yet) authenticated, known by its address and the name it claimed: the
    /// name's `-session-ID` suffix picks the sticky key (a sticky key grants nothing); the name
    /// itself selects nothing.
    pub fn new(addr: SocketAddr, claimed: Option<&str>) -> Self {
        let named = claimed.and_then(|name| split_session(name).1);
        let session = named.map_or_else(|| addr.ip().to_string().into(), Arc::from);
        Self {
            addr,
            user: None,
            session,
            session_named: named.is_some(),
            grant: None,
            trail: Arc::default(),
        }
    }
}

/// Why a session could not reach its target.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("blocked by {0}")]
    Blocked(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The PAC script gave no usable answer (threw, looped, answered nothing usable).
    #[error(transparent)]
    Pac(#[from] crate::routing::autoconfig::PacError),
}

impl SessionError {
    /// Which failure this is (see [`crate::failure`]).
    pub fn failure(&self) -> Failure {
        match self {
            Self::Blocked(_) => Failure::Blocked,
            Self::Auth(AuthError::Missing { .. } | AuthError::Wrong { .. }) => {
                Failure::AuthRequired
            }
            Self::Auth(AuthError::Throttled { .. }) => Failure::AuthThrottled,
            Self::Auth(AuthError::UserLimit { .. } | AuthError::Busy { .. }) => {
                Failure::LimitReached
            }
            Self::Connect(e) => Failure::Connect(e.kind()),
            Self::Pool(e) => match e.last() {
                Some(last) => Failure::Connect(last.kind()),
                None => Failure::NoHealthyMember,
            },
            Self::Pac(_) => Failure::Internal,
        }
    }
}

/// A tunnel's two ends, once both are there.
pub struct Ends {
    pub client: ClientEnd,
    /// Client bytes the listener read before handing the connection over.
    pub early: Bytes,
    pub target: BoxIo,
    /// The pool member the tunnel counts against (least-connections) while it lives.
    pub member: Option<MemberGuard>,
}

/// The state every session shares: routing in force, the dialer and kept-alive connections,
/// tunnel bookkeeping.
pub struct Core {
    router: ArcSwap<Router>,
    auth: Auth,
    /// Metrics, status-page counts, the access record.
    ledger: Ledger,
    resolver: Arc<dyn Resolve>,
    dialer: Dialer,
    /// Swapped at a reload: open flows keep the buckets they hold.
    bandwidth: ArcSwap<Bandwidth>,
    keepalive: Arc<KeepAlive>,
    idle_timeout: Duration,
    shutdown: Shutdown,
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        router: Router,
        policy: Policy,
        observe: Observe,
        resolver: Arc<dyn Resolve>,
        dialer: Dialer,
        keepalive: KeepAlive,
        idle_timeout: Duration,
        shutdown: Shutdown,
    ) -> Self {
        for pool in router.pools() {
            crate::pool::health::spawn(&pool, dialer.clone());
        }
        dialer.set_policy(policy.destinations);
        Self {
            router: ArcSwap::from_pointee(router),
            auth: Auth::new(policy.auth, shutdown.hard_stop().clone()),
            ledger: Ledger::new(observe),
            resolver,
            dialer,
            bandwidth: ArcSwap::from_pointee(Bandwidth::new(policy.bandwidth)),
            keepalive: Arc::new(keepalive),
            idle_timeout,
            shutdown,
        }
    }

    /// The routing in force now. A request keeps the snapshot it started with.
    pub fn router(&self) -> Arc<Router> {
        self.router.load_full()
    }

    /// Swaps in new routing and access policy (a config reload): new requests use them at
    /// once; open tunnels and in-flight requests keep what they had, except the tunnels of
    /// users the new users file removed or whose password it changed, which are closed now.
    /// Pool members that did not change keep their health state; health checks start for the
    /// new pools (the old pools' checkers stop when their last user drops them). Kept-alive
    /// connections of routes that changed are closed.
    pub fn reload(&self, router: Router, policy: Policy) {
        self.dialer.set_policy(policy.destinations);
        self.bandwidth
            .store(Arc::new(Bandwidth::new(policy.bandwidth)));
        let revoked = self.auth.reload(policy.auth);
        if revoked > 0 {
            tracing::info!(
                users = revoked,
                "closed the tunnels of removed or changed users"
            );
        }
        let old = self.router.load();
        let old_pools = old.pools();
        for pool in router.pools() {
            if let Some(prev) = old_pools.iter().find(|p| p.name == pool.name) {
                pool.inherit(prev);
            }
            crate::pool::health::spawn(&pool, self.dialer.clone());
        }
        // Rotated credentials or moved upstreams must not carry further requests.
        self.keepalive.retain_routes(&router.route_ids());
        self.router.store(Arc::new(router));
    }

    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// The bandwidth limits `client`'s next flow (a tunnel, a request and its response) obeys.
    pub fn throttles(&self, client: &Client) -> crate::rate::Throttles {
        self.bandwidth
            .load()
            .throttles(client.user.as_deref(), client.addr.ip())
    }

    pub fn keepalive(&self) -> &Arc<KeepAlive> {
        &self.keepalive
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Tunnels open right now.
    pub fn open_tunnels(&self) -> usize {
        self.ledger.open_tunnels()
    }

    /// Tunnels relayed with splice(2) since start.
    pub fn zero_copy_tunnels(&self) -> u64 {
        self.ledger.zero_copy_tunnels()
    }

    /// Metrics, status-page counts and the access record.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Lets a client in: with `[auth]`, `credentials` (user name, possibly with a
    /// `-session-ID` suffix, and password) must be right; without, the claimed name only picks
    /// the sticky key.
    pub async fn authenticate(
        &self,
        addr: SocketAddr,
        credentials: Option<(&str, &str)>,
    ) -> Result<Client, SessionError> {
        let mut client = Client::new(addr, credentials.map(|(name, _)| name));
        let presented = credentials.map(|(name, pass)| (split_session(name).0, pass));
        let granted = self.auth.authenticate(addr.ip(), presented).await;
        match &granted {
            Err(AuthError::Throttled { .. }) => self.metrics().limit("auth_failures_per_ip"),
            Err(AuthError::Busy { .. }) => self.metrics().limit("auth_verifiers"),
            Err(AuthError::UserLimit { .. }) => self.metrics().limit("max_connections_per_user"),
            _ => {}
        }
        if let Some(grant) = granted? {
            client.user = Some(grant.user().to_owned());
            client.grant = Some(Arc::new(grant));
        }
        Ok(client)
    }

    /// Where a datagram for `target` goes when relayed for `client` (SOCKS5 UDP ASSOCIATE):
    /// only routes that go direct carry datagrams; the name is resolved once and the address
    /// checked against the destination policy, as a direct dial's would be.
    ///
    /// # Errors
    /// A non-direct route or block ([`SessionError::Blocked`]), a name that does not resolve,
    /// or a denied address.
    pub async fn udp_destination(
        &self,
        target: &Target,
        client: &Client,
    ) -> Result<SocketAddr, SessionError> {
        self.check_port(target)?;
        let action = self.decide(target, client, true).await?;
        if !action.is_plain_direct() {
            return Err(SessionError::Blocked(format!(
                "UDP goes direct only, from the host's own address ({target} routes via {})",
                action
            )));
        }
        let peer = format!("target {target}");
        let addr = match &target.host {
            crate::target::Host::Ip(ip) => SocketAddr::new(*ip, target.port),
            crate::target::Host::Name(name) => {
                // The relay's socket has the family of the client's connection: an address of
                // that family, when the name has one.
                let v4 = client.addr.is_ipv4();
                self.dialer
                    .resolve_one(name, target.port, true, Some(v4))
                    .await?
            }
        };
        check_destination(&self.dialer.policy(), &peer, addr.ip())?;
        Ok(addr)
    }

    /// `[access] connect_ports`: the ports tunnels and datagrams may reach.
    fn check_port(&self, target: &Target) -> Result<(), SessionError> {
        if self.dialer.policy().permits_port(target.port) {
            return Ok(());
        }
        Err(SessionError::Blocked(format!(
            "[access] connect_ports (port {} is not listed)",
            target.port
        )))
    }

    /// What ends `client`'s long-lived work: its access being revoked, or the hard stop.
    pub fn stop_for(&self, client: &Client) -> tokio_util::sync::CancellationToken {
        client.grant.as_ref().map_or_else(
            || self.shutdown.hard_stop().clone(),
            |g| g.revoked().clone(),
        )
    }

    /// Whether datagrams can be relayed at all: the default route goes direct.
    pub fn udp_possible(&self) -> bool {
        self.router().default.is_plain_direct()
    }

    /// Client authentication (users in force, its counters).
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Where `target` goes for `client` under the routing in force now; a `block` is an error,
    /// and so is a route through an upstream to an address the access policy refuses (an
    /// address literal, or a name resolved here for a `resolve = true` rule).
    /// The resolver every dial (and the PAC script's DNS helpers) uses.
    pub fn resolver(&self) -> &Arc<dyn Resolve> {
        &self.resolver
    }

    pub async fn decide(
        &self,
        target: &Target,
        client: &Client,
        tunnel: bool,
    ) -> Result<Action, SessionError> {
        let router = self.router();
        let decision = router
            .decide(target, client.user.as_deref(), &*self.resolver)
            .await;
        if decision.reason == crate::routing::Reason::Default
            && let Some(pac) = &router.pac
        {
            // No bypass entry or rule matched: the PAC script decides.
            let decided = pac.decide(target, tunnel).await?;
            tracing::debug!(%target, pac = %decided.raw, action = %decided.action, "routing decision (pac)");
            client.trail.set_route(decided.action.label());
            return Ok(decided.action.clone());
        }
        tracing::debug!(%target, action = %decision.action, reason = %decision.reason, "routing decision");
        client.trail.set_route(decision.action.label());
        match decision.action {
            Action::Block => Err(SessionError::Blocked(decision.reason.to_string())),
            action @ Action::Direct(_) => Ok(action.clone()),
            action => {
                let policy = self.dialer.policy();
                for ip in &decision.resolved {
                    check_destination(&policy, &format!("target {target}"), *ip)?;
                }
                Ok(action.clone())
            }
        }
    }

    /// Decides, then opens a tunnel to `target` (every hop's handshake done), failing over
    /// across a pool's members.
    pub async fn open_tunnel(
        &self,
        target: &Target,
        client: &Client,
    ) -> Result<Reached<BoxIo>, SessionError> {
        self.check_port(target)?;
        let action = self.decide(target, client, true).await?;
        self.reach(&action, target, client, |dialer, route, to| {
            Box::pin(async move { dialer.tunnel(&route, &to).await })
        })
        .await
    }

    /// Reaches `target` along `action` for `client`: the one way every listener's request
    /// leaves. Each attempt gets the dialer for this session (sticky source address, traced
    /// into the client's trail, within what is left of the connect timeout) and opens what
    /// the caller needs along the route (a tunnel, a forwarded request's connection); a pool
    /// fails over across members. The dial is recorded (trail, histograms).
    pub async fn reach<T, F>(
        &self,
        action: &Action,
        target: &Target,
        client: &Client,
        mut open: F,
    ) -> Result<Reached<T>, SessionError>
    where
        F: FnMut(Dialer, crate::upstream::Route, Target) -> Opening<T> + Send,
    {
        let tracer = client.trail.tracer().clone();
        let dialer = self
            .dialer
            .traced(tracer.clone())
            .for_session(Arc::clone(&client.session), client.session_named);
        let started = Instant::now();
        let reached = reach(
            action,
            Some(&client.session),
            self.dialer.connect_timeout(),
            |route: &crate::upstream::Route, left| -> Opening<T> {
                // Only the attempt that succeeds is kept.
                tracer.reset();
                open(dialer.with_timeout(left), route.clone(), target.clone())
            },
        )
        .await?;
        self.dialed(
            client,
            action.label(),
            reached.member.as_ref(),
            started.elapsed(),
        );
        Ok(reached)
    }

    /// Records a successful dial for `client`: the trail, and the dial and hop histograms.
    /// A request that went out on a kept-alive connection dialed nothing: only the member is
    /// noted.
    fn dialed(&self, client: &Client, route: &str, member: Option<&MemberGuard>, took: Duration) {
        let (dialed, hops, _) = client.trail.tracer().summary();
        if !dialed {
            if let Ok(mut c) = client.trail.chosen.lock() {
                c.member = member.map(|m| m.name().to_owned());
            }
            return;
        }
        client.trail.dialed(member.map(MemberGuard::name), took);
        // Hops are the member's (an upstream) when a pool chose one.
        self.metrics()
            .dial(member.map_or(route, MemberGuard::name), took, &hops);
    }

    /// The metrics the data path records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.ledger.metrics()
    }

    /// Runs a tunnel in its own task, tracked for shutdown: waits for both ends (`ends`),
    /// relays until done, and logs one access line with bytes each way, duration and why it
    /// ended. `hold` (the client connection's place under the limits) and the client's grant
    /// are kept until then; the tunnel is cut at hard stop or when the user's access is
    /// revoked.
    pub fn spawn_tunnel<F, H>(
        self: &Arc<Self>,
        kind: TunnelKind,
        status: u16,
        target: String,
        client: &Client,
        hold: H,
        ends: F,
    ) where
        F: Future<Output = Result<Ends, crate::BoxError>> + Send + 'static,
        H: Send + 'static,
    {
        let core = Arc::clone(self);
        let grant = client.grant.clone();
        let (protocol, method) = (kind.protocol(), kind.method());
        self.ledger
            .tunnel_granted(protocol, status, &client.trail.route());
        let who = client.clone();
        let limits = self.throttles(client);
        let task = async move {
            let _open = core.ledger.tunnel_running();
            let _hold = hold;
            let stop = grant
                .as_ref()
                .map_or_else(|| core.shutdown.hard_stop(), |g| g.revoked());
            let started = Instant::now();
            let Ends {
                client,
                early,
                target: remote,
                member: _member,
            } = match ends.await {
                Ok(ends) => ends,
                Err(e) => {
                    tracing::debug!(%target, error = %e, "client went away before the tunnel started");
                    return;
                }
            };
            tracing::debug!(%target, "tunnel established");
            let r = relay::tunnel(client, early, remote, core.idle_timeout, stop, &limits).await;
            let finished = Finished {
                client: &who,
                protocol,
                method,
                target: &target,
                status,
                error: None,
                started,
            };
            core.ledger.tunnel_closed(&finished, &r);
        };
        self.shutdown.tracker().spawn(task.in_current_span());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_key_from_user_suffix_else_ip() {
        let addr: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let c = Client::new(addr, Some("alice-session-42"));
        // A claimed name selects nothing; only its suffix picks the sticky key.
        assert_eq!((c.user.as_deref(), &*c.session), (None, "42"));
        assert!(c.session_named);
        let c = Client::new(addr, Some("bob"));
        assert_eq!((&*c.session, c.session_named), ("192.0.2.9", false));
        let c = Client::new(addr, None);
        assert_eq!((&*c.session, c.session_named), ("192.0.2.9", false));
        assert_eq!(split_session("alice-session-42"), ("alice", Some("42")));
        assert_eq!(split_session("alice-session-"), ("alice-session-", None));
        assert_eq!(split_session("-session-7"), ("-session-7", None));
    }
}
