//! Per-request dispatch: loop check, then CONNECT or forwarding; errors become responses here
//! (through `respond`), and every request gets one access line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::Body;
use super::respond::{ProxyError, error_response};
use super::{connect, forward};
use crate::proxy::Proxy;

/// Serves one request from `peer`. Never fails: errors are answered with a status.
pub async fn handle(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let res = if proxy.via().seen_in(req.headers()) {
        Err(ProxyError::Loop(proxy.via().pseudonym().to_owned()))
    } else if method == Method::CONNECT {
        connect::handle(&proxy, req).await
    } else {
        forward::handle(&proxy, req).await
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
