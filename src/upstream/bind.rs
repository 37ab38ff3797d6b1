//! Source addresses: where direct connections leave from (`bind = "ADDR"` or `"CIDR"`).
//!
//! With a single address every connection leaves from it. With a prefix the address is chosen
//! per connection from the session's sticky key: the same key (a `-session-ID` suffix, else
//! the client's address) gets the same address for the TTL, different keys spread uniformly
//! over the prefix; with [`BindMode::Random`] a client that named no session gets a fresh
//! address per connection. Sockets are bound with `IP_FREEBIND`, so the prefix need only be
//! routed to the host, not configured address by address, and with
//! `IP_BIND_ADDRESS_NO_PORT`, so that the port is picked at connect time per destination
//! (binding first would otherwise cap each source address at one port range in all).

use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// How addresses of a prefix are handed out to connections that name no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// Pinned per client address (and always per named session).
    #[default]
    Sticky,
    /// A fresh address per connection (named sessions stay pinned).
    Random,
}

impl BindMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sticky" => Some(Self::Sticky),
            "random" => Some(Self::Random),
            _ => None,
        }
    }
}

/// Pins kept at most per bind; the least recently used goes first.
const MAX_PINS: usize = 100_000;

/// Where a route's connections leave from.
#[derive(Debug)]
pub struct Bind {
    net: IpNet,
    mode: BindMode,
    ttl: Duration,
    pins: Mutex<lru::LruCache<u128, (IpAddr, Instant)>>,
}

/// Whose connection is being bound: the sticky key and whether the client named it
/// (`-session-ID`) rather than it being the client's address.
#[derive(Debug, Clone, Copy)]
pub struct SessionKey<'a> {
    pub key: &'a str,
    pub named: bool,
}

/// The source address picked for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub addr: IpAddr,
    /// Connections of other sessions must not reuse this one (kept-alive connections are
    /// keyed by the address); `false` for a random pick, which any connection may share.
    pub pinned: bool,
}

/// Parses `ADDR` or `CIDR` (an address is its own /32 or /128). IPv4-mapped IPv6 forms are
/// refused: they would bind an IPv6 socket that cannot reach IPv4 targets.
pub fn parse(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => s
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("not an address or CIDR: \"{s}\""))?,
    };
    if let IpNet::V6(v6) = net
        && v6.addr().to_ipv4_mapped().is_some()
    {
        return Err(format!(
            "\"{s}\" is an IPv4-mapped IPv6 address: write the IPv4 form"
        ));
    }
    if net.addr().is_unspecified() || net.addr().is_multicast() {
        return Err(format!("\"{s}\" cannot be a source address"));
    }
    Ok(net.trunc_if_prefix(s))
}

trait TruncIfPrefix {
    fn trunc_if_prefix(self, s: &str) -> IpNet;
}

impl TruncIfPrefix for IpNet {
    /// `10.0.0.7/24` means the prefix 10.0.0.0/24; a bare address stays itself.
    fn trunc_if_prefix(self, s: &str) -> IpNet {
        if s.contains('/') { self.trunc() } else { self }
    }
}

impl Bind {
    pub fn new(net: IpNet, mode: BindMode, ttl: Duration) -> Self {
        Self {
            net,
            mode,
            ttl,
            pins: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(MAX_PINS).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    pub fn net(&self) -> IpNet {
        self.net
    }

    pub fn mode(&self) -> BindMode {
        self.mode
    }

    /// True for IPv4 binds.
    pub fn is_ipv4(&self) -> bool {
        matches!(self.net, IpNet::V4(_))
    }

    /// The source address for one connection of `session` (`None`: nobody to pin for, such as
    /// a health probe, which gets a random address).
    pub fn pick(&self, session: Option<SessionKey<'_>>) -> Source {
        if self.net.prefix_len() == self.net.max_prefix_len() {
            return Source {
                addr: self.net.addr(),
                pinned: false,
            };
        }
        let key = match session {
            Some(s) if s.named || self.mode == BindMode::Sticky => s.key,
            _ => {
                return Source {
                    addr: random_in(self.net),
                    pinned: false,
                };
            }
        };
        let digest = digest(key);
        let now = Instant::now();
        let addr = match self.pins.lock() {
            Ok(mut pins) => match pins.get(&digest) {
                Some(&(addr, at)) if now.duration_since(at) < self.ttl => addr,
                _ => {
                    let addr = random_in(self.net);
                    pins.put(digest, (addr, now));
                    addr
                }
            },
            Err(_) => random_in(self.net),
        };
        Source { addr, pinned: true }
    }

    /// Pins held now.
    pub fn pins(&self) -> usize {
        self.pins.lock().map_or(0, |p| p.len())
    }
}

/// A 128-bit keyed digest of a sticky key: a client's 60 KB key costs what a short one does.
fn digest(key: &str) -> u128 {
    static KEYS: LazyLock<(std::hash::RandomState, std::hash::RandomState)> =
        LazyLock::new(|| (std::hash::RandomState::new(), std::hash::RandomState::new()));
    let half = |k: &std::hash::RandomState| k.hash_one(key);
    (u128::from(half(&KEYS.0)) << 64) | u128::from(half(&KEYS.1))
}

/// A uniformly random address of `net`; for IPv4 prefixes of 30 bits or shorter, never the
/// network or broadcast address, and for IPv6 never the subnet-router anycast (all zeros).
fn random_in(net: IpNet) -> IpAddr {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    match net {
        IpNet::V4(n) => {
            let base = u32::from(n.network());
            let size = 1u64 << host_bits;
            let offset = if host_bits >= 2 {
                fastrand::u64(1..size - 1)
            } else {
                fastrand::u64(0..size)
            };
            IpAddr::V4(Ipv4Addr::from(base + offset as u32))
        }
        IpNet::V6(n) => {
            let base = u128::from(n.network());
            let offset = if host_bits >= 128 {
                fastrand::u128(1..)
            } else {
                fastrand::u128(1..1u128 << host_bits)
            };
            IpAddr::V6(Ipv6Addr::from(base | offset))
        }
    }
}

/// Opens TCP to `addr` from `source` (any port): the socket may bind an address not
/// configured on an interface (`IP_FREEBIND`).
pub async fn connect_from(addr: SocketAddr, source: IpAddr) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    let s = socket2::SockRef::from(&socket);
    if addr.is_ipv4() {
        s.set_freebind_v4(true)?;
    } else {
        s.set_freebind_v6(true)?;
    }
    // Best effort: without it the port is taken at bind time instead.
    let _ = nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    );
    socket.bind(SocketAddr::new(source, 0)).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot bind source address {source}: {e}"),
        )
    })?;
    socket.connect(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_prefixes() {
        assert_eq!(parse("127.0.0.2").unwrap().to_string(), "127.0.0.2/32");
        assert_eq!(parse("10.1.2.3/24").unwrap().to_string(), "10.1.2.0/24");
        assert_eq!(
            parse("2001:db8:1::/48").unwrap().to_string(),
            "2001:db8:1::/48"
        );
        for bad in [
            "nope",
            "0.0.0.0",
            "::",
            "::ffff:10.0.0.1",
            "224.0.0.1",
            "10.0.0.0/33",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn random_addresses_stay_in_the_prefix_and_skip_its_ends() {
        let net: IpNet = "192.0.2.0/30".parse().unwrap();
        for _ in 0..200 {
            let a = random_in(net);
            assert!(net.contains(&a));
            assert_ne!(a, net.network());
            assert_ne!(a, net.broadcast());
        }
        let v6: IpNet = "2001:db8::/64".parse().unwrap();
        let picks: std::collections::HashSet<_> = (0..100).map(|_| random_in(v6)).collect();
        assert!(picks.iter().all(|a| v6.contains(a)));
        assert_eq!(
            picks.len(),
            100,
            "64 random bits do not repeat in 100 draws"
        );
    }

    fn key(k: &str, named: bool) -> Option<SessionKey<'_>> {
        Some(SessionKey { key: k, named })
    }

    /// Same session, same address for the TTL; then a new draw. Sessions spread.
    #[tokio::test(start_paused = true)]
    async fn sessions_are_sticky_for_the_ttl_and_spread() {
        let bind = Bind::new(
            "2001:db8::/64".parse().unwrap(),
            BindMode::Random,
            Duration::from_secs(600),
        );
        let first = bind.pick(key("42", true));
        assert!(first.pinned);
        assert_eq!(bind.pick(key("42", true)), first);
        let others: std::collections::HashSet<_> = (0..50)
            .map(|i| bind.pick(key(&i.to_string(), true)).addr)
            .collect();
        assert_eq!(others.len(), 50);
        tokio::time::advance(Duration::from_secs(601)).await;
        assert_ne!(bind.pick(key("42", true)).addr, first.addr);
        // Random mode: an unnamed client gets a fresh address each time.
        let a = bind.pick(key("127.0.0.1", false));
        let b = bind.pick(key("127.0.0.1", false));
        assert!(!a.pinned && a.addr != b.addr);
        // Sticky mode: the client address is the key.
        let sticky = Bind::new(
            "2001:db8::/64".parse().unwrap(),
            BindMode::Sticky,
            Duration::from_secs(600),
        );
        assert_eq!(
            sticky.pick(key("127.0.0.1", false)),
            sticky.pick(key("127.0.0.1", false))
        );
    }
}
