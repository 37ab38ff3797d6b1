//! Per-request dispatch: loop check, who the client is (for rules and sticky sessions), then
//! CONNECT or forwarding; errors become responses here (through `respond`), and every request
//! gets one access line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use http::{HeaderMap, Method, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::client_io::ConnState;
use super::respond::{ProxyError, error_response};
use super::{Body, Http, connect, forward};
use crate::session::Finished;

/// The user name and password of a `Proxy-Authorization: Basic` header, if it has one that
/// decodes. Other schemes count as no credentials (the answer is a Basic challenge).
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::PROXY_AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let creds = String::from_utf8(raw).ok()?;
    let (user, pass) = creds.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
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

/// Runs its closure once, when dropped: the access record of a plain request, written when
/// hyper is done with the response body.
struct Logged(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(log) = self.0.take() {
            log();
        }
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
    // In progress until the response body is done (a tunnel holds its own).
    let in_progress = conn.enter();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let credentials = basic_credentials(req.headers());
    let admitted = if http.via().seen_in(req.headers()) {
        Err(ProxyError::Loop(http.via().pseudonym().to_owned()))
    } else {
        http.core()
            .authenticate(
                peer,
                credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
            )
            .await
            .map_err(ProxyError::from)
    };
    let (client, res) = match admitted {
        // Not let in: no user to name (a claimed name is not one).
        Err(err) => (crate::session::Client::new(peer, None), Err(err)),
        Ok(client) => {
            let res = if method == Method::CONNECT {
                connect::handle(&http, req, &client, &conn).await
            } else if let Err(e) = check_framing(&req) {
                Err(e)
            } else {
                forward::handle(&http, req, &client, &conn).await
            };
            (client, res)
        }
    };
    let protocol = if method == Method::CONNECT {
        "connect"
    } else {
        "http"
    };
    let (resp, failed) = match res {
        // A successful CONNECT or protocol switch is logged when its tunnel closes, with the
        // bytes it carried.
        Ok(resp) if method == Method::CONNECT => return Ok(resp),
        Ok(resp) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => return Ok(resp),
        Ok(resp) => (resp, None),
        Err(err) => {
            let details = err.details();
            tracing::debug!(error = %details, "request failed");
            let error = crate::failure::verdict(err.failure()).error;
            (error_response(http.via(), &err), Some((error, details)))
        }
    };
    // The record is written once the response body has been carried (or abandoned), with
    // the bytes each way: when hyper drops the body.
    let status = resp.status().as_u16();
    let trail = Arc::clone(&client.trail);
    let done = Logged(Some(Box::new(move || {
        drop(in_progress);
        http.core().ledger().request(&Finished {
            client: &client,
            protocol,
            method: method.as_str(),
            target: &uri,
            status,
            error: failed.as_ref().map(|(e, d)| (*e, d.as_str())),
            started,
        });
    })));
    Ok(resp.map(move |body| {
        crate::relay::body::Counted::new(body, move |n| {
            let _ = &done;
            trail.carried(false, n);
        })
        .boxed()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Credentials come from `Proxy-Authorization: Basic`, any case of the scheme; a password
    /// may hold colons; anything else is no credentials.
    #[test]
    fn basic_credentials_decode() {
        let creds = |value: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert(header::PROXY_AUTHORIZATION, v.parse().unwrap());
            }
            basic_credentials(&h)
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            creds(Some(&format!("Basic {}", b64("alice-session-42:p:w")))),
            Some(("alice-session-42".into(), "p:w".into()))
        );
        assert_eq!(
            creds(Some(&format!("basic  {}", b64("bob:x")))),
            Some(("bob".into(), "x".into()))
        );
        assert_eq!(creds(Some(&format!("Bearer {}", b64("bob:x")))), None);
        assert_eq!(creds(Some("Basic !!!")), None);
        assert_eq!(creds(Some(&format!("Basic {}", b64("nocolon")))), None);
        assert_eq!(creds(None), None);
    }
}
