//! An upstream proxy hop, parsed from the URL forms curl's `-x` accepts.
//!
//! Credentials are percent-decoded here, turned into a ready `Proxy-Authorization` value marked
//! sensitive, and never kept in any string that could reach a log or an error message: a hop
//! displays as `upstream host:port`.

use std::fmt;

use base64::Engine;
use http::HeaderValue;
use percent_encoding::percent_decode_str;

use crate::target::Target;

/// Which protocol a hop speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopKind {
    /// An HTTP proxy reached over plain TCP: CONNECT for tunnels, absolute-form for requests.
    Http,
}

/// One upstream proxy.
#[derive(Clone)]
pub struct Hop {
    pub kind: HopKind,
    /// Where the proxy listens.
    pub addr: Target,
    /// `Basic ...`, marked sensitive, when the URL carried credentials.
    pub auth: Option<HeaderValue>,
}

/// Why an upstream URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HopParseError {
    #[error("not a URL: {0}")]
    Url(String),
    #[error("unsupported upstream scheme \"{0}\" (supported: http)")]
    Scheme(String),
    #[error("the upstream URL has no host")]
    NoHost,
    #[error("the upstream URL must not have a path, query or fragment")]
    Path,
    #[error("the upstream URL's credentials are not valid UTF-8 after percent-decoding")]
    Credentials,
    #[error("invalid upstream host: {0}")]
    Host(String),
}

impl Hop {
    /// Parses `http://[user:pass@]host[:port]` (port 8080 when omitted, as curl does).
    pub fn parse(s: &str) -> Result<Self, HopParseError> {
        // Report URL errors without echoing the input: it may hold a password.
        let url = url::Url::parse(s).map_err(|e| HopParseError::Url(e.to_string()))?;
        let kind = match url.scheme() {
            "http" => HopKind::Http,
            other => return Err(HopParseError::Scheme(other.to_owned())),
        };
        let host = url.host_str().ok_or(HopParseError::NoHost)?;
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(HopParseError::Path);
        }
        let port = url.port().unwrap_or(8080);
        let addr = Target::new(host, port).map_err(|e| HopParseError::Host(e.to_string()))?;
        let auth = match (url.username(), url.password()) {
            ("", None) => None,
            (user, pass) => {
                let decode = |s: &str| {
                    percent_decode_str(s)
                        .decode_utf8()
                        .map(|c| c.into_owned())
                        .map_err(|_| HopParseError::Credentials)
                };
                let creds = format!("{}:{}", decode(user)?, decode(pass.unwrap_or(""))?);
                let encoded = base64::engine::general_purpose::STANDARD.encode(creds);
                let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
                    .map_err(|_| HopParseError::Credentials)?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self { kind, addr, auth })
    }
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream {}", self.addr)
    }
}

impl fmt::Debug for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hop")
            .field("kind", &self.kind)
            .field("addr", &self.addr.to_string())
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
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
    fn parses_default_port_and_decoded_credentials() {
        let hop = Hop::parse("http://al%40ice:p%3Aw%2F%25d@127.0.0.1").unwrap();
        assert_eq!(hop.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(
            hop.auth.as_ref().unwrap().to_str().unwrap(),
            basic("al@ice:p:w/%d")
        );
        assert!(hop.auth.as_ref().unwrap().is_sensitive());
        assert_eq!(
            Hop::parse("http://proxy:3128/").unwrap().addr.to_string(),
            "proxy:3128"
        );
        assert!(Hop::parse("http://proxy:3128").unwrap().auth.is_none());
    }

    #[test]
    fn never_shows_credentials() {
        let hop = Hop::parse("http://alice:s3cret@127.0.0.1:3128").unwrap();
        assert_eq!(hop.to_string(), "upstream 127.0.0.1:3128");
        assert!(!format!("{hop:?}").contains("s3cret"));
        let err = Hop::parse("http://alice:s3cret@[bad/")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn refuses_other_forms() {
        assert_eq!(
            Hop::parse("ftp://p:21").unwrap_err(),
            HopParseError::Scheme("ftp".into())
        );
        assert_eq!(Hop::parse("http://p:1/x").unwrap_err(), HopParseError::Path);
        assert!(Hop::parse("127.0.0.1:3128").is_err());
    }
}
