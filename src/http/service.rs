//! Per-request dispatch: loop check, who the client is (for rules and sticky sessions), then
//! CONNECT or forwarding; errors become responses here (through `respond`), and every request
//! gets one access line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use http::{HeaderMap, Method, Request, Response, header};
use hyper::body::Incoming;

use super::client_io::ConnState;
use super::respond::{ProxyError, error_response};
use super::{Body, Http, connect, forward};
use crate::session::Client;

/// The client as the session core knows it: its address and the user name from its
/// `Proxy-Authorization: Basic` (not authenticated here: it selects rules and sessions).
pub fn client_from_request(headers: &HeaderMap, peer: SocketAddr) -> Client {
    let name = headers
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|creds| creds.split_once(':').map(|(u, _)| u.to_owned()));
    Client::new(peer, name)
}

/// Refuses requests whose body framing an upstream could read differently from us (RFC 9112
/// 6.1 and 6.3): both `Transfer-Encoding` and `Content-Length`, `Transfer-Encoding` in an
/// HTTP/1.0 request, or any transfer coding but a single `chunked` (we could not pass others
/// on: the body is re-framed). hyper has already refused malformed lengths, duplicate
/// differing lengths, obs-fold and whitespace before colons.
fn check_framing(req: &Request<Incoming>) -> Result<(), ProxyError> {
    let headers = req.headers();
    let te = headers.get_all(header::TRANSFER_ENCODING);
    if te.iter().next().is_none() {
        return Ok(());
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "ambiguous framing: both Transfer-Encoding and Content-Length",
        ));
    }
    if req.version() == http::Version::HTTP_10 {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    let mut codings = te
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\0").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (Some(c), None) if c.eq_ignore_ascii_case("chunked") => Ok(()),
        _ => Err(ProxyError::BadRequest(
            "only Transfer-Encoding: chunked is accepted",
        )),
    }
}

/// Serves one request from `peer`. Never fails: errors are answered with a status.
pub async fn handle(
    http: Arc<Http>,
    req: Request<Incoming>,
    peer: SocketAddr,
    conn: Arc<ConnState>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let client = client_from_request(req.headers(), peer);
    let res = if http.via().seen_in(req.headers()) {
        Err(ProxyError::Loop(http.via().pseudonym().to_owned()))
    } else if method == Method::CONNECT {
        connect::handle(&http, req, &client, &conn).await
    } else if let Err(e) = check_framing(&req) {
        Err(e)
    } else {
        forward::handle(&http, req, &client, &conn).await
    };
    let resp = match res {
        // A successful CONNECT is logged when its tunnel closes, with the bytes it carried.
        Ok(resp) if method == Method::CONNECT => return Ok(resp),
        Ok(resp) => resp,
        Err(err) => {
            tracing::debug!(error = %err.details(), "request failed");
            error_response(http.via(), &err)
        }
    };
    http.core().log_request(
        &client,
        method.as_str(),
        &uri,
        resp.status().as_u16(),
        started,
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The user name (and its session suffix) comes from `Proxy-Authorization: Basic`.
    #[test]
    fn client_from_basic_credentials() {
        let id = |auth: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(creds) = auth {
                let v = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(creds)
                );
                h.insert(header::PROXY_AUTHORIZATION, v.parse().unwrap());
            }
            let c = client_from_request(&h, "192.0.2.9:5000".parse().unwrap());
            (c.user, c.session)
        };
        assert_eq!(
            id(Some("alice-session-42:x")),
            (Some("alice".into()), "42".into())
        );
        assert_eq!(id(Some("bob:pw")), (Some("bob".into()), "192.0.2.9".into()));
        assert_eq!(id(None), (None, "192.0.2.9".into()));
    }
}
