//! CONNECT: dial first, answer 200 only once the target is reachable, then relay.
//!
//! This ordering is the fix for the first version's bug (and the trap in hyper's own proxy
//! example, which answers before dialing): the client is told "established" only when the
//! upstream said 2xx or the target accepted TCP, and any failure becomes a proper error status.
//! After the 200, hyper hands over the raw client connection (`hyper::upgrade::on`), including
//! any bytes the client sent early (optimistic data such as a pipelined TLS ClientHello).

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tracing::Instrument;

use super::Body;
use super::client_io::ConnState;
use super::respond::ProxyError;
use super::service::{ClientId, route_for};
use crate::outbound::BoxIo;
use crate::pool::MemberGuard;
use crate::proxy::{Admission, Proxy};
use crate::reach::reach;
use crate::relay;
use crate::target::Target;

/// Handles one CONNECT request.
pub async fn handle(
    proxy: &Arc<Proxy>,
    mut req: Request<Incoming>,
    client: &ClientId,
    conn_state: &ConnState,
) -> Result<Response<Body>, ProxyError> {
    let target = Target::from_connect_uri(req.uri())?;
    let started = Instant::now();
    let action = route_for(proxy, &target, client).await?;
    let to = target.clone();
    let reached = reach(
        &action,
        Some(&client.session),
        &target,
        proxy.dialer(),
        move |route, dialer| {
            let to = to.clone();
            Box::pin(async move { dialer.tunnel(&route, &to).await })
        },
    )
    .await?;
    let (conn, member) = (reached.value, reached.member);
    tracing::debug!(%target, elapsed_ms = started.elapsed().as_millis() as u64, "target reachable; answering 200");
    let on_upgrade = hyper::upgrade::on(&mut req);
    let admission = conn_state.take_admission();
    spawn_tunnel(
        proxy,
        "CONNECT",
        200,
        target.to_string(),
        admission,
        async move {
            let client = on_upgrade.await?;
            Ok((client, conn, member))
        },
    );
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

/// Runs a tunnel in its own task, tracked for shutdown: waits for both ends (`ends`), relays
/// until done, and logs one access line with bytes each way, duration and why it ended.
pub(crate) fn spawn_tunnel<F>(
    proxy: &Arc<Proxy>,
    method: &'static str,
    status: u16,
    target: String,
    admission: Option<Admission>,
    ends: F,
) where
    F: Future<
            Output = Result<(hyper::upgrade::Upgraded, BoxIo, Option<MemberGuard>), hyper::Error>,
        > + Send
        + 'static,
{
    let tracker = proxy.tracker().clone();
    let proxy = Arc::clone(proxy);
    let task = async move {
        let _open = proxy.tunnel_opened();
        // Holds the client connection's place under the limits until the tunnel ends.
        let _admission = admission;
        let started = Instant::now();
        // `_member` keeps the pool member's connection count up for the tunnel's life.
        let (client, remote, _member) = match ends.await {
            Ok(ends) => ends,
            Err(e) => {
                tracing::debug!(%target, error = %e, "client went away before the tunnel started");
                return;
            }
        };
        tracing::debug!(%target, "tunnel established");
        let r = relay::tunnel(client, remote, proxy.idle_timeout(), proxy.hard_stop()).await;
        if r.zero_copy {
            proxy.count_zero_copy();
        }
        tracing::info!(
            method,
            %target,
            status,
            up = r.up,
            down = r.down,
            duration_ms = started.elapsed().as_millis() as u64,
            end = %r.end,
            zero_copy = r.zero_copy,
            "tunnel closed"
        );
    };
    tracker.spawn(task.in_current_span());
}
