//! Plain HTTP forwarding of absolute-form requests (`GET http://host/path HTTP/1.1`).
//!
//! The request goes out through the route's pooled client: origin-form with `Host` when the
//! connection ends at the origin, absolute-form plus the upstream's `Proxy-Authorization` when
//! it ends at an HTTP upstream. Bodies stream both ways untouched (hyper re-frames them);
//! hop-by-hop headers are dropped both ways and `Via` added. An `Upgrade` request keeps its
//! `Upgrade`/`Connection` pair, and a 101 answer turns the exchange into a relayed tunnel.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::Body;
use super::connect::spawn_tunnel;
use super::headers::{is_upgrade, strip_hop_by_hop};
use super::respond::ProxyError;
use crate::outbound::{BoxIo, ConnectError};
use crate::proxy::Proxy;
use crate::target::Target;

/// Forwards one absolute-form request and returns the origin's (or upstream's) response.
pub async fn handle(
    proxy: &Arc<Proxy>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    match req.uri().scheme_str() {
        Some("http") => {}
        Some(_) => {
            return Err(ProxyError::BadRequest(
                "only http:// URLs can be forwarded; use CONNECT for https",
            ));
        }
        None => {
            return Err(ProxyError::BadRequest(
                "this is a proxy: send absolute-form requests (GET http://host/path) or CONNECT host:port",
            ));
        }
    }
    let authority = req
        .uri()
        .authority()
        .cloned()
        .ok_or(ProxyError::BadRequest("the URL has no host"))?;
    let target = Target::from_authority(&authority, Some(80))?;

    let upgrading = is_upgrade(req.headers());
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let received = req.version();
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrading);
    // RFC 9112 3.2.2: a proxy replaces Host with the authority of the absolute-form target.
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        headers.insert(header::HOST, host);
    }
    proxy.via().append(headers, received);
    let upstream = proxy.route().absolute_form_hop();
    if let Some(auth) = upstream.and_then(|hop| hop.proxy_authorization.clone()) {
        headers.insert(header::PROXY_AUTHORIZATION, auth);
    }
    // We speak HTTP/1.1 to the next hop whatever the client spoke (RFC 9110 2.5).
    *req.version_mut() = Version::HTTP_11;

    let mut resp = proxy
        .client()
        .request(req)
        .await
        .map_err(ProxyError::Forward)?;

    if let Some(hop) =
        upstream.filter(|_| resp.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED)
    {
        // The challenge is for our credentials, not the client's: never pass it on.
        return Err(ConnectError::HopStatus {
            peer: hop.to_string(),
            status: resp.status(),
        }
        .into());
    }

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let remote_upgrade = hyper::upgrade::on(&mut resp);
        spawn_tunnel(proxy, "UPGRADE", 101, target.to_string(), async move {
            let remote: BoxIo = Box::new(TokioIo::new(remote_upgrade.await?));
            Ok((TokioIo::new(client_upgrade.await?), remote))
        });
    }
    let received = resp.version();
    strip_hop_by_hop(resp.headers_mut(), switching);
    proxy.via().append(resp.headers_mut(), received);
    Ok(resp.map(|body| body.boxed()))
}
