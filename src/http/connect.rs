//! CONNECT: dial first, answer 200 only once the target is reachable, then relay.
//!
//! This ordering is the fix for the first version's bug (and the trap in hyper's own proxy
//! example, which answers before dialing): the client is told "established" only when the
//! upstream said 2xx or the target accepted TCP, and any failure becomes a proper error status.
//! After the 200, hyper hands over the raw client connection (`hyper::upgrade::on`), including
//! any bytes the client sent early (optimistic data such as a pipelined TLS ClientHello).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use super::client_io::{ClientIo, ConnState};
use super::respond::ProxyError;
use super::{Body, Http};
use crate::BoxError;
use crate::relay::ClientEnd;
use crate::session::Client;
use crate::target::Target;

/// Handles one CONNECT request.
pub async fn handle(
    http: &Arc<Http>,
    mut req: Request<Incoming>,
    client: &Client,
    conn_state: &Arc<ConnState>,
) -> Result<Response<Body>, ProxyError> {
    let target = Target::from_connect_uri(req.uri())?;
    let started = Instant::now();
    let reached = http.core().open_tunnel(&target, client).await?;
    tracing::debug!(%target, elapsed_ms = started.elapsed().as_millis() as u64, "target reachable; answering 200");
    let on_upgrade = hyper::upgrade::on(&mut req);
    let admission = conn_state.tunnel_hold();
    http.core().spawn_tunnel(
        crate::session::TunnelKind::Connect,
        200,
        target.to_string(),
        client,
        admission,
        async move {
            let (client, early) = client_end(on_upgrade.await?)?;
            Ok(crate::session::Ends {
                client,
                early,
                target: reached.value,
                member: reached.member,
            })
        },
    );
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

/// The client's end of an upgraded connection, for the relay: the plain TCP socket and the
/// bytes hyper had already read from it when it can be had (zero-copy), else the stream as is.
pub(crate) fn client_end(upgraded: Upgraded) -> Result<(ClientEnd, Bytes), BoxError> {
    match upgraded.downcast::<TokioIo<ClientIo>>() {
        Ok(parts) => {
            let tcp = parts
                .io
                .into_inner()
                .into_tcp()
                .ok_or("the client socket is gone")?;
            Ok((ClientEnd::Tcp(tcp), parts.read_buf))
        }
        Err(upgraded) => Ok((
            ClientEnd::Other(Box::new(TokioIo::new(upgraded))),
            Bytes::new(),
        )),
    }
}
