//! `ProxyError` and the one place that turns any failure into what the client sees.
//!
//! Every error response is: the status, a `Proxy-Status` header (RFC 9209) naming us, the
//! error type and a human `details` string (plus `received-status` when an upstream answered),
//! and a one-line `text/plain` body saying the same. Details name hops by `host:port`, never by
//! their credentials.

use std::error::Error as _;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Body;
use super::headers::Via;
use crate::outbound::{ConnectError, ConnectErrorKind, SocksReply};
use crate::pool::PoolError;
use crate::target::TargetError;

/// Everything that can go wrong while handling one client request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("request loops back to this proxy: Via already names \"{0}\"")]
    Loop(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("blocked by {0}")]
    Blocked(String),
    #[error("the next hop failed while forwarding: {0}")]
    Forward(#[source] hyper::Error),
    #[error("{peer} sent no response head within {}", humantime::format_duration(*.after))]
    ResponseTimeout {
        peer: String,
        after: std::time::Duration,
    },
}

/// What a failure means on the wire.
struct Verdict {
    status: StatusCode,
    error_type: &'static str,
    received: Option<StatusCode>,
}

fn verdict(status: StatusCode, error_type: &'static str) -> Verdict {
    Verdict {
        status,
        error_type,
        received: None,
    }
}

fn connect_verdict(kind: ConnectErrorKind) -> Verdict {
    match kind {
        ConnectErrorKind::Dns => verdict(StatusCode::BAD_GATEWAY, "dns_error"),
        ConnectErrorKind::Refused => verdict(StatusCode::BAD_GATEWAY, "connection_refused"),
        ConnectErrorKind::Timeout => verdict(StatusCode::GATEWAY_TIMEOUT, "connection_timeout"),
        ConnectErrorKind::Unreachable => {
            verdict(StatusCode::BAD_GATEWAY, "destination_unavailable")
        }
        ConnectErrorKind::HopStatus(s) => {
            let (status, error_type) = match s {
                // An upstream that saw a loop: the chain leads back to us.
                StatusCode::LOOP_DETECTED => (StatusCode::LOOP_DETECTED, "proxy_loop_detected"),
                StatusCode::FORBIDDEN | StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                    (StatusCode::BAD_GATEWAY, "http_request_denied")
                }
                _ => (StatusCode::BAD_GATEWAY, "destination_unavailable"),
            };
            Verdict {
                status,
                error_type,
                received: Some(s),
            }
        }
        ConnectErrorKind::Incomplete => {
            verdict(StatusCode::BAD_GATEWAY, "http_response_incomplete")
        }
        ConnectErrorKind::Protocol => verdict(StatusCode::BAD_GATEWAY, "http_protocol_error"),
        ConnectErrorKind::HeadTooLarge => {
            verdict(StatusCode::BAD_GATEWAY, "http_response_header_section_size")
        }
        ConnectErrorKind::SocksReply(reply) => match reply {
            SocksReply::ConnectionRefused => verdict(StatusCode::BAD_GATEWAY, "connection_refused"),
            SocksReply::NetworkUnreachable => {
                verdict(StatusCode::BAD_GATEWAY, "destination_ip_unroutable")
            }
            SocksReply::NotAllowed => verdict(StatusCode::BAD_GATEWAY, "destination_ip_prohibited"),
            SocksReply::TtlExpired => verdict(StatusCode::GATEWAY_TIMEOUT, "connection_timeout"),
            _ => verdict(StatusCode::BAD_GATEWAY, "destination_unavailable"),
        },
        ConnectErrorKind::HopAuth => verdict(StatusCode::BAD_GATEWAY, "http_request_denied"),
        ConnectErrorKind::Tls { certificate: true } => {
            verdict(StatusCode::BAD_GATEWAY, "tls_certificate_error")
        }
        ConnectErrorKind::Tls { certificate: false } => {
            verdict(StatusCode::BAD_GATEWAY, "tls_protocol_error")
        }
    }
}

impl ProxyError {
    fn verdict(&self) -> Verdict {
        match self {
            Self::Target(_) | Self::BadRequest(_) => {
                verdict(StatusCode::BAD_REQUEST, "http_request_error")
            }
            Self::Loop(_) => verdict(StatusCode::LOOP_DETECTED, "proxy_loop_detected"),
            Self::Connect(e) => connect_verdict(e.kind()),
            Self::Pool(e) => match e.last() {
                Some(last) => connect_verdict(last.kind()),
                None => verdict(StatusCode::BAD_GATEWAY, "destination_unavailable"),
            },
            Self::Blocked(_) => verdict(StatusCode::FORBIDDEN, "http_request_denied"),
            Self::ResponseTimeout { .. } => {
                verdict(StatusCode::GATEWAY_TIMEOUT, "http_response_timeout")
            }
            // Before `is_parse`, which is true for an oversized head too.
            Self::Forward(h) if h.is_parse_too_large() => {
                verdict(StatusCode::BAD_GATEWAY, "http_response_header_section_size")
            }
            Self::Forward(h) if h.is_parse() || h.is_parse_status() => {
                verdict(StatusCode::BAD_GATEWAY, "http_protocol_error")
            }
            Self::Forward(h) if h.is_incomplete_message() || h.is_canceled() || h.is_closed() => {
                verdict(StatusCode::BAD_GATEWAY, "http_response_incomplete")
            }
            Self::Forward(_) => verdict(StatusCode::BAD_GATEWAY, "connection_terminated"),
        }
    }

    /// One line for the client and the log.
    pub fn details(&self) -> String {
        match self {
            Self::Forward(e) => {
                let mut out = self.to_string();
                let mut src = e.source();
                while let Some(s) = src {
                    out.push_str(": ");
                    out.push_str(&s.to_string());
                    src = s.source();
                }
                out
            }
            other => other.to_string(),
        }
    }
}

/// Builds the client-facing response for `err`.
pub fn error_response(via: &Via, err: &ProxyError) -> Response<Body> {
    let v = err.verdict();
    let details = err.details();
    let mut status_value = format!("{}; error={}", via.pseudonym(), v.error_type);
    if let Some(received) = v.received {
        status_value.push_str(&format!("; received-status={}", received.as_u16()));
    }
    status_value.push_str("; details=");
    push_sf_string(&mut status_value, &details);

    let body = format!(
        "{} {}: {details}\n",
        v.status.as_u16(),
        v.status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = v.status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::try_from(status_value) {
        headers.insert(HeaderName::from_static("proxy-status"), value);
    }
    resp
}

/// Appends `s` as an RFC 8941 sf-string: printable ASCII only, `"` and `\` escaped.
fn push_sf_string(out: &mut String, s: &str) {
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

    #[test]
    fn proxy_status_is_a_valid_structured_field() {
        let via = Via::new("viaduct").unwrap();
        let err = ProxyError::Connect(ConnectError::HopStatus {
            peer: "upstream 127.0.0.1:3128".into(),
            status: StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        });
        let resp = error_response(&via, &err);
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        let ps = resp.headers()["proxy-status"].to_str().unwrap();
        assert!(
            ps.starts_with("viaduct; error=http_request_denied; received-status=407; details=\"upstream 127.0.0.1:3128 answered 407"),
            "{ps}"
        );
        let mut s = String::new();
        push_sf_string(&mut s, "a \"b\" \\ é");
        assert_eq!(s, r#""a \"b\" \\ ?""#);
    }
}
