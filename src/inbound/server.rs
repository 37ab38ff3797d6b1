//! The accept loop: one task per client connection, each serving HTTP/1 with upgrades, and
//! graceful shutdown for connections and tunnels alike.
//!
//! Shutdown: stop accepting, ask every connection to finish its in-flight request
//! (`graceful_shutdown`), then wait up to the grace period for connections *and* tunnels
//! (one `TaskTracker` holds both); what is still open then is cancelled and closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::service;
use crate::proxy::Proxy;

/// Serves clients on `listener` until `shutdown` resolves, then drains (see the module docs).
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
    serve_all(vec![listener], proxy, shutdown).await;
}

/// Serves clients on every listener until `shutdown` resolves, then drains.
pub async fn serve_all(
    listeners: Vec<TcpListener>,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) {
    let stop_accepting = CancellationToken::new();
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, Arc::clone(&proxy), stop_accepting.clone())))
        .collect();
    shutdown.await;
    stop_accepting.cancel();
    for l in loops {
        let _ = l.await;
    }
    let open = proxy.tracker().len();
    tracing::info!(
        open,
        grace_ms = proxy.shutdown_grace().as_millis() as u64,
        "shutting down"
    );
    proxy.begin_shutdown();
    proxy.tracker().close();
    if tokio::time::timeout(proxy.shutdown_grace(), proxy.tracker().wait())
        .await
        .is_err()
    {
        tracing::info!(
            open = proxy.tracker().len(),
            "grace period over; closing what is left"
        );
        proxy.hard_stop().cancel();
        proxy.tracker().wait().await;
    }
    tracing::info!("shut down");
}

/// Accepts until `stop` fires; the listener is closed when this returns.
async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let _ = stream.set_nodelay(true);
                    let id = proxy.next_conn_id();
                    let span = tracing::info_span!("conn", id, %peer);
                    proxy.tracker().spawn(serve_connection(Arc::clone(&proxy), stream, peer).instrument(span));
                }
                Err(e) => {
                    // Out of descriptors, or a connection aborted before accept: the listener is
                    // fine. Back off so that a persistent error cannot spin a core.
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            () = stop.cancelled() => return,
        }
    }
}

async fn serve_connection(
    proxy: Arc<Proxy>,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) {
    tracing::debug!("accepted");
    let svc_proxy = Arc::clone(&proxy);
    let svc = service_fn(move |req| service::handle(Arc::clone(&svc_proxy), req, peer));
    let conn = http1::Builder::new()
        // Without a timer hyper silently ignores header_read_timeout (it defaults to 30 s).
        .timer(TokioTimer::new())
        .preserve_header_case(true)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        () = proxy.graceful().cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                res = conn.as_mut() => res,
                () = proxy.hard_stop().cancelled() => Ok(()),
            }
        }
    };
    match res {
        Ok(()) => tracing::debug!("connection closed"),
        Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
    }
}
