//! Outbound: how viaduct leaves. The one seam that CONNECT tunnels and plain forwarding share.
//!
//! A [`Route`] says how to reach a target: directly, or through a chain of upstream [`Hop`]s.
//! The [`Dialer`] walks the route: TCP to the first hop (or the target), then each hop's
//! handshake toward the next, all under one connect timeout. It hands back a [`BoxIo`] whose
//! first bytes are whatever the last handshake read past its answer (see [`crate::stream::Prefixed`]).
//!
//! - [`Dialer::tunnel`] ends at the target: used by CONNECT and by upgraded requests.
//! - [`Dialer::forward`] ends where plain HTTP requests should be written: at the target
//!   (origin-form), or inside a single HTTP(S) upstream that takes absolute-form requests.
//!
//! Hops compose: each hop's handshake (HTTP CONNECT in [`http_connect`], SOCKS in [`socks`],
//! preceded by TLS in [`tls`] for `https://` hops) runs over the stream the previous hop
//! opened, so any kind can follow any other.

pub mod bind;
pub mod direct;
pub mod error;
pub mod eyeballs;
pub mod hop;
pub mod http_connect;
pub mod keepalive;
pub mod proxy_auth;

pub mod resolve;
pub mod socks;
pub mod tls;
pub mod trace;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio_rustls::TlsConnector;

pub use self::bind::{Bind, BindMode, SessionKey, Source};
pub use self::error::{ConnectError, ConnectErrorKind, SocksReply};
pub use self::hop::{Credentials, Hop, HopKind, HopParseError, parse_chain, redact};
pub use self::resolve::{DnsResolver, Resolve, SystemResolver};
use self::socks::SocksTarget;
pub use self::tls::TlsOptions;
use crate::access::Destinations;
pub use crate::stream::BoxIo;
use crate::target::{Host, Target};

/// How to reach targets: an ordered list of upstream hops; empty means direct.
/// Cheap to clone: the hops and the name are shared.
#[derive(Debug, Clone)]
pub struct Route {
    hops: Arc<[Hop]>,
    /// `direct` or `http proxy a:1 -> socks5h proxy b:2`: no credentials. Computed once.
    name: Arc<str>,
    /// Identifies the route with everything that makes it (kinds, addresses, credentials): a
    /// keyed digest, so kept-alive connections of two accounts on one proxy never mix and a
    /// secret never sits in a map key that could be printed.
    id: u64,
    /// Where the route's first TCP connection (to the target, or to the first hop) leaves from.
    bind: Option<Arc<Bind>>,
}

impl Default for Route {
    fn default() -> Self {
        Self::via(Vec::new())
    }
}

impl Route {
    /// Goes straight to the target.
    pub fn direct() -> Self {
        Self::default()
    }

    /// Goes through `hops`, first to last.
    pub fn via(hops: Vec<Hop>) -> Self {
        let name = if hops.is_empty() {
            "direct".to_owned()
        } else {
            hops.iter()
                .map(Hop::to_string)
                .collect::<Vec<_>>()
                .join(" -> ")
        };
        let id = identity(&name, &hops);
        Self {
            hops: hops.into(),
            name: name.into(),
            id,
            bind: None,
        }
    }

    /// The same route, its first connection leaving from `bind`'s addresses.
    pub fn with_bind(&self, bind: Arc<Bind>) -> Self {
        let name = format!("{} from {}", self.name, bind.net());
        let id = identity(&name, &self.hops);
        Self {
            hops: Arc::clone(&self.hops),
            name: name.into(),
            id,
            bind: Some(bind),
        }
    }

    /// The same route, its HTTP hops authenticating to their proxies with `auth` (a policy,
    /// and a Kerberos service name when set). Each hop learns its proxy's schemes on its own.
    pub fn with_auth(&self, policy: proxy_auth::AuthPolicy, spn: Option<String>) -> Self {
        let hops: Vec<Hop> = self
            .hops
            .iter()
            .map(|h| {
                let mut h = h.clone();
                if h.kind.is_http() {
                    h = h.with_auth(proxy_auth::HopAuth::new(policy, spn.clone()));
                }
                h
            })
            .collect();
        Self {
            hops: hops.into(),
            ..self.clone()
        }
    }

    /// Where the route's connections leave from, when set.
    pub fn bind(&self) -> Option<&Arc<Bind>> {
        self.bind.as_ref()
    }

    /// The route's name (as displayed), shared.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The route's identity, credentials included (see the field).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Parses `--upstream`: one hop URL, or several separated by commas (first to last).
    pub fn parse(s: &str) -> Result<Self, HopParseError> {
        parse_chain(s).map(Self::via)
    }

    pub fn hops(&self) -> &[Hop] {
        &self.hops
    }

    /// The hop that plain requests are sent to in absolute-form: a single HTTP(S) upstream,
    /// which can then cache and log them. Through SOCKS or a chain, plain requests ride a
    /// tunnel to the origin in origin-form instead.
    pub fn absolute_form_hop(&self) -> Option<&Hop> {
        match &*self.hops {
            [hop] if hop.kind.is_http() => Some(hop),
            _ => None,
        }
    }

    /// How errors name hop `i`: the hop itself, or `hop N (...)` in a chain.
    fn label(&self, i: usize) -> String {
        match self.hops.len() {
            1 => self.hops[i].to_string(),
            _ => format!("hop {} ({})", i + 1, self.hops[i]),
        }
    }
}

/// A keyed digest of a route: the key is random per process, so the value says nothing
/// outside it about the credentials that went in.
fn identity(name: &str, hops: &[Hop]) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    static KEY: std::sync::LazyLock<std::hash::RandomState> =
        std::sync::LazyLock::new(std::hash::RandomState::new);
    let mut h = KEY.build_hasher();
    name.hash(&mut h);
    for hop in hops {
        match &hop.credentials {
            Some(c) => {
                1u8.hash(&mut h);
                c.user.hash(&mut h);
                c.pass.hash(&mut h);
            }
            None => 0u8.hash(&mut h),
        }
    }
    h.finish()
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Opens connections along routes. Cheap to clone.
#[derive(Clone)]
pub struct Dialer {
    resolver: Arc<dyn Resolve>,
    own: Arc<direct::OwnListeners>,
    /// Where targets may be: swapped at a reload, shared by every clone.
    policy: Arc<ArcSwap<Destinations>>,
    /// Where this dial's steps are recorded, when someone asked.
    trace: Option<trace::Tracer>,
    /// Whose dial this is: the sticky key that picks a source address from a route's bind,
    /// and whether the client named it.
    session: Option<(Arc<str>, bool)>,
    tls: TlsConnector,
    connect_timeout: Duration,
    via: HeaderValue,
}

/// How many times one dial may start again because a proxy closed the connection after a 407
/// (a discovery leg, then a scheme's first leg).
const MAX_AUTH_REDIALS: usize = 3;

/// Where a dial stops.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// At the target: every hop's handshake done.
    Target,
    /// Inside the last hop (TCP and TLS up), ready for absolute-form requests.
    LastHop,
}

impl Dialer {
    /// `via` is the `Via` value sent on CONNECTs to upstreams (`1.1 viaduct`).
    /// `connect_timeout` bounds a whole dial: resolution, TCP and every hop's handshake.
    pub fn new(
        resolver: Arc<dyn Resolve>,
        tls: TlsConnector,
        connect_timeout: Duration,
        via: HeaderValue,
    ) -> Self {
        Self {
            resolver,
            own: Arc::default(),
            policy: Arc::default(),
            trace: None,
            session: None,
            tls,
            connect_timeout,
            via,
        }
    }

    /// The same dialer with another bound on each dial (pools share one budget across members).
    pub fn with_timeout(&self, connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            ..self.clone()
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Our own listener addresses, which direct dials refuse.
    pub fn own_listeners(&self) -> &direct::OwnListeners {
        &self.own
    }

    /// Puts a destination policy in force for every dial from now on.
    pub fn set_policy(&self, policy: Destinations) {
        self.policy.store(Arc::new(policy));
    }

    /// The same dialer, recording its steps into `tracer`.
    pub fn traced(&self, tracer: trace::Tracer) -> Self {
        Self {
            trace: Some(tracer),
            ..self.clone()
        }
    }

    /// The same dialer, dialing for the session `key` (`named`: the client gave it as a
    /// `-session-ID` suffix rather than it being its address).
    pub fn for_session(&self, key: Arc<str>, named: bool) -> Self {
        Self {
            session: Some((key, named)),
            ..self.clone()
        }
    }

    /// The source address this dial's first connection along `route` leaves from: picked
    /// from the route's bind for this dialer's session.
    pub fn source_for(&self, route: &Route) -> Option<Source> {
        route.bind().map(|b| {
            b.pick(
                self.session
                    .as_ref()
                    .map(|(key, named)| SessionKey { key, named: *named }),
            )
        })
    }

    /// The same dialer without the destination policy, for dials the operator configured
    /// (health probes to a pool's `health.target`), which no client chose.
    pub fn unchecked(&self) -> Self {
        Self {
            policy: Arc::default(),
            ..self.clone()
        }
    }

    /// The destination policy in force.
    pub fn policy(&self) -> Arc<Destinations> {
        self.policy.load_full()
    }

    /// Opens (and drops) a TCP connection to the route's first hop: the health probe used
    /// when a pool has no probe target.
    pub async fn reach_first_hop(&self, route: &Route) -> Result<(), ConnectError> {
        let Some(hop) = route.hops().first() else {
            return Ok(());
        };
        let peer = route.label(0);
        match tokio::time::timeout(
            self.connect_timeout,
            direct::connect_tcp(
                &*self.resolver,
                &hop.addr,
                &peer,
                None,
                self.source_for(route).map(|s| s.addr),
                None,
            ),
        )
        .await
        {
            Ok(res) => res.map(drop),
            Err(_) => Err(ConnectError::Timeout {
                peer,
                after: self.connect_timeout,
            }),
        }
    }

    /// A stream to `target` itself, through every hop of `route`.
    pub async fn tunnel(&self, route: &Route, target: &Target) -> Result<BoxIo, ConnectError> {
        let source = self.source_for(route);
        self.dial(route, target, Stop::Target, source).await
    }

    /// A stream to write plain HTTP requests for `target` on, leaving from `source` (picked
    /// with [`Dialer::source_for`]). `true` when it ends at an HTTP proxy that expects
    /// absolute-form requests, `false` when it ends at the origin.
    pub async fn forward(
        &self,
        route: &Route,
        target: &Target,
        source: Option<Source>,
    ) -> Result<(BoxIo, bool), ConnectError> {
        match route.absolute_form_hop() {
            Some(_) => Ok((self.dial(route, target, Stop::LastHop, source).await?, true)),
            None => Ok((self.dial(route, target, Stop::Target, source).await?, false)),
        }
    }

    async fn dial(
        &self,
        route: &Route,
        target: &Target,
        stop: Stop,
        source: Option<Source>,
    ) -> Result<BoxIo, ConnectError> {
        let hops = route.hops();
        // A `socks5://` last hop resolves the target's name here: race its addresses, each
        // attempt a whole dial through the chain (Happy Eyeballs through the proxy).
        if stop == Stop::Target
            && let (Some(HopKind::Socks5 { remote_dns: false }), Host::Name(name)) =
                (hops.last().map(|h| h.kind), &target.host)
        {
            return self.dial_resolving(route, target, name, source).await;
        }
        self.dial_to(route, target, stop, source).await
    }

    /// Resolves `name` (the target's, for a `socks5://` last hop), keeps the addresses the
    /// policy permits, and races dials to them through `route` under one connect timeout.
    async fn dial_resolving(
        &self,
        route: &Route,
        target: &Target,
        name: &str,
        source: Option<Source>,
    ) -> Result<BoxIo, ConnectError> {
        let peer = format!("target {target}");
        let work = async {
            let resolver = &*self.resolver;
            let addrs =
                direct::resolve(resolver, name, target.port, true, self.trace.as_ref()).await?;
            let addrs = direct::permitted(&self.policy.load_full(), &peer, addrs)?;
            let addrs = eyeballs::interleave(addrs);
            let attempt = |addr: std::net::SocketAddr| {
                let to = Target {
                    host: Host::Ip(addr.ip()),
                    port: addr.port(),
                };
                async move { self.dial_to(route, &to, Stop::Target, source).await }
            };
            match eyeballs::race(&addrs, eyeballs::ATTEMPT_DELAY, attempt).await {
                Ok((_, stream)) => Ok(stream),
                Err(mut failed) if failed.len() <= 1 => Err(failed.pop().map_or_else(
                    || ConnectError::io(&peer, std::io::Error::other("no addresses")),
                    |(_, e)| e,
                )),
                Err(failed) => Err(ConnectError::dials(&peer, failed)),
            }
        };
        match tokio::time::timeout(self.connect_timeout, work).await {
            Ok(res) => res,
            Err(_) => Err(ConnectError::Timeout {
                peer: route.label(route.hops().len() - 1),
                after: self.connect_timeout,
            }),
        }
    }

    async fn dial_to(
        &self,
        route: &Route,
        target: &Target,
        stop: Stop,
        source: Option<Source>,
    ) -> Result<BoxIo, ConnectError> {
        let hops = route.hops();
        // The peer being worked on when the clock ran out, for the timeout's message.
        let mut at = if hops.is_empty() {
            format!("target {target}")
        } else {
            route.label(0)
        };
        let policy = self.policy.load_full();
        if !hops.is_empty()
            && let Host::Ip(ip) = target.host
        {
            // Through an upstream, an address we can see is checked here; a name is the
            // upstream's to resolve (unless a hop resolves it locally: socks5://).
            direct::check_destination(&policy, &format!("target {target}"), ip)?;
        }
        // One authentication per HTTP hop, kept across the re-dials a proxy that closes after
        // its 407 asks for.
        let mut auths: Vec<Option<proxy_auth::Negotiation>> = hops
            .iter()
            .enumerate()
            .map(|(i, h)| {
                h.kind.is_http().then(|| {
                    let n = h.negotiation(&route.label(i));
                    match self.trace.as_ref().filter(|t| t.wants_steps()) {
                        Some(_) => n.noting(),
                        None => n,
                    }
                })
            })
            .collect();
        let walk = async {
            let mut redials = 0;
            'dial: loop {
                let first = hops.first().map_or(target, |h| &h.addr);
                at = if hops.is_empty() {
                    format!("target {target}")
                } else {
                    route.label(0)
                };
                // Only a direct dial can reach ourselves unseen: through an upstream, our own
                // `Via` comes back and the loop is caught as 508 there.
                let checks = hops.is_empty().then_some(direct::TargetChecks {
                    own: &self.own,
                    policy: &policy,
                });
                let trace = self.trace.as_ref();
                let mut stream: BoxIo = Box::new(
                    direct::connect_tcp(
                        &*self.resolver,
                        first,
                        &at,
                        checks,
                        source.map(|s| s.addr),
                        trace,
                    )
                    .await?,
                );
                for (i, hop) in hops.iter().enumerate() {
                    at = route.label(i);
                    let started = std::time::Instant::now();
                    let record = |what: &dyn Fn() -> String, res: &Result<BoxIo, ConnectError>| {
                        if let Some(t) = trace.filter(|t| (*t).wants_steps()) {
                            let outcome = match res {
                                Ok(_) => "ok".to_owned(),
                                Err(e) => e.to_string(),
                            };
                            t.step(what(), started.elapsed(), outcome);
                        }
                    };
                    if hop.kind == HopKind::Https {
                        let res =
                            tls::connect_with_end_point(&self.tls, stream, &hop.addr, &at).await;
                        let res = res.map(|(s, end_point)| {
                            // NTLM over this TLS binds to it (channel bindings).
                            hop.auth.tls_end_point(end_point.as_deref());
                            s
                        });
                        record(&|| format!("tls {at}"), &res);
                        stream = res?;
                    }
                    if stop == Stop::LastHop && i + 1 == hops.len() {
                        if let Some(t) = trace {
                            t.hop(started.elapsed());
                        }
                        break;
                    }
                    let next = hops.get(i + 1).map_or(target, |h| &h.addr);
                    tracing::debug!(hop = %at, next = %next, "hop handshake");
                    let last = i + 1 == hops.len();
                    let policy = last.then_some(&*policy);
                    let res = self
                        .handshake(stream, hop, &at, next, policy, auths[i].as_mut())
                        .await;
                    if let (Some(t), Some(auth)) = (trace, auths[i].as_mut()) {
                        for words in auth.take_notes() {
                            t.step(format!("{at}: auth"), started.elapsed(), words);
                        }
                    }
                    let res = match res {
                        Ok(Some(s)) => Ok(s),
                        Ok(None) if redials < MAX_AUTH_REDIALS => {
                            // The proxy closed after its 407: the next leg goes on a new
                            // connection along the same hops.
                            redials += 1;
                            if let Some(t) = trace.filter(|t| (*t).wants_steps()) {
                                t.step(
                                    format!("{at}: closed after 407, dialing again"),
                                    started.elapsed(),
                                    "ok".into(),
                                );
                            }
                            continue 'dial;
                        }
                        Ok(None) => Err(ConnectError::ProxyAuth {
                            peer: at.clone(),
                            reason: "closed the connection after every authentication leg".into(),
                        }),
                        Err(e) => Err(e),
                    };
                    record(&|| format!("{at}: connect to {next}"), &res);
                    stream = res?;
                    if let Some(t) = trace {
                        t.hop(started.elapsed());
                    }
                }
                break Ok(stream);
            }
        };
        let res = tokio::time::timeout(self.connect_timeout, walk).await;
        match res {
            Ok(res) => res,
            Err(_) => Err(ConnectError::Timeout {
                peer: at,
                after: self.connect_timeout,
            }),
        }
    }

    /// Asks `hop` (reached over `stream`) to connect onward to `next`. `target_policy`: `next`
    /// is the target, to be checked against it where we resolve its name. `auth`: an HTTP hop's
    /// authentication. `None` when the proxy closed the connection between authentication legs
    /// and the next leg needs a new one.
    async fn handshake(
        &self,
        mut stream: BoxIo,
        hop: &Hop,
        peer: &str,
        next: &Target,
        target_policy: Option<&Destinations>,
        auth: Option<&mut proxy_auth::Negotiation>,
    ) -> Result<Option<BoxIo>, ConnectError> {
        match hop.kind {
            HopKind::Http | HopKind::Https => {
                let mut fresh;
                let auth = match auth {
                    Some(a) => a,
                    None => {
                        fresh = hop.negotiation(peer);
                        &mut fresh
                    }
                };
                match http_connect::handshake(&mut stream, peer, next, auth, &self.via).await? {
                    http_connect::Opened::Tunnel(leftover) => {
                        Ok(Some(crate::stream::with_leftover(leftover, stream)))
                    }
                    http_connect::Opened::Again => Ok(None),
                }
            }
            HopKind::Socks5 { remote_dns } => {
                let to = match (&next.host, remote_dns) {
                    (Host::Name(name), false) => {
                        let addr = self
                            .resolve_one(name, next.port, target_policy.is_some(), None)
                            .await?;
                        if let Some(policy) = target_policy {
                            direct::check_destination(
                                policy,
                                &format!("target {next}"),
                                addr.ip(),
                            )?;
                        }
                        SocksTarget::Addr(addr)
                    }
                    _ => SocksTarget::remote(next),
                };
                socks::socks5(stream, peer, &to, hop.credentials.as_ref())
                    .await
                    .map(Some)
            }
            HopKind::Socks4a => socks::socks4a(
                stream,
                peer,
                &SocksTarget::remote(next),
                hop.credentials.as_ref(),
            )
            .await
            .map(Some),
        }
    }

    /// One address for `name`, for where only one can be used (a `socks5://` hop in the
    /// middle of a chain, where the proxy gets an address, and SOCKS UDP datagrams, which
    /// cannot race): the first of the family asked for (`Some(true)`: IPv4), else the
    /// resolver's first. `of_target`: it is the target's own name.
    pub(crate) async fn resolve_one(
        &self,
        name: &str,
        port: u16,
        of_target: bool,
        ipv4: Option<bool>,
    ) -> Result<std::net::SocketAddr, ConnectError> {
        let addrs = direct::resolve(&*self.resolver, name, port, of_target, None).await?;
        let preferred = ipv4.and_then(|v4| addrs.iter().find(|a| a.is_ipv4() == v4));
        preferred
            .or(addrs.first())
            .copied()
            .ok_or_else(|| ConnectError::io(name, std::io::Error::other("no addresses")))
    }
}
