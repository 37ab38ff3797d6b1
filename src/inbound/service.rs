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

use super::Body;
use super::client_io::ConnState;
use super::respond::{ProxyError, error_response};
use super::{connect, forward};
use crate::proxy::Proxy;
use crate::route::Action;
use crate::target::Target;

/// Who sent a request, as far as routing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId {
    /// The user name from the client's `Proxy-Authorization: Basic`, without a `-session-ID`
    /// suffix. Not authenticated here: it selects rules and sessions, it grants nothing.
    pub user: Option<String>,
    /// The sticky-session key: the `-session-ID` suffix of the user name, else the client IP.
    pub session: String,
}

impl ClientId {
    pub fn from_request(headers: &HeaderMap, peer: SocketAddr) -> Self {
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
        match name {
            Some(name) => match name.rsplit_once("-session-") {
                Some((user, session)) if !session.is_empty() => Self {
                    user: Some(user.to_owned()),
                    session: session.to_owned(),
                },
                _ => Self {
                    user: Some(name),
                    session: peer.ip().to_string(),
                },
            },
            None => Self {
                user: None,
                session: peer.ip().to_string(),
            },
        }
    }
}

/// Where `target` goes for `client` under the routing in force now; blocked requests are
/// refused here.
pub(crate) async fn route_for(
    proxy: &Proxy,
    target: &Target,
    client: &ClientId,
) -> Result<Action, ProxyError> {
    let router = proxy.router();
    let decision = router
        .decide(target, client.user.as_deref(), proxy.resolver())
        .await;
    tracing::debug!(%target, action = %decision.action, reason = %decision.reason, "routing decision");
    match decision.action {
        Action::Block => Err(ProxyError::Blocked(decision.reason.to_string())),
        action => Ok(action.clone()),
    }
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
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
    peer: SocketAddr,
    conn: Arc<ConnState>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let client = ClientId::from_request(req.headers(), peer);
    let res = if proxy.via().seen_in(req.headers()) {
        Err(ProxyError::Loop(proxy.via().pseudonym().to_owned()))
    } else if method == Method::CONNECT {
        connect::handle(&proxy, req, &client, &conn).await
    } else if let Err(e) = check_framing(&req) {
        Err(e)
    } else {
        forward::handle(&proxy, req, &client, &conn).await
    };
    let resp = match res {
        // A successful CONNECT is logged when its tunnel closes, with the bytes it carried.
        Ok(resp) if method == Method::CONNECT => return Ok(resp),
        Ok(resp) => resp,
        Err(err) => {
            tracing::debug!(error = %err.details(), "request failed");
            error_response(proxy.via(), &err)
        }
    };
    tracing::info!(
        %peer,
        %method,
        %uri,
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(auth: Option<&str>) -> ClientId {
        let mut h = HeaderMap::new();
        if let Some(creds) = auth {
            let v = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(creds)
            );
            h.insert(header::PROXY_AUTHORIZATION, v.parse().unwrap());
        }
        ClientId::from_request(&h, "192.0.2.9:5000".parse().unwrap())
    }

    #[test]
    fn session_key_from_user_suffix_else_ip() {
        assert_eq!(
            id(Some("alice-session-42:x")),
            ClientId {
                user: Some("alice".into()),
                session: "42".into()
            }
        );
        assert_eq!(
            id(Some("bob:pw")),
            ClientId {
                user: Some("bob".into()),
                session: "192.0.2.9".into()
            }
        );
        assert_eq!(
            id(None),
            ClientId {
                user: None,
                session: "192.0.2.9".into()
            }
        );
    }
}
