//! The thing a client wants to reach: a `host:port` authority.
//!
//! CONNECT carries it as authority-form (`example.com:443`, `192.0.2.1:443`, `[2001:db8::1]:443`);
//! plain requests carry it inside an absolute URI. Everything past the inbound edge works with a
//! parsed [`Target`], never with raw strings, so a malformed target is refused (400) before any
//! dial happens.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::Uri;
use http::uri::Authority;

/// A destination host: a DNS name (resolved by the hop that dials it) or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, lower-cased.
    Name(String),
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
}

/// A `host:port` destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

/// Why a request target was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("CONNECT needs an authority of the form host:port, got \"{0}\"")]
    NotAuthorityForm(String),
    #[error("target \"{0}\" has no port")]
    MissingPort(String),
    #[error("target \"{0}\" has port 0")]
    ZeroPort(String),
    #[error("target \"{0}\" has an invalid host")]
    BadHost(String),
    #[error("target \"{0}\" has an invalid port (1 to 65535)")]
    BadPort(String),
}

impl Target {
    /// Builds a target from a host and port, validating the host.
    pub fn new(host: &str, port: u16) -> Result<Self, TargetError> {
        let shown = || format!("{host}:{port}");
        if port == 0 {
            return Err(TargetError::ZeroPort(shown()));
        }
        Ok(Self {
            host: parse_host(host).ok_or_else(|| TargetError::BadHost(shown()))?,
            port,
        })
    }

    /// A target at an address (as SOCKS and PROXY headers carry them): no text in between.
    pub fn from_ip(ip: IpAddr, port: u16) -> Result<Self, TargetError> {
        if port == 0 {
            return Err(TargetError::ZeroPort(
                std::net::SocketAddr::new(ip, port).to_string(),
            ));
        }
        Ok(Self {
            host: Host::Ip(normalize(ip)),
            port,
        })
    }

    /// Parses the request-target of a CONNECT: authority-form only, port required.
    pub fn from_connect_uri(uri: &Uri) -> Result<Self, TargetError> {
        let shown = || uri.to_string();
        let authority = match (uri.scheme(), uri.authority(), uri.path_and_query()) {
            (None, Some(a), None) => a,
            _ => return Err(TargetError::NotAuthorityForm(shown())),
        };
        Self::from_authority(authority, None)
    }

    /// Parses the authority of an absolute URI (`http://host[:port]/...`), with the scheme's
    /// default port when none is given.
    pub fn from_authority(
        authority: &Authority,
        default_port: Option<u16>,
    ) -> Result<Self, TargetError> {
        if authority.as_str().contains('@') {
            // userinfo in a request target is deprecated (RFC 9110 4.2.4) and a phishing vector.
            return Err(TargetError::BadHost(authority.to_string()));
        }
        // `Authority::port_u16` is `None` for `h:`, `h:4x` and `h:99999` alike, which would
        // quietly become the default port: a port that is written must be a valid one.
        let port = match written_port(authority.as_str()) {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| TargetError::BadPort(authority.to_string()))?,
            None => default_port.ok_or_else(|| TargetError::MissingPort(authority.to_string()))?,
        };
        Self::new(authority.host(), port)
    }

    /// The host as written in a request line or `Host` header (IPv6 in brackets).
    pub fn host_str(&self) -> String {
        match &self.host {
            Host::Name(n) => n.clone(),
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            Host::Ip(ip) => ip.to_string(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Name(n) => write!(f, "{n}:{}", self.port),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
        }
    }
}

/// The port text after the host in an authority (`Some("")` for `h:`), `None` when no colon
/// follows the host.
fn written_port(authority: &str) -> Option<&str> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let after_host = match host_port.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(_, after)| after),
        None => host_port.find(':').map_or("", |i| &host_port[i..]),
    };
    after_host.strip_prefix(':')
}

/// Accepts `[v6]`, an IPv4 literal in any form the system resolver reads as one (see
/// [`inet_aton`]), or a DNS name made of LDH labels (underscores allowed, as real-world names
/// use them). Returns `None` for anything else.
///
/// Addresses are normalized here, once, so that rules and access checks see the address that
/// is actually dialed: `127.1`, `2130706433` and `0x7f000001` are `127.0.0.1`, and the
/// unspecified addresses (`0.0.0.0`, `::`), which connect to this host, are loopback (as
/// squid's `to_localhost` treats them).
fn parse_host(host: &str) -> Option<Host> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| Host::Ip(normalize(IpAddr::V6(ip))));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Host::Ip(normalize(ip)));
    }
    if let Some(v4) = inet_aton(host) {
        return Some(Host::Ip(normalize(IpAddr::V4(v4))));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    // A name whose last label is all digits would be read as an address by some resolvers
    // and as a name by others: refuse it rather than guess (no real TLD is numeric).
    let numeric_tld = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    (valid && !numeric_tld).then(|| Host::Name(name.to_ascii_lowercase()))
}

/// The unspecified addresses connect to this host: they are loopback for every purpose; an
/// IPv4-mapped IPv6 address is its IPv4 address.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        // `::ffff:a.b.c.d` reaches a.b.c.d on a dual-stack socket: it is that address.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => normalize(IpAddr::V4(v4)),
            None => IpAddr::V6(v6),
        },
        other => other,
    }
}

/// glibc's `inet_aton`, which `getaddrinfo` applies before any DNS: one to four parts split by
/// dots, each decimal, octal (leading `0`) or hex (`0x`), the last part filling the remaining
/// bytes (`127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`). Hand-written because it must agree
/// with the system resolver exactly, and the WHATWG URL parser (the `url` crate) does not
/// (it refuses some forms and takes a trailing dot that glibc refuses).
pub fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(parts.len());
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X"))
        {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        if digits.is_empty() && radix != 16 {
            return None;
        }
        // "0x" alone is 0 for glibc.
        let n = if digits.is_empty() {
            0
        } else if digits.bytes().all(|b| (b as char).is_digit(radix)) {
            u64::from_str_radix(digits, radix).ok()?
        } else {
            return None;
        };
        nums.push(n);
    }
    let (last, head) = nums.split_last()?;
    if head.iter().any(|&n| n > 255) || *last >= 1u64 << (8 * (4 - head.len())) {
        return None;
    }
    let mut v: u32 = 0;
    for (i, &n) in head.iter().enumerate() {
        v |= (n as u32) << (24 - 8 * i);
    }
    Some(Ipv4Addr::from(v | *last as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(s: &str) -> Result<Target, TargetError> {
        Target::from_connect_uri(
            &s.parse::<Uri>()
                .map_err(|_| TargetError::NotAuthorityForm(s.into()))?,
        )
    }

    #[test]
    fn accepts_names_ipv4_and_bracketed_ipv6() {
        assert_eq!(
            connect("Example.COM:443").unwrap().to_string(),
            "example.com:443"
        );
        assert_eq!(
            connect("192.0.2.1:8443").unwrap().host,
            Host::Ip("192.0.2.1".parse().unwrap())
        );
        let v6 = connect("[2001:db8::1]:443").unwrap();
        assert_eq!(v6.host, Host::Ip("2001:db8::1".parse().unwrap()));
        assert_eq!(v6.to_string(), "[2001:db8::1]:443");
        assert_eq!(v6.host_str(), "[2001:db8::1]");
    }

    #[test]
    fn refuses_everything_else() {
        assert!(matches!(
            connect("example.com"),
            Err(TargetError::MissingPort(_))
        ));
        assert!(matches!(
            connect("example.com:0"),
            Err(TargetError::ZeroPort(_))
        ));
        assert!(matches!(
            connect("http://example.com:80/"),
            Err(TargetError::NotAuthorityForm(_))
        ));
        assert!(matches!(
            connect("/index.html"),
            Err(TargetError::NotAuthorityForm(_))
        ));
        assert!(connect("exa mple.com:443").is_err());
        assert!(matches!(
            connect("user@example.com:443"),
            Err(TargetError::BadHost(_))
        ));
        assert!(matches!(
            connect("bad..name:443"),
            Err(TargetError::BadHost(_))
        ));
        assert!(connect("h:99999").is_err());
    }

    /// Every spelling the system resolver reads as an IPv4 literal is that address, and the
    /// unspecified addresses are loopback: rules cannot be bypassed by spelling.
    #[test]
    fn ipv4_spellings_normalize_like_inet_aton() {
        for s in [
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "2130706433",
            "0x7f000001",
            "0X7F.1",
            "0177.0.0.1",
            "0177.0.0.01",
            "0.0.0.0",
            "0",
            "0x",
        ] {
            let t = connect(&format!("{s}:80")).unwrap();
            assert_eq!(t.host, Host::Ip("127.0.0.1".parse().unwrap()), "{s}");
        }
        assert_eq!(
            connect("[::]:80").unwrap().host,
            Host::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            connect("[::ffff:127.0.0.1]:80").unwrap().to_string(),
            "127.0.0.1:80"
        );
        assert_eq!(
            inet_aton("10.1.65535"),
            Some("10.1.255.255".parse().unwrap())
        );
        assert_eq!(inet_aton("1.2.3.256"), None);
        assert_eq!(inet_aton("256.1"), None);
        assert_eq!(inet_aton("08.1.1.1"), None, "8 is not an octal digit");
        assert_eq!(inet_aton("1.2.3.4.5"), None);
        assert_eq!(inet_aton("4294967296"), None);
        assert_eq!(inet_aton("1.2.3.4."), None);
        assert_eq!(inet_aton("example.com"), None);
        // Names whose last label is numeric are refused, not guessed at.
        assert!(connect("example.123:80").is_err());
        assert!(connect("1.2.3.999:80").is_err());
        assert_eq!(
            connect("0day.example:80").unwrap().to_string(),
            "0day.example:80"
        );
    }

    /// A port that is written must be valid: `h:`, `h:4x` and `h:99999` never mean port 80.
    #[test]
    fn written_ports_must_be_valid() {
        let abs = |s: &str| {
            let uri: Uri = s.parse().unwrap();
            Target::from_authority(uri.authority().unwrap(), Some(80))
        };
        assert_eq!(abs("http://h/").unwrap().port, 80);
        assert_eq!(abs("http://h:8080/").unwrap().port, 8080);
        assert_eq!(abs("http://[::1]:81/").unwrap().port, 81);
        assert_eq!(abs("http://[::1]/").unwrap().port, 80);
        for bad in [
            "http://127.0.0.1:99999/",
            "http://h:4x/",
            "http://h:/",
            "http://h:+80/",
        ] {
            if let Ok(uri) = bad.parse::<Uri>() {
                assert!(
                    matches!(
                        Target::from_authority(uri.authority().unwrap(), Some(80)),
                        Err(TargetError::BadPort(_))
                    ),
                    "{bad}"
                );
            }
        }
    }
}
