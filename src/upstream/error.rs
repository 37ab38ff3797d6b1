//! `ConnectError`: every way reaching a target can fail, and its one classification.
//!
//! The error names the peer that failed (`target example.com:443`, `upstream 10.0.0.1:3128`) and
//! never a credential. [`ConnectError::kind`] says what kind of failure it is; what that means
//! (status, `Proxy-Status` token, retry, blame) is decided in one place, the classifier in the crate's `failure` module.

use std::io;
use std::time::Duration;

use http::StatusCode;

/// How a dial failed, in the terms the client-facing side needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectErrorKind {
    /// The name did not resolve; `target` when it was the target's own name (not an upstream's).
    Dns { target: bool },
    /// A TCP connection was actively refused.
    Refused,
    /// The whole dial (resolution, TCP, every handshake) did not finish in time.
    Timeout,
    /// Unreachable for another transport reason (no route, reset, ...).
    Unreachable,
    /// An upstream proxy answered, but with a non-2xx status.
    HopStatus(StatusCode),
    /// An upstream proxy closed before it finished its answer.
    Incomplete,
    /// An upstream proxy's answer was not valid HTTP.
    Protocol,
    /// An upstream proxy's answer head was larger than we accept.
    HeadTooLarge,
    /// A SOCKS hop answered with a failure reply.
    SocksReply(SocksReply),
    /// A hop refused our credentials (or wanted some we do not have).
    HopAuth,
    /// The TLS handshake with an HTTPS hop failed; `certificate` when it was the certificate.
    Tls { certificate: bool },
    /// The target is this proxy itself: a tunnel into ourselves would loop.
    Loop,
    /// The access policy refuses the destination address.
    Prohibited,
    /// The target has no address of the family the route leaves from (its `bind`).
    Unroutable,
}

/// A SOCKS failure reply, in words (RFC 1928 section 6; SOCKS4's single "rejected" maps to
/// `GeneralFailure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocksReply {
    GeneralFailure,
    NotAllowed,
    NetworkUnreachable,
    HostUnreachable,
    ConnectionRefused,
    TtlExpired,
    CommandNotSupported,
    AddressTypeNotSupported,
    Unassigned,
}

impl std::fmt::Display for SocksReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::GeneralFailure => "general failure",
            Self::NotAllowed => "connection not allowed by its rules",
            Self::NetworkUnreachable => "network unreachable",
            Self::HostUnreachable => "host unreachable",
            Self::ConnectionRefused => "connection refused by the target",
            Self::TtlExpired => "TTL expired (the target did not answer in time)",
            Self::CommandNotSupported => "command not supported",
            Self::AddressTypeNotSupported => {
                "address type not supported (for a proxy that cannot resolve names, use socks5://)"
            }
            Self::Unassigned => "an unassigned reply code",
        })
    }
}

/// A failure to open a connection to a target, directly or through upstream hops.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("dns lookup of {host} failed: {source}")]
    Dns {
        host: String,
        #[source]
        source: io::Error,
        /// The name was the target's (not an upstream's).
        target: bool,
    },
    #[error("{peer} refused the connection")]
    Refused { peer: String },
    #[error("connecting to {peer} timed out after {}", humantime::format_duration(*.after))]
    Timeout { peer: String, after: Duration },
    #[error("{peer} is unreachable: {source}")]
    Unreachable {
        peer: String,
        #[source]
        source: io::Error,
    },
    #[error("{peer} answered {status}{}", hint(*.status))]
    HopStatus { peer: String, status: StatusCode },
    #[error("{peer} closed the connection during the handshake")]
    HopClosed { peer: String },
    #[error("{peer} sent an invalid handshake response: {reason}")]
    HopProtocol { peer: String, reason: String },
    #[error("{peer} sent a response head larger than {max} bytes or with too many fields")]
    HopHeadTooLarge { peer: String, max: usize },
    #[error("{peer} answered: {reply}")]
    SocksReply { peer: String, reply: SocksReply },
    #[error("{peer} {reason}")]
    HopAuth { peer: String, reason: &'static str },
    /// An HTTP proxy's authentication (its 407s) could not be completed: refused credentials,
    /// a scheme we may not use, no Kerberos ticket. Classified as the 407 it is.
    #[error("{peer} {reason}")]
    ProxyAuth { peer: String, reason: String },
    #[error("{peer} is this proxy's own listener ({addr}): the request would loop back into it")]
    OwnListener {
        peer: String,
        addr: std::net::SocketAddr,
    },
    #[error("{peer} is {addr}, {why}")]
    Prohibited {
        peer: String,
        addr: std::net::IpAddr,
        why: &'static str,
    },
    #[error("{peer} has no {} address, and this route leaves from {from} (bind)", if .from.is_ipv4() { "IPv4" } else { "IPv6" })]
    FamilyMismatch {
        peer: String,
        from: std::net::IpAddr,
    },
    #[error("{peer}: all {} addresses failed: {}", .tried.len(), .tried.iter().map(|(a, e)| format!("{a} {e}")).collect::<Vec<_>>().join(", "))]
    Attempts {
        peer: String,
        /// Every address tried, with what happened, in the order they failed.
        tried: Vec<(std::net::SocketAddr, String)>,
        /// The classification: refused when every address refused, else the last failure's.
        kind: ConnectErrorKind,
    },
    #[error("TLS with {peer} failed: {}", tls_words(.source))]
    Tls {
        peer: String,
        #[source]
        source: rustls::Error,
    },
}

/// True when webpki refused a certificate for being a CA presented as a server's.
pub(crate) fn is_ca_as_end_entity(other: &rustls::OtherError) -> bool {
    other.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity)
}

/// A TLS failure in words a user can act on, never a Rust debug string.
pub fn tls_words(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let date = |t: &rustls::pki_types::UnixTime| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t.as_secs()))
            .to_string()
    };
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "the proxy's certificate is not signed by a trusted CA (trust its CA with --upstream-ca)".into(),
            C::ExpiredContext { not_after, .. } => {
                format!("the proxy's certificate expired on {}", date(not_after))
            }
            C::Expired => "the proxy's certificate has expired".into(),
            C::NotValidYetContext { not_before, .. } => {
                format!("the proxy's certificate is not valid before {}", date(not_before))
            }
            C::NotValidYet => "the proxy's certificate is not valid yet".into(),
            C::NotValidForNameContext { expected, presented } => format!(
                "the proxy's certificate is for {}, not {}",
                if presented.is_empty() {
                    "no name".to_owned()
                } else {
                    // rustls lists them as `DnsName("a.example")`: keep the names only.
                    presented
                        .iter()
                        .map(|p| {
                            p.split_once("(\"")
                                .and_then(|(_, rest)| rest.strip_suffix("\")"))
                                .unwrap_or(p)
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                expected.to_str()
            ),
            C::NotValidForName => "the proxy's certificate is not for this host name".into(),
            C::BadSignature => "the proxy's certificate has a bad signature".into(),
            C::Revoked => "the proxy's certificate is revoked".into(),
            C::BadEncoding => "the proxy's certificate is not valid DER".into(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "the proxy's certificate is not for TLS servers (extended key usage)".into()
            }
            C::Other(other) if is_ca_as_end_entity(other) => {
                "the proxy's certificate is a CA certificate, not a server certificate (give that very certificate to --upstream-ca to pin it, or issue a server certificate from the CA)".into()
            }
            _ => "the proxy's certificate was refused".into(),
        },
        rustls::Error::NoCertificatesPresented => "the proxy presented no certificate".into(),
        rustls::Error::AlertReceived(alert) => {
            format!("the proxy ended the handshake with the TLS alert {}", u8::from(*alert))
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } | rustls::Error::InappropriateHandshakeMessage { .. } => {
            "the proxy does not speak TLS here (is it a plain http:// proxy?)".into()
        }
        rustls::Error::PeerIncompatible(_) => {
            "the proxy supports no TLS version or cipher suite we accept".into()
        }
        _ => "the TLS handshake failed".into(),
    }
}

fn hint(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
            " (its credentials were rejected or are missing: check user:pass in the upstream URL)"
        }
        _ => "",
    }
}

impl ConnectError {
    /// The one classification of this failure.
    pub fn kind(&self) -> ConnectErrorKind {
        match self {
            Self::Dns { target, .. } => ConnectErrorKind::Dns { target: *target },
            Self::Refused { .. } => ConnectErrorKind::Refused,
            Self::Timeout { .. } => ConnectErrorKind::Timeout,
            Self::Unreachable { .. } => ConnectErrorKind::Unreachable,
            Self::HopStatus { status, .. } => ConnectErrorKind::HopStatus(*status),
            Self::HopClosed { .. } => ConnectErrorKind::Incomplete,
            Self::Prohibited { .. } => ConnectErrorKind::Prohibited,
            Self::HopProtocol { .. } => ConnectErrorKind::Protocol,
            Self::HopHeadTooLarge { .. } => ConnectErrorKind::HeadTooLarge,
            Self::SocksReply { reply, .. } => ConnectErrorKind::SocksReply(*reply),
            Self::HopAuth { .. } => ConnectErrorKind::HopAuth,
            Self::ProxyAuth { .. } => {
                ConnectErrorKind::HopStatus(StatusCode::PROXY_AUTHENTICATION_REQUIRED)
            }
            Self::OwnListener { .. } => ConnectErrorKind::Loop,
            Self::FamilyMismatch { .. } => ConnectErrorKind::Unroutable,
            Self::Attempts { kind, .. } => *kind,
            Self::Tls { source, .. } => ConnectErrorKind::Tls {
                certificate: matches!(
                    source,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                ),
            },
        }
    }

    /// Every address of `peer` failed (Happy Eyeballs tried them all): TCP connects to it.
    pub(crate) fn attempts(peer: &str, tried: Vec<(std::net::SocketAddr, io::Error)>) -> Self {
        let refused = tried
            .iter()
            .all(|(_, e)| e.kind() == io::ErrorKind::ConnectionRefused);
        Self::Attempts {
            peer: peer.to_owned(),
            tried: tried
                .into_iter()
                .map(|(a, e)| {
                    let words = match e.kind() {
                        io::ErrorKind::ConnectionRefused => "refused".to_owned(),
                        _ => e.to_string(),
                    };
                    (a, words)
                })
                .collect(),
            kind: if refused {
                ConnectErrorKind::Refused
            } else {
                ConnectErrorKind::Unreachable
            },
        }
    }

    /// Every address of `peer` failed, each dial with its own error (through a hop that was
    /// given addresses): classified as the last one.
    pub(crate) fn dials(peer: &str, tried: Vec<(std::net::SocketAddr, ConnectError)>) -> Self {
        let kind = tried
            .last()
            .map_or(ConnectErrorKind::Unreachable, |(_, e)| e.kind());
        Self::Attempts {
            peer: peer.to_owned(),
            tried: tried.into_iter().map(|(a, e)| (a, e.to_string())).collect(),
            kind,
        }
    }

    /// Maps an I/O error seen while talking to `peer`.
    pub(crate) fn io(peer: &str, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused {
                peer: peer.to_owned(),
            },
            _ => Self::Unreachable {
                peer: peer.to_owned(),
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError as C;

    /// TLS failures read in words, never as Rust debug strings.
    #[test]
    fn tls_failures_in_words() {
        let words = |c: C| tls_words(&rustls::Error::InvalidCertificate(c));
        assert!(words(C::UnknownIssuer).contains("--upstream-ca"));
        let expired = words(C::ExpiredContext {
            time: rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000)),
            not_after: rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
                1_700_000_000,
            )),
        });
        assert_eq!(
            expired,
            "the proxy's certificate expired on 2023-11-14T22:13:20Z"
        );
        let name = words(C::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("proxy.test").unwrap(),
            presented: vec!["DnsName(\"other.test\")".into()],
        });
        assert!(
            name.starts_with("the proxy's certificate is for") && name.ends_with("not proxy.test"),
            "{name}"
        );
        for e in [
            rustls::Error::InvalidCertificate(C::BadSignature),
            rustls::Error::NoCertificatesPresented,
            rustls::Error::General("x".into()),
        ] {
            let w = tls_words(&e);
            assert!(!w.contains('(') || w.contains("--"), "{w}");
            assert!(!w.contains("Error") && !w.contains("::"), "{w}");
        }
    }
}
