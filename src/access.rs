//! Access policy, as pure functions: which clients may connect ([`Clients`]) and which
//! destination addresses and ports they may reach ([`Destinations`]), including the safe
//! default that keeps a proxy on a public address from reaching its own host, private
//! networks and cloud metadata endpoints.
//!
//! Nothing here does I/O: the dialer applies [`Destinations::permits`] to the exact address it
//! is about to connect to (after the one resolution it uses), so a name cannot be checked with
//! one answer and dialed with another.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

// `::ffff:a.b.c.d` reaches a.b.c.d and `0.0.0.0` / `::` reach this host: they must meet the
// same rules as the addresses they stand for.
use crate::target::normalize;

/// The whole access policy: who may connect, where they may go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub clients: Clients,
    pub destinations: Destinations,
}

/// Who may connect. Empty: anyone who reaches the listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clients {
    pub allow: Vec<IpNet>,
}

impl Clients {
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = normalize(ip);
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// Where clients may go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    /// Denied ranges (on top of the internal ranges when `deny_internal`).
    pub deny: Vec<IpNet>,
    /// Ranges allowed even when a deny (or the internal default) covers them.
    pub allow: Vec<IpNet>,
    /// Ports CONNECT tunnels may go to; empty: any.
    pub connect_ports: Vec<u16>,
    /// Deny [`is_internal`] addresses (the default when a listener is not on loopback).
    pub deny_internal: bool,
}

/// Why a destination is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Covered by a `deny` entry.
    Denied,
    /// Internal (loopback, private, link-local, ...) under the safe default.
    Internal,
}

impl Refusal {
    /// In words, after "… is {addr}, ": what the client's error says.
    pub fn why(self) -> &'static str {
        match self {
            Refusal::Denied => "which the access policy denies",
            Refusal::Internal => {
                "an internal address (loopback, private, link-local), denied by default on a proxy listening beyond loopback (allow it under [access] allow)"
            }
        }
    }
}

impl Destinations {
    /// Whether a connection to `ip` is allowed; an `allow` entry wins over any deny.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = normalize(ip);
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Err(Refusal::Denied);
        }
        if self.deny_internal && is_internal(ip) {
            return Err(Refusal::Internal);
        }
        Ok(())
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        self.check(ip).is_ok()
    }

    /// The addresses of `addrs` a connection may go to, in order; when none may, the first
    /// one with its refusal. Every dial's addresses go through here (or [`Self::check`] for
    /// one address): the exact addresses dialed are the ones checked.
    pub fn filter(
        &self,
        addrs: Vec<std::net::SocketAddr>,
    ) -> Result<Vec<std::net::SocketAddr>, (IpAddr, Refusal)> {
        if self.is_open() {
            return Ok(addrs);
        }
        let mut refused = None;
        let permitted: Vec<_> = addrs
            .into_iter()
            .filter(|a| match self.check(a.ip()) {
                Ok(()) => true,
                Err(why) => {
                    refused.get_or_insert((a.ip(), why));
                    false
                }
            })
            .collect();
        match refused {
            Some(first) if permitted.is_empty() => Err(first),
            _ => Ok(permitted),
        }
    }

    /// Whether any address could be refused (a policy with nothing to check costs nothing).
    pub fn is_open(&self) -> bool {
        self.deny.is_empty() && !self.deny_internal
    }

    /// Whether a tunnel may go to `port`.
    pub fn permits_port(&self, port: u16) -> bool {
        self.connect_ports.is_empty() || self.connect_ports.contains(&port)
    }
}

/// The addresses a proxy on a public address must not reach by default: this host, private
/// networks, link-local (cloud metadata at 169.254.169.254 and fd00:ec2::254), carrier-grade
/// NAT, "this network", multicast and broadcast, in IPv4, IPv6 and IPv4-mapped forms.
pub fn is_internal(ip: IpAddr) -> bool {
    match normalize(ip) {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()           // 127.0.0.0/8
        || ip.is_private()     // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local()  // 169.254/16: cloud metadata
        || a == 0              // 0.0.0.0/8: "this network" (0.0.0.0 reaches this host)
        || (a == 100 && (b & 0xc0) == 64) // 100.64/10 CGNAT
        || ip.is_multicast()   // 224/4
        || ip.is_broadcast()
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()                   // ::1
        || ip.is_unspecified()         // :: reaches this host
        || (first & 0xffc0) == 0xfe80  // fe80::/10 link-local
        || (first & 0xfe00) == 0xfc00  // fc00::/7 unique local (and fd00:ec2::254)
        || ip.is_multicast()           // ff00::/8
        // ::a.b.c.d (IPv4-compatible, deprecated) and 64:ff9b::/96 (NAT64) carry an IPv4
        // address a translator may reach.
        || embedded_v4(ip).is_some_and(is_internal_v4)
}

/// The IPv4 address inside an IPv4-compatible (`::a.b.c.d`) or NAT64 (`64:ff9b::/96`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s[..6] {
        [0, 0, 0, 0, 0, 0] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0] => Some(tail),
        _ => None,
    }
}

/// True when every listen address is loopback: the zero-config local case.
pub fn loopback_only(listen: &[std::net::SocketAddr]) -> bool {
    // A wildcard listener (0.0.0.0, ::) is reached from everywhere, although a *destination*
    // 0.0.0.0 means this host.
    listen
        .iter()
        .all(|a| !a.ip().is_unspecified() && normalize(a.ip()).is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_ranges_in_every_form() {
        for internal in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_internal(ip(internal)), "{internal} should be internal");
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "192.0.2.1",
            "2001:db8::1",
            "2606:4700::1",
            "::ffff:8.8.8.8",
            "fec0::1",
        ] {
            assert!(!is_internal(ip(public)), "{public} should not be internal");
        }
    }

    #[test]
    fn allow_beats_deny_and_the_default() {
        let d = Destinations {
            deny: vec!["203.0.113.0/24".parse().unwrap()],
            allow: vec![
                "127.0.0.1/32".parse().unwrap(),
                "203.0.113.7/32".parse().unwrap(),
            ],
            connect_ports: vec![443],
            deny_internal: true,
        };
        assert!(d.permits(ip("127.0.0.1")));
        assert!(d.permits(ip("::ffff:127.0.0.1")));
        assert_eq!(d.check(ip("127.0.0.2")), Err(Refusal::Internal));
        assert_eq!(d.check(ip("203.0.113.9")), Err(Refusal::Denied));
        assert!(d.permits(ip("203.0.113.7")));
        assert!(d.permits(ip("198.51.100.1")));
        assert!(d.permits_port(443) && !d.permits_port(25));
        let local = Destinations::default();
        assert!(local.is_open() && local.permits(ip("10.0.0.1")) && local.permits_port(25));
    }

    #[test]
    fn clients_and_loopback_listeners() {
        let c = Clients {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(c.permits(ip("10.9.9.9")) && c.permits(ip("::ffff:10.0.0.1")));
        assert!(!c.permits(ip("192.0.2.1")));
        assert!(Clients::default().permits(ip("192.0.2.1")));
        let sa = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert!(loopback_only(&[sa("127.0.0.1:8083"), sa("[::1]:8083")]));
        assert!(!loopback_only(&[sa("127.0.0.1:1"), sa("0.0.0.0:8083")]));
        assert!(!loopback_only(&[sa("[::]:8083")]));
    }

    /// The one check over a dial's addresses: the permitted ones in order; when none is, the
    /// first address with its refusal (a pure function: no address here is dialed).
    #[test]
    fn filter_keeps_the_permitted_addresses_in_order() {
        let sa = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        let policy = Destinations {
            deny: vec!["192.0.2.0/24".parse().unwrap()],
            deny_internal: true,
            ..Destinations::default()
        };
        let addrs = vec![
            sa("10.0.0.1:443"),
            sa("198.51.100.7:443"),
            sa("192.0.2.9:443"),
        ];
        assert_eq!(policy.filter(addrs), Ok(vec![sa("198.51.100.7:443")]));
        let none = vec![sa("192.0.2.9:443"), sa("169.254.169.254:80")];
        assert_eq!(policy.filter(none), Err((ip("192.0.2.9"), Refusal::Denied)));
        assert_eq!(
            policy.filter(vec![sa("[fd00:ec2::254]:80")]),
            Err((ip("fd00:ec2::254"), Refusal::Internal))
        );
        assert!(Refusal::Internal.why().contains("[access] allow"));
    }
}
