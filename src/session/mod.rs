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

pub mod reach;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tracing::Instrument;

pub use self::reach::{Connector, Opening, Reached, reach};
use crate::failure::Failure;
use crate::pool::{MemberGuard, PoolError};
use crate::relay::{self, Peer};
use crate::routing::{Action, Router};
use crate::shutdown::Shutdown;
use crate::stream::BoxIo;
use crate::target::Target;
use crate::upstream::keepalive::KeepAlive;
use crate::upstream::{ConnectError, Dialer, Resolve};

/// Who sent a request, as far as routing and sessions care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Where the connection came from.
    pub addr: SocketAddr,
    /// The user name the client gave, without a `-session-ID` suffix. Not authenticated: it
    /// selects rules and sessions, it grants nothing.
    pub user: Option<String>,
    /// The sticky-session key: the `-session-ID` suffix of the user name, else the client IP.
    pub session: String,
}

impl Client {
    /// A client known by its address and, when it gave one, a user name (possibly carrying a
    /// `-session-ID` suffix).
    pub fn new(addr: SocketAddr, name: Option<String>) -> Self {
        match name {
            Some(name) => match name.rsplit_once("-session-") {
                Some((user, session)) if !session.is_empty() => Self {
                    addr,
                    user: Some(user.to_owned()),
                    session: session.to_owned(),
                },
                _ => Self {
                    addr,
                    user: Some(name),
                    session: addr.ip().to_string(),
                },
            },
            None => Self {
                addr,
                user: None,
                session: addr.ip().to_string(),
            },
        }
    }
}

/// Why a session could not reach its target.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("blocked by {0}")]
    Blocked(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl SessionError {
    /// Which failure this is (see [`crate::failure`]).
    pub fn failure(&self) -> Failure {
        match self {
            Self::Blocked(_) => Failure::Blocked,
            Self::Connect(e) => Failure::Connect(e.kind()),
            Self::Pool(e) => match e.last() {
                Some(last) => Failure::Connect(last.kind()),
                None => Failure::NoHealthyMember,
            },
        }
    }
}

/// A tunnel's two ends, once both are there.
pub struct Ends {
    pub client: Peer,
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
    resolver: Arc<dyn Resolve>,
    dialer: Dialer,
    keepalive: Arc<KeepAlive>,
    idle_timeout: Duration,
    shutdown: Shutdown,
    open_tunnels: AtomicUsize,
    zero_copy: AtomicU64,
}

impl Core {
    pub fn new(
        router: Router,
        resolver: Arc<dyn Resolve>,
        dialer: Dialer,
        keepalive: KeepAlive,
        idle_timeout: Duration,
        shutdown: Shutdown,
    ) -> Self {
        for pool in router.pools() {
            crate::pool::health::spawn(&pool, dialer.clone());
        }
        Self {
            router: ArcSwap::from_pointee(router),
            resolver,
            dialer,
            keepalive: Arc::new(keepalive),
            idle_timeout,
            shutdown,
            open_tunnels: AtomicUsize::new(0),
            zero_copy: AtomicU64::new(0),
        }
    }

    /// The routing in force now. A request keeps the snapshot it started with.
    pub fn router(&self) -> Arc<Router> {
        self.router.load_full()
    }

    /// Swaps in new routing (a config reload): new requests use it at once; open tunnels and
    /// in-flight requests keep what they had. Pool members that did not change keep their
    /// health state; health checks start for the new pools (the old pools' checkers stop when
    /// their last user drops them). Kept-alive connections of routes that changed are closed.
    pub fn reload(&self, router: Router) {
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

    pub fn keepalive(&self) -> &Arc<KeepAlive> {
        &self.keepalive
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Tunnels open right now.
    pub fn open_tunnels(&self) -> usize {
        self.open_tunnels.load(Ordering::Relaxed)
    }

    /// Tunnels relayed with splice(2) since start.
    pub fn zero_copy_tunnels(&self) -> u64 {
        self.zero_copy.load(Ordering::Relaxed)
    }

    /// Where `target` goes for `client` under the routing in force now; a `block` is an error.
    pub async fn decide(&self, target: &Target, client: &Client) -> Result<Action, SessionError> {
        let router = self.router();
        let decision = router
            .decide(target, client.user.as_deref(), &*self.resolver)
            .await;
        tracing::debug!(%target, action = %decision.action, reason = %decision.reason, "routing decision");
        match decision.action {
            Action::Block => Err(SessionError::Blocked(decision.reason.to_string())),
            action => Ok(action.clone()),
        }
    }

    /// Decides, then opens a tunnel to `target` (every hop's handshake done), failing over
    /// across a pool's members.
    pub async fn open_tunnel(
        &self,
        target: &Target,
        client: &Client,
    ) -> Result<Reached<BoxIo>, SessionError> {
        let action = self.decide(target, client).await?;
        let (dialer, to) = (self.dialer.clone(), target.clone());
        reach(
            &action,
            Some(&client.session),
            self.dialer.connect_timeout(),
            move |route: &crate::upstream::Route, left| -> Opening<BoxIo> {
                let (dialer, route, to) = (dialer.with_timeout(left), route.clone(), to.clone());
                Box::pin(async move { dialer.tunnel(&route, &to).await })
            },
        )
        .await
    }

    /// Runs a tunnel in its own task, tracked for shutdown: waits for both ends (`ends`),
    /// relays until done, and logs one access line with bytes each way, duration and why it
    /// ended. `hold` (the client connection's place under the limits) is kept until then.
    pub fn spawn_tunnel<F, H>(
        self: &Arc<Self>,
        kind: &'static str,
        status: u16,
        target: String,
        hold: H,
        ends: F,
    ) where
        F: Future<Output = Result<Ends, crate::relay::body::BoxError>> + Send + 'static,
        H: Send + 'static,
    {
        let core = Arc::clone(self);
        let task = async move {
            core.open_tunnels.fetch_add(1, Ordering::Relaxed);
            let _open = OpenTunnel(&core.open_tunnels);
            let _hold = hold;
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
            let r = relay::tunnel(
                client,
                early,
                remote,
                core.idle_timeout,
                core.shutdown.hard_stop(),
            )
            .await;
            if r.zero_copy {
                core.zero_copy.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(
                method = kind,
                %target,
                status,
                up = r.up,
                down = r.down,
                duration_ms = started.elapsed().as_millis() as u64,
                end = %r.end,
                zero_copy = r.zero_copy,
                "tunnel closed"
            );
        };
        self.shutdown.tracker().spawn(task.in_current_span());
    }

    /// The access line of one request that is not a tunnel.
    pub fn log_request(
        &self,
        client: &Client,
        method: &str,
        target: &dyn std::fmt::Display,
        status: u16,
        started: Instant,
    ) {
        tracing::info!(
            peer = %client.addr,
            %method,
            uri = %target,
            status,
            duration_ms = started.elapsed().as_millis() as u64,
            "request"
        );
    }
}

/// Decrements the open-tunnel gauge on drop.
struct OpenTunnel<'a>(&'a AtomicUsize);

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_key_from_user_suffix_else_ip() {
        let addr: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let c = Client::new(addr, Some("alice-session-42".into()));
        assert_eq!(
            (c.user.as_deref(), c.session.as_str()),
            (Some("alice"), "42")
        );
        let c = Client::new(addr, Some("bob".into()));
        assert_eq!(
            (c.user.as_deref(), c.session.as_str()),
            (Some("bob"), "192.0.2.9")
        );
        let c = Client::new(addr, None);
        assert_eq!((c.user, c.session.as_str()), (None, "192.0.2.9"));
    }
}
