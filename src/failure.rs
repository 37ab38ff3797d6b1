//! The one classifier. Every failure, whichever protocol carried the request and whichever
//! stage it came from, is described as a [`Failure`], and [`verdict`] alone decides what it
//! means: the HTTP status, the RFC 9209 `Proxy-Status` error token (also its metric label),
//! whether another pool member may be tried, whether the upstream is to blame for its health,
//! and the SOCKS5 reply code.
//!
//! Stages keep their own error types (`ConnectError` for dialing, `PoolError`, the HTTP
//! listener's `ProxyError`); each says which `Failure` it is, and nothing else maps errors.

use http::StatusCode;

use crate::upstream::{ConnectErrorKind, SocksReply};

/// What went wrong, in protocol-neutral terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Reaching the target, or an upstream on the way, failed.
    Connect(ConnectErrorKind),
    /// A rule (or `connect_ports`) refused the destination.
    Blocked,
    /// The client gave no credentials, or wrong ones, where `[auth]` asks for them.
    AuthRequired,
    /// The client's address sent too many wrong credentials; it waits out a cool-down.
    AuthThrottled,
    /// The client's address is not among the allowed clients.
    ClientDenied,
    /// A pool had no healthy member to try.
    NoHealthyMember,
    /// The request would come back to this proxy (its own listener, or `Via` names us).
    Loop,
    /// The client's request is malformed (target, framing, body).
    BadRequest,
    /// The client's request head is larger than we accept.
    HeadTooLarge,
    /// The client's request target is longer than we accept.
    UriTooLong,
    /// The client's request head or body did not arrive in time.
    ClientTimeout,
    /// A connection limit was reached.
    LimitReached,
    /// The client opened connections faster than its rate allows (`new_connections_per_ip`).
    RateLimited,
    /// The next hop's response head did not arrive in time.
    ResponseTimeout,
    /// The next hop's response is not valid HTTP (or a `101` nobody asked for).
    ResponseProtocol,
    /// The next hop's response head is larger than we accept.
    ResponseHeadTooLarge,
    /// The next hop closed before its response was complete.
    ResponseIncomplete,
    /// Forwarding failed otherwise after the request was handed over.
    ForwardFailed,
    /// Something inside the proxy failed (a PAC script that threw or did not return).
    Internal,
}

/// What a failure means, for every consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The status an HTTP client gets.
    pub status: StatusCode,
    /// The `Proxy-Status` error type (RFC 9209 section 2.3); also the metric label.
    pub error: &'static str,
    /// The status an upstream answered, for `Proxy-Status: received-status`.
    pub received: Option<StatusCode>,
    /// Another pool member may succeed where this one failed.
    pub retry: bool,
    /// The upstream itself failed (counted against its health), rather than the target.
    pub blame_hop: bool,
    /// The SOCKS5 reply code (RFC 1928 section 6).
    pub socks_reply: u8,
}

const fn v(status: StatusCode, error: &'static str, socks_reply: u8) -> Verdict {
    Verdict {
        status,
        error,
        received: None,
        retry: false,
        blame_hop: false,
        socks_reply,
    }
}

/// The verdict on `failure`. The whole mapping is this one function.
pub fn verdict(failure: Failure) -> Verdict {
    const GW: StatusCode = StatusCode::BAD_GATEWAY;
    const GT: StatusCode = StatusCode::GATEWAY_TIMEOUT;
    match failure {
        Failure::Connect(kind) => {
            let mut out = connect(kind);
            // Reaching the target through another member may work; a loop or a refused
            // destination never does.
            out.retry = !matches!(kind, ConnectErrorKind::Loop | ConnectErrorKind::Prohibited);
            out
        }
        Failure::Blocked => v(StatusCode::FORBIDDEN, "http_request_denied", 0x02),
        Failure::AuthRequired => v(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "http_request_denied",
            0x02,
        ),
        Failure::AuthThrottled => v(StatusCode::TOO_MANY_REQUESTS, "http_request_denied", 0x02),
        Failure::ClientDenied => v(StatusCode::FORBIDDEN, "http_request_denied", 0x02),
        Failure::NoHealthyMember => v(GW, "destination_unavailable", 0x01),
        Failure::Loop => v(StatusCode::LOOP_DETECTED, "proxy_loop_detected", 0x02),
        Failure::BadRequest => v(StatusCode::BAD_REQUEST, "http_request_error", 0x01),
        Failure::HeadTooLarge => v(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "http_request_error",
            0x01,
        ),
        Failure::UriTooLong => v(StatusCode::URI_TOO_LONG, "http_request_error", 0x01),
        Failure::ClientTimeout => v(StatusCode::REQUEST_TIMEOUT, "http_request_error", 0x01),
        Failure::LimitReached => v(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection_limit_reached",
            0x01,
        ),
        Failure::RateLimited => v(
            StatusCode::TOO_MANY_REQUESTS,
            "connection_limit_reached",
            0x02,
        ),
        Failure::ResponseTimeout => v(GT, "http_response_timeout", 0x06),
        Failure::ResponseProtocol => v(GW, "http_protocol_error", 0x01),
        Failure::ResponseHeadTooLarge => v(GW, "http_response_header_section_size", 0x01),
        Failure::ResponseIncomplete => v(GW, "http_response_incomplete", 0x01),
        Failure::ForwardFailed => v(GW, "connection_terminated", 0x01),
        Failure::Internal => v(GW, "proxy_internal_error", 0x01),
    }
}

fn connect(kind: ConnectErrorKind) -> Verdict {
    const GW: StatusCode = StatusCode::BAD_GATEWAY;
    const GT: StatusCode = StatusCode::GATEWAY_TIMEOUT;
    let hop = |mut out: Verdict| {
        out.blame_hop = true;
        out
    };
    match kind {
        // The target's own name not resolving is not the upstream's fault.
        ConnectErrorKind::Dns { target } => Verdict {
            blame_hop: !target,
            ..v(GW, "dns_error", 0x04)
        },
        ConnectErrorKind::Refused => hop(v(GW, "connection_refused", 0x05)),
        ConnectErrorKind::Timeout => hop(v(GT, "connection_timeout", 0x06)),
        ConnectErrorKind::Unreachable => hop(v(GW, "destination_unavailable", 0x04)),
        ConnectErrorKind::HopStatus(s) => {
            let (status, error) = match s {
                // An upstream that saw a loop: the chain leads back to us.
                StatusCode::LOOP_DETECTED => (StatusCode::LOOP_DETECTED, "proxy_loop_detected"),
                StatusCode::FORBIDDEN | StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                    (GW, "http_request_denied")
                }
                _ => (GW, "destination_unavailable"),
            };
            Verdict {
                received: Some(s),
                // Its 502/504: it worked, the target did not answer it.
                blame_hop: !matches!(s, StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT),
                ..v(status, error, 0x01)
            }
        }
        ConnectErrorKind::Incomplete => hop(v(GW, "http_response_incomplete", 0x01)),
        ConnectErrorKind::Protocol => hop(v(GW, "http_protocol_error", 0x01)),
        ConnectErrorKind::HeadTooLarge => hop(v(GW, "http_response_header_section_size", 0x01)),
        ConnectErrorKind::SocksReply(reply) => match reply {
            // The hop worked and reports on the target: not its fault.
            SocksReply::ConnectionRefused => v(GW, "connection_refused", 0x05),
            SocksReply::NetworkUnreachable => v(GW, "destination_ip_unroutable", 0x03),
            SocksReply::HostUnreachable => v(GW, "destination_unavailable", 0x04),
            SocksReply::TtlExpired => v(GT, "connection_timeout", 0x06),
            SocksReply::NotAllowed => hop(v(GW, "destination_ip_prohibited", 0x02)),
            _ => hop(v(GW, "destination_unavailable", 0x01)),
        },
        ConnectErrorKind::HopAuth => hop(v(GW, "http_request_denied", 0x01)),
        ConnectErrorKind::Tls { certificate: true } => hop(v(GW, "tls_certificate_error", 0x01)),
        ConnectErrorKind::Tls { certificate: false } => hop(v(GW, "tls_protocol_error", 0x01)),
        ConnectErrorKind::Loop => v(StatusCode::LOOP_DETECTED, "proxy_loop_detected", 0x02),
        ConnectErrorKind::Prohibited => v(StatusCode::FORBIDDEN, "destination_ip_prohibited", 0x02),
        // No address of the family the route binds: another member may leave from another.
        ConnectErrorKind::Unroutable => v(GW, "destination_ip_unroutable", 0x03),
    }
}

/// Appends `s` double-quoted, printable ASCII only (others become `?`), `"` and `\` escaped:
/// both an RFC 8941 sf-string (the `details` of `Proxy-Status`) and a JavaScript string
/// literal (the PAC file).
pub fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members are blamed for their own faults only; the target's faults move on without
    /// ejecting anyone; a loop is never retried.
    #[test]
    fn blame_and_retry() {
        let c = |k| verdict(Failure::Connect(k));
        assert!(c(ConnectErrorKind::Refused).blame_hop);
        assert!(!c(ConnectErrorKind::Dns { target: true }).blame_hop);
        assert!(c(ConnectErrorKind::Dns { target: false }).blame_hop);
        assert!(
            c(ConnectErrorKind::HopStatus(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED
            ))
            .blame_hop
        );
        assert!(!c(ConnectErrorKind::HopStatus(StatusCode::BAD_GATEWAY)).blame_hop);
        assert!(!c(ConnectErrorKind::SocksReply(SocksReply::HostUnreachable)).blame_hop);
        assert!(c(ConnectErrorKind::Refused).retry);
        assert!(!c(ConnectErrorKind::Loop).retry);
        let p = c(ConnectErrorKind::Prohibited);
        assert_eq!(
            (p.status, p.error, p.retry, p.blame_hop),
            (
                StatusCode::FORBIDDEN,
                "destination_ip_prohibited",
                false,
                false
            )
        );
        let denied = c(ConnectErrorKind::HopStatus(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        ));
        assert_eq!(
            (denied.status, denied.error, denied.received),
            (
                StatusCode::BAD_GATEWAY,
                "http_request_denied",
                Some(StatusCode::PROXY_AUTHENTICATION_REQUIRED)
            )
        );
    }

    /// SOCKS reply codes follow RFC 1928: not allowed, network/host unreachable, refused, TTL.
    #[test]
    fn socks_replies() {
        let r = |f| verdict(f).socks_reply;
        assert_eq!(r(Failure::Blocked), 0x02);
        assert_eq!(
            r(Failure::Connect(ConnectErrorKind::Dns { target: true })),
            0x04
        );
        assert_eq!(r(Failure::Connect(ConnectErrorKind::Refused)), 0x05);
        assert_eq!(r(Failure::Connect(ConnectErrorKind::Timeout)), 0x06);
        assert_eq!(
            r(Failure::Connect(ConnectErrorKind::SocksReply(
                SocksReply::NetworkUnreachable
            ))),
            0x03
        );
        assert_eq!(r(Failure::ForwardFailed), 0x01);
    }
}
