//! The thing a client wants to reach: a `host:port` authority.
//!
//! CONNECT carries it as authority-form (`example.com:443`, `192.0.2.1:443`, `[2001:db8::1]:443`);
//! plain requests carry it inside an absolute URI. Everything past the inbound edge works with a
//! parsed [`Target`], never with raw strings, so a malformed target is refused (400) before any
//! dial happens.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

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
        let port = authority
            .port_u16()
            .or(default_port)
            .ok_or_else(|| TargetError::MissingPort(authority.to_string()))?;
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

/// Accepts `[v6]`, an IPv4 literal, or a DNS name made of LDH labels (underscores allowed, as
/// real-world names use them). Returns `None` for anything else.
fn parse_host(host: &str) -> Option<Host> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| Host::Ip(IpAddr::V6(ip)));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Host::Ip(ip));
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
    valid.then(|| Host::Name(name.to_ascii_lowercase()))
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
    }
}
