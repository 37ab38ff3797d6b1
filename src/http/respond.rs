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
use crate::failure::{Failure, verdict};
use crate::relay::body::pace_error;
use crate::session::SessionError;
use crate::target::TargetError;
use crate::upstream::ConnectError;

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
    Session(#[from] SessionError),
    #[error("the next hop failed while forwarding: {0}")]
    Forward(#[source] hyper::Error),
    #[error("{peer} sent no response head within {}", humantime::format_duration(*.after))]
    ResponseTimeout {
        peer: String,
        after: std::time::Duration,
    },
    #[error("{0} answered 101 Switching Protocols, but no protocol switch was asked for")]
    UnsolicitedSwitch(String),
    #[error("the request body from the client failed: {0}")]
    RequestBody(#[source] crate::BoxError),
}

impl ProxyError {
    /// Which failure this is; what it means is decided in [`crate::failure::verdict`].
    pub fn failure(&self) -> Failure {
        match self {
            Self::Target(_) | Self::BadRequest(_) => Failure::BadRequest,
            Self::Loop(_) => Failure::Loop,
            Self::Session(e) => e.failure(),
            Self::ResponseTimeout { .. } => Failure::ResponseTimeout,
            Self::UnsolicitedSwitch(_) => Failure::ResponseProtocol,
            Self::RequestBody(e) if pace_error(&**e).is_some() => Failure::ClientTimeout,
            Self::RequestBody(_) => Failure::BadRequest,
            // The client's own body: too slow (408), or malformed / cut short (400). Neither is
            // the next hop's fault.
            Self::Forward(h) if pace_error(h).is_some_and(|p| p.is_client()) => {
                Failure::ClientTimeout
            }
            Self::Forward(h) if client_body_error(h).is_some() => Failure::BadRequest,
            // Before `is_parse`, which is true for an oversized head too.
            Self::Forward(h) if h.is_parse_too_large() => Failure::ResponseHeadTooLarge,
            Self::Forward(h) if h.is_parse() || h.is_parse_status() => Failure::ResponseProtocol,
            Self::Forward(h) if h.is_incomplete_message() || h.is_canceled() || h.is_closed() => {
                Failure::ResponseIncomplete
            }
            Self::Forward(_) => Failure::ForwardFailed,
        }
    }

    /// One line for the client and the log.
    pub fn details(&self) -> String {
        match self {
            Self::Forward(h) => match (pace_error(h), client_body_error(h)) {
                (Some(p), _) if p.is_client() => p.to_string(),
                (_, Some(e)) => {
                    format!("the request body from the client is malformed or cut short: {e}")
                }
                _ => self.chain(),
            },
            Self::RequestBody(e) => match pace_error(&**e) {
                Some(p) => p.to_string(),
                None => format!("the request body from the client is malformed or cut short: {e}"),
            },
            other => other.to_string(),
        }
    }

    fn chain(&self) -> String {
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

impl From<ConnectError> for ProxyError {
    fn from(e: ConnectError) -> Self {
        Self::Session(SessionError::Connect(e))
    }
}

/// The error of the client's request body behind a forwarding failure: hyper's client reports a
/// failing request body as a user error whose cause is the inbound connection's own error.
fn client_body_error(h: &hyper::Error) -> Option<&hyper::Error> {
    if !h.is_user() {
        return None;
    }
    let mut cur = h.source();
    while let Some(e) = cur {
        if let Some(inbound) = e.downcast_ref::<hyper::Error>() {
            return Some(inbound);
        }
        cur = e.source();
    }
    None
}

/// The three parts every error answer is made of: status, `Proxy-Status` value, one-line body.
fn parts(pseudonym: &str, failure: Failure, details: &str) -> (StatusCode, String, String) {
    let v = verdict(failure);
    let mut status_value = format!("{pseudonym}; error={}", v.error);
    if let Some(received) = v.received {
        status_value.push_str(&format!("; received-status={}", received.as_u16()));
    }
    status_value.push_str("; details=");
    // An RFC 8941 sf-string: printable ASCII only, `"` and `\` escaped.
    crate::failure::push_quoted(&mut status_value, details);
    let body = format!(
        "{} {}: {details}\n",
        v.status.as_u16(),
        v.status.canonical_reason().unwrap_or("")
    );
    (v.status, status_value, body)
}

/// Builds the client-facing response for `err`.
pub fn error_response(via: &Via, err: &ProxyError) -> Response<Body> {
    let (status, proxy_status, body) = parts(via.pseudonym(), err.failure(), &err.details());
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::try_from(proxy_status) {
        headers.insert(HeaderName::from_static("proxy-status"), value);
    }
    if let ProxyError::Session(SessionError::Auth(auth)) = err {
        if let Some(realm) = auth.challenge()
            && let Ok(value) = HeaderValue::try_from(format!("Basic realm=\"{realm}\""))
        {
            headers.insert(header::PROXY_AUTHENTICATE, value);
        }
        if let Some(after) = auth.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
    }
    resp
}

/// A complete error response as bytes, for the places that answer below hyper (a header-read
/// timeout, a refused connection, hyper's own parse-error answers): the same status line,
/// `Proxy-Status` and one-line body as [`error_response`], and `Connection: close`.
pub fn raw_error(pseudonym: &str, failure: Failure, details: &str) -> Vec<u8> {
    raw_error_after(pseudonym, failure, details, None)
}

/// [`raw_error`] with a `Retry-After` (whole seconds, at least 1) when `retry_after` is set.
pub fn raw_error_after(
    pseudonym: &str,
    failure: Failure,
    details: &str,
    retry_after: Option<std::time::Duration>,
) -> Vec<u8> {
    let (status, proxy_status, body) = parts(pseudonym, failure, details);
    let retry = retry_after.map_or_else(String::new, |after| {
        format!(
            "Retry-After: {}\r\n",
            after.as_secs_f64().ceil().max(1.0) as u64
        )
    });
    format!(
        "HTTP/1.1 {} {}\r\nProxy-Status: {proxy_status}\r\n{retry}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

/// hyper answers some malformed request heads itself (400, 414, 431) before any service sees
/// them, without `Proxy-Status`. Given one write hyper is about to make on a connection that
/// was not handed to a tunnel, returns our answer in its place when the write is exactly such
/// an answer: a 4xx head and nothing else, whose only fields are `connection: close`,
/// `content-length: 0` and `date` (every response we build carries `Proxy-Status`, and every
/// forwarded one our `Via`, so neither can match).
pub fn replace_hyper_error(pseudonym: &str, out: &[u8]) -> Option<Vec<u8>> {
    let rest = out
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| out.strip_prefix(b"HTTP/1.0 "))?;
    if rest.first() != Some(&b'4') || !out.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = std::str::from_utf8(&out[..out.len() - 4]).ok()?;
    let mut close = false;
    for field in head.split("\r\n").skip(1) {
        let (name, value) = field.split_once(':')?;
        match (name.to_ascii_lowercase().as_str(), value.trim()) {
            ("connection", v) if v.eq_ignore_ascii_case("close") => close = true,
            ("content-length", "0") | ("date", _) => {}
            _ => return None,
        }
    }
    if !close {
        return None;
    }
    let code = std::str::from_utf8(rest.get(..3)?)
        .ok()?
        .parse::<u16>()
        .ok()?;
    let (failure, details) = match StatusCode::from_u16(code).ok()? {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            Failure::HeadTooLarge,
            "the request head is larger than this proxy accepts (too many bytes or fields)",
        ),
        StatusCode::URI_TOO_LONG => (Failure::UriTooLong, "the request target is too long"),
        _ => (Failure::BadRequest, "the request head is not valid HTTP/1"),
    };
    Some(raw_error(pseudonym, failure, details))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_status_is_a_valid_structured_field() {
        let via = Via::new("viaduct").unwrap();
        let err = ProxyError::from(ConnectError::HopStatus {
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
        let raw = raw_error("viaduct", Failure::ClientTimeout, "slow \"x\"");
        let raw = String::from_utf8(raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 408 Request Timeout\r\nProxy-Status: viaduct; error=http_request_error; details=\"slow \\\"x\\\"\"\r\n"), "{raw}");
        assert!(
            raw.ends_with("\r\n\r\n408 Request Timeout: slow \"x\"\n"),
            "{raw}"
        );
        // hyper's own answers are replaced; ours and forwarded ones are not.
        let canned = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let ours = String::from_utf8(replace_hyper_error("viaduct", canned).unwrap()).unwrap();
        assert!(
            ours.contains("Proxy-Status: viaduct; error=http_request_error"),
            "{ours}"
        );
        assert!(
            replace_hyper_error(
                "viaduct",
                b"HTTP/1.1 404 Not Found\r\nconnection: close\r\nvia: 1.1 viaduct\r\n\r\n"
            )
            .is_none()
        );
        assert!(
            replace_hyper_error(
                "viaduct",
                b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nmore"
            )
            .is_none()
        );
        assert!(
            replace_hyper_error(
                "viaduct",
                b"HTTP/1.1 400 Bad Request\r\nProxy-Status: viaduct\r\n\r\n"
            )
            .is_none()
        );
        assert!(replace_hyper_error("viaduct", b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        let mut s = String::new();
        crate::failure::push_quoted(&mut s, "a \"b\" \\ é");
        assert_eq!(s, r#""a \"b\" \\ ?""#);
    }
}
