//! The first leg of every dial: resolve a name and open TCP to it.

use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;

use tokio::net::TcpStream;

use super::error::ConnectError;
use super::resolve::Resolve;
use super::trace::Tracer;
use crate::access::{Destinations, Refusal};
use crate::target::{Host, Target};

/// The addresses this proxy listens on, so that a direct dial to one of them (a tunnel into
/// ourselves, which nests without end and eats our own connection quota) is refused. A wildcard
/// listener (`0.0.0.0`, `::`) is reached through every local address.
#[derive(Debug, Default)]
pub struct OwnListeners {
    listeners: RwLock<Vec<SocketAddr>>,
    /// Loopback plus every interface's addresses, read when a wildcard listener is added.
    local: RwLock<Vec<IpAddr>>,
}

impl OwnListeners {
    /// Records a bound listener address.
    pub fn add(&self, addr: SocketAddr) {
        if addr.ip().is_unspecified()
            && let Ok(mut local) = self.local.write()
            && local.is_empty()
        {
            *local = local_addresses();
        }
        if let Ok(mut l) = self.listeners.write() {
            l.push(addr);
        }
    }

    /// True when a connection to `addr` would reach one of our listeners.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        let ip = crate::target::normalize(addr.ip());
        let Ok(listeners) = self.listeners.read() else {
            return false;
        };
        listeners.iter().any(|l| {
            l.port() == addr.port()
                && (crate::target::normalize(l.ip()) == ip
                    || (l.ip().is_unspecified()
                        && (ip.is_loopback()
                            || self.local.read().is_ok_and(|local| local.contains(&ip)))))
        })
    }
}

/// This host's addresses: loopback and every interface's.
fn local_addresses() -> Vec<IpAddr> {
    #[cfg(target_os = "linux")]
    {
        match nix::ifaddrs::getifaddrs() {
            Ok(ifs) => ifs
                .filter_map(|i| i.address)
                .filter_map(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .map(crate::target::normalize)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list local addresses; only loopback counts as this host");
                Vec::new()
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    Vec::new()
}

/// What a dial to the target itself (not to an upstream) must respect.
#[derive(Clone, Copy)]
pub struct TargetChecks<'a> {
    /// Our own listeners: a direct dial to one would loop.
    pub own: &'a OwnListeners,
    /// The destination policy, applied to the exact addresses dialed.
    pub policy: &'a Destinations,
}

/// Refuses `addr` for `peer` when the destination policy does ([`Destinations::check`]).
pub fn check_destination(
    policy: &Destinations,
    peer: &str,
    addr: IpAddr,
) -> Result<(), ConnectError> {
    policy
        .check(addr)
        .map_err(|why| prohibited(peer, (addr, why)))
}

fn prohibited(peer: &str, (addr, why): (IpAddr, Refusal)) -> ConnectError {
    ConnectError::Prohibited {
        peer: peer.to_owned(),
        addr,
        why: why.why(),
    }
}

/// Opens TCP to `target` (resolving names with `resolver` once), racing its addresses (Happy
/// Eyeballs, see [`super::eyeballs`]). `peer` names the target in errors (`target host:port` or
/// `upstream host:port`). With `checks`, an address of one of our own listeners is refused,
/// and only addresses the destination policy permits are dialed: the very addresses checked,
/// never a second lookup. With `source`, the connection leaves from that address, and only
/// addresses of its family are dialed.
pub async fn connect_tcp(
    resolver: &dyn Resolve,
    target: &Target,
    peer: &str,
    checks: Option<TargetChecks<'_>>,
    source: Option<IpAddr>,
    trace: Option<&Tracer>,
) -> Result<TcpStream, ConnectError> {
    let addrs = addresses(resolver, target, peer, checks, trace).await?;
    let addrs = match source {
        Some(src) => {
            let same: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| a.is_ipv4() == src.is_ipv4())
                .collect();
            if same.is_empty() {
                return Err(ConnectError::FamilyMismatch {
                    peer: peer.to_owned(),
                    from: src,
                });
            }
            same
        }
        None => addrs,
    };
    let addrs = super::eyeballs::interleave(addrs);
    let attempt = |addr: SocketAddr| async move {
        let started = std::time::Instant::now();
        let connected = match source {
            Some(src) => super::bind::connect_from(addr, src).await,
            None => TcpStream::connect(addr).await,
        };
        if let Some(t) = trace {
            let outcome = match &connected {
                Ok(_) => "connected".to_owned(),
                Err(e) => e.to_string(),
            };
            t.step(format!("tcp {peer} ({addr})"), started.elapsed(), outcome);
        }
        if let Err(e) = &connected {
            tracing::debug!(%addr, error = %e, "tcp connect failed");
        }
        connected
    };
    match super::eyeballs::race(&addrs, super::eyeballs::ATTEMPT_DELAY, attempt).await {
        Ok((addr, stream)) => {
            if let Some(t) = trace
                && matches!(target.host, Host::Name(_))
                && checks.is_some()
            {
                t.resolved(addr);
            }
            // Small writes (handshakes, interactive tunnels) must not wait for Nagle.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Err(mut failed) if failed.len() == 1 => {
            let (_, e) = failed.remove(0);
            Err(ConnectError::io(peer, e))
        }
        Err(failed) => Err(ConnectError::attempts(peer, failed)),
    }
}

/// The addresses a dial to `target` may use: its literal, or its name resolved once, less
/// those the checks refuse (all refused: the refusal).
pub(crate) async fn addresses(
    resolver: &dyn Resolve,
    target: &Target,
    peer: &str,
    checks: Option<TargetChecks<'_>>,
    trace: Option<&Tracer>,
) -> Result<Vec<SocketAddr>, ConnectError> {
    let addrs = match &target.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
        // Only a dial to the target itself is given checks.
        Host::Name(name) => resolve(resolver, name, target.port, checks.is_some(), trace).await?,
    };
    let Some(checks) = checks else {
        return Ok(addrs);
    };
    if let Some(addr) = addrs.iter().find(|a| checks.own.contains(**a)) {
        return Err(ConnectError::OwnListener {
            peer: peer.to_owned(),
            addr: *addr,
        });
    }
    permitted(checks.policy, peer, addrs)
}

/// Every address of `name` (at least one), in the resolver's order, the lookup recorded in
/// `trace`. `of_target`: it is the target's own name (not an upstream's), which decides
/// who is blamed when it does not resolve.
pub(crate) async fn resolve(
    resolver: &dyn Resolve,
    name: &str,
    port: u16,
    of_target: bool,
    trace: Option<&Tracer>,
) -> Result<Vec<SocketAddr>, ConnectError> {
    let started = std::time::Instant::now();
    let dns = |source| ConnectError::Dns {
        host: name.to_owned(),
        source,
        target: of_target,
    };
    let resolved = resolver.resolve(name, port).await;
    if let Some(t) = trace {
        t.step(
            format!("dns {name}"),
            started.elapsed(),
            match &resolved {
                Ok(a) => format!("{} address(es)", a.len()),
                Err(e) => e.to_string(),
            },
        );
    }
    match resolved {
        Ok(addrs) if !addrs.is_empty() => Ok(addrs),
        Ok(_) => Err(dns(std::io::Error::other("no addresses"))),
        Err(e) => Err(dns(e)),
    }
}

/// The addresses of `addrs` that `policy` permits ([`Destinations::filter`]); when it permits
/// none, its refusal of the first (`peer` names the target in it).
pub(crate) fn permitted(
    policy: &Destinations,
    peer: &str,
    addrs: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, ConnectError> {
    policy
        .filter(addrs)
        .map_err(|refused| prohibited(peer, refused))
}
