//! An upstream proxy hop, parsed from the URL forms curl's `-x` and `ALL_PROXY` accept, and
//! routes made of several hops (`socks5h://a:1080,http://b:3128`).
//!
//! Credentials are percent-decoded here and kept only in [`Credentials`] (redacted `Debug`) and
//! a ready `Proxy-Authorization` value marked sensitive. A hop displays as `http proxy
//! host:port`: never with its credentials, so it is safe in logs and error messages.

use std::fmt;

use base64::Engine;
use http::HeaderValue;
use percent_encoding::percent_decode_str;

use super::proxy_auth::{HopAuth, Negotiation};
use crate::target::Target;

/// Which protocol a hop speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopKind {
    /// HTTP proxy over TCP: CONNECT for tunnels, absolute-form for plain requests.
    Http,
    /// HTTP proxy over TLS (the client's own TLS then runs inside ours).
    Https,
    /// SOCKS5; with `remote_dns` (`socks5h://`) the target's name goes to the proxy, which
    /// resolves it (no DNS leak); without, we resolve it and send the address.
    Socks5 { remote_dns: bool },
    /// SOCKS4a: names go to the proxy; the URL's user name is sent as the user id.
    Socks4a,
}

impl HopKind {
    fn scheme(self) -> &'static str {
        match self {
            HopKind::Http => "http",
            HopKind::Https => "https",
            HopKind::Socks5 { remote_dns: false } => "socks5",
            HopKind::Socks5 { remote_dns: true } => "socks5h",
            HopKind::Socks4a => "socks4a",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            // curl's defaults.
            HopKind::Http => 8080,
            HopKind::Https => 443,
            HopKind::Socks5 { .. } | HopKind::Socks4a => 1080,
        }
    }

    /// True for the HTTP kinds, which accept absolute-form requests.
    pub fn is_http(self) -> bool {
        matches!(self, HopKind::Http | HopKind::Https)
    }
}

/// A user name and password from an upstream URL, percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub pass: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// One upstream proxy.
#[derive(Clone)]
pub struct Hop {
    pub kind: HopKind,
    /// Where the proxy listens.
    pub addr: Target,
    /// From the URL's userinfo, when present.
    pub credentials: Option<Credentials>,
    /// `Basic ...` for the HTTP kinds, marked sensitive.
    pub proxy_authorization: Option<HeaderValue>,
    /// How the HTTP kinds authenticate to the proxy (and what the proxy was seen to offer).
    pub auth: HopAuth,
}

/// Why an upstream URL was refused. Never contains the URL's credentials.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HopParseError {
    #[error("not a URL: {0}")]
    Url(String),
    #[error(
        "unsupported upstream scheme \"{0}\" (supported: http, https, socks5, socks5h, socks4a)"
    )]
    Scheme(String),
    #[error("the upstream URL has no host")]
    NoHost,
    #[error("the upstream URL must not have a path, query or fragment")]
    Path,
    #[error("the upstream URL's credentials are not valid UTF-8 after percent-decoding")]
    Credentials,
    #[error("{0}")]
    CredentialLength(&'static str),
    #[error("invalid upstream host: {0}")]
    Host(String),
    #[error("empty hop in the upstream chain")]
    EmptyHop,
}

impl Hop {
    /// Parses one `scheme://[user:pass@]host[:port]`.
    pub fn parse(s: &str) -> Result<Self, HopParseError> {
        // Without "://", `url` reads `alice:pw@host` as scheme `alice`: say what is expected
        // instead of echoing any part of it.
        if !s.contains("://") {
            return Err(HopParseError::Url(
                "expected scheme://[user:pass@]host[:port]".into(),
            ));
        }
        // Report URL errors without echoing the input: it may hold a password.
        let url = url::Url::parse(s.trim()).map_err(|e| HopParseError::Url(e.to_string()))?;
        let kind = match url.scheme() {
            "http" => HopKind::Http,
            "https" => HopKind::Https,
            "socks5" => HopKind::Socks5 { remote_dns: false },
            "socks5h" => HopKind::Socks5 { remote_dns: true },
            "socks4a" => HopKind::Socks4a,
            other => return Err(HopParseError::Scheme(other.to_owned())),
        };
        let host = url.host_str().ok_or(HopParseError::NoHost)?;
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(HopParseError::Path);
        }
        let port = url
            .port()
            .or_else(|| explicit_port(s.trim()))
            .unwrap_or_else(|| kind.default_port());
        let addr = Target::new(host, port).map_err(|e| HopParseError::Host(e.to_string()))?;
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, pass) => Some(Credentials {
                user: decode(user)?,
                pass: decode(pass.unwrap_or(""))?,
            }),
        };
        if let Some(c) = &credentials {
            check_lengths(kind, c)?;
        }
        let proxy_authorization = match &credentials {
            Some(c) if kind.is_http() => {
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.user, c.pass));
                let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
                    .map_err(|_| HopParseError::Credentials)?;
                value.set_sensitive(true);
                Some(value)
            }
            _ => None,
        };
        Ok(Self {
            kind,
            addr,
            credentials,
            proxy_authorization,
            auth: HopAuth::default(),
        })
    }

    /// The same hop with its proxy authentication set (`--upstream-auth`, `auth = "..."`).
    pub fn with_auth(mut self, auth: HopAuth) -> Self {
        self.auth = auth;
        self
    }

    /// A negotiation for one connection to this (HTTP) hop; `peer` names it in errors.
    pub fn negotiation(&self, peer: &str) -> Negotiation {
        let host = match &self.addr.host {
            crate::target::Host::Name(n) => n.to_string(),
            crate::target::Host::Ip(ip) => ip.to_string(),
        };
        Negotiation::new(&self.auth, self.credentials.as_ref(), peer, &host)
    }
}

/// The port written in the URL's authority. Needed because `url` forgets a port equal to the
/// scheme's default (`http://p:80` has `port() == None`), while an HTTP proxy URL without a port
/// means 8080, not 80.
fn explicit_port(s: &str) -> Option<u16> {
    let rest = s.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = host_port.rsplit_once(':')?;
    if host.starts_with('[') && !host.ends_with(']') {
        return None; // the colon was inside an IPv6 literal
    }
    port.parse().ok()
}

fn decode(s: &str) -> Result<String, HopParseError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| HopParseError::Credentials)
}

/// The SOCKS wire formats carry lengths in one byte (RFC 1929); tokio-socks' SOCKS4 request
/// buffer is 513 bytes, so a user id plus the longest name (253) must fit in it.
fn check_lengths(kind: HopKind, c: &Credentials) -> Result<(), HopParseError> {
    match kind {
        HopKind::Socks5 { .. }
            if !(1..=255).contains(&c.user.len()) || !(1..=255).contains(&c.pass.len()) =>
        {
            Err(HopParseError::CredentialLength(
                "socks5 user name and password must each be 1 to 255 bytes",
            ))
        }
        HopKind::Socks4a if c.user.len() > 250 => Err(HopParseError::CredentialLength(
            "socks4a user id must be at most 250 bytes",
        )),
        _ => Ok(()),
    }
}

/// `text` with every URL userinfo (`user:pass@`) replaced by `***@`, for any message that
/// quotes a config file or a flag. Also catches malformed URLs (`http//alice:pw@h`,
/// `alice:pw@h`): whatever stands before an `@` back to the previous `/`, quote, space, comma or
/// `=` goes.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut start = 0;
    for (at, _) in text.match_indices('@') {
        if at < start {
            continue;
        }
        let seg = &text[start..at];
        let cut = seg
            .char_indices()
            .rev()
            .find(|&(_, c)| {
                matches!(c, '/' | '"' | '\'' | ',' | '=' | '(' | '[' | '<' | '`')
                    || c.is_whitespace()
            })
            .map_or(0, |(i, c)| i + c.len_utf8());
        out.push_str(&seg[..cut]);
        if cut < seg.len() {
            out.push_str("***");
        }
        out.push('@');
        start = at + 1;
    }
    out.push_str(&text[start..]);
    out
}

/// Parses a chain: hops separated by commas, first to last (commas inside credentials must be
/// percent-encoded).
pub fn parse_chain(s: &str) -> Result<Vec<Hop>, HopParseError> {
    s.split(',')
        .map(|part| {
            if part.trim().is_empty() {
                Err(HopParseError::EmptyHop)
            } else {
                Hop::parse(part)
            }
        })
        .collect()
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} proxy {}", self.kind.scheme(), self.addr)
    }
}

impl fmt::Debug for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hop")
            .field("kind", &self.kind)
            .field("addr", &self.addr.to_string())
            .field("credentials", &self.credentials)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[test]
    fn parses_default_ports_and_decoded_credentials() {
        let hop = Hop::parse("http://al%40ice:p%3Aw%2F%25d@127.0.0.1").unwrap();
        assert_eq!(hop.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(
            hop.proxy_authorization.as_ref().unwrap().to_str().unwrap(),
            basic("al@ice:p:w/%d")
        );
        assert!(hop.proxy_authorization.as_ref().unwrap().is_sensitive());
        assert_eq!(
            Hop::parse("http://proxy:3128/").unwrap().addr.to_string(),
            "proxy:3128"
        );
        assert!(
            Hop::parse("http://proxy:3128")
                .unwrap()
                .credentials
                .is_none()
        );
        assert_eq!(Hop::parse("https://proxy").unwrap().addr.port, 443);
        assert_eq!(Hop::parse("http://proxy:80").unwrap().addr.port, 80);
        assert_eq!(
            Hop::parse("http://u:p@[::1]:80").unwrap().addr.to_string(),
            "[::1]:80"
        );
        assert_eq!(
            Hop::parse("http://[::1]").unwrap().addr.to_string(),
            "[::1]:8080"
        );
        let socks = Hop::parse("socks5h://u:p%20w@127.0.0.1").unwrap();
        assert_eq!(socks.kind, HopKind::Socks5 { remote_dns: true });
        assert_eq!(socks.addr.port, 1080);
        assert_eq!(
            socks.credentials,
            Some(Credentials {
                user: "u".into(),
                pass: "p w".into()
            })
        );
        assert!(socks.proxy_authorization.is_none());
        assert_eq!(
            Hop::parse("socks5://h:9").unwrap().kind,
            HopKind::Socks5 { remote_dns: false }
        );
        assert_eq!(Hop::parse("socks4a://h").unwrap().kind, HopKind::Socks4a);
    }

    #[test]
    fn parses_chains_in_order() {
        let chain = parse_chain("socks5h://a:1080, http://user:pw@b:3128").unwrap();
        assert_eq!(
            chain.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            ["socks5h proxy a:1080", "http proxy b:3128"]
        );
        assert_eq!(
            parse_chain("http://a:1,,http://b:2").unwrap_err(),
            HopParseError::EmptyHop
        );
    }

    #[test]
    fn never_shows_credentials() {
        let hop = Hop::parse("http://alice:s3cret@127.0.0.1:3128").unwrap();
        assert_eq!(hop.to_string(), "http proxy 127.0.0.1:3128");
        assert!(!format!("{hop:?}").contains("s3cret"));
        let err = Hop::parse("http://alice:s3cret@[bad/")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn redacts_userinfo_in_any_text() {
        assert_eq!(
            redact(r#"corp "http://alice:s3cretPW@10.0.0.1:3128""#),
            r#"corp "http://***@10.0.0.1:3128""#
        );
        assert_eq!(
            redact("\"http//alice:s3cretPW@h:1\" is not direct"),
            "\"http//***@h:1\" is not direct"
        );
        assert_eq!(
            redact("alice:pw@h, socks5://b:c@d"),
            "***@h, socks5://***@d"
        );
        assert_eq!(redact("no secrets here"), "no secrets here");
        assert_eq!(redact("a\u{3000}b@c"), "a\u{3000}***@c");
        let err = Hop::parse("alice:pw@h").unwrap_err().to_string();
        assert!(!err.contains("alice") && !err.contains("pw"), "{err}");
    }

    #[test]
    fn refuses_other_forms() {
        assert_eq!(
            Hop::parse("ftp://p:21").unwrap_err(),
            HopParseError::Scheme("ftp".into())
        );
        assert_eq!(Hop::parse("http://p:1/x").unwrap_err(), HopParseError::Path);
        assert!(Hop::parse("127.0.0.1:3128").is_err());
        assert!(matches!(
            Hop::parse("socks5://user@h:1"),
            Err(HopParseError::CredentialLength(_))
        ));
        let long = "u".repeat(251);
        assert!(matches!(
            Hop::parse(&format!("socks4a://{long}@h:1")),
            Err(HopParseError::CredentialLength(_))
        ));
    }
}
