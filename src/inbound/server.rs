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
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::client_io::{ClientIo, ConnState};
use super::service;
use crate::proxy::{Admission, Proxy};

/// Raises the soft descriptor limit to the hard one and says in the log what fits: each tunnel
/// holds two sockets (plus a pipe pair while bytes move), so `max_connections` tunnels need a
/// little over twice as many descriptors. Returns the limit in force.
pub fn raise_descriptor_limit(max_connections: usize) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            tracing::info!(from = soft, to = hard, "raised the descriptor limit");
            hard
        } else {
            soft
        };
        // A few descriptors go to the runtime, listeners, logs and idle upstream connections.
        let reserve = 64;
        let fits = limit.saturating_sub(reserve) / 2;
        if (max_connections as u64) > fits {
            tracing::warn!(
                descriptors = limit,
                fits_tunnels = fits,
                max_connections,
                "the descriptor limit fits fewer tunnels than max_connections; raise it (ulimit -n, LimitNOFILE=) or lower max_connections"
            );
        } else {
            tracing::info!(
                descriptors = limit,
                fits_tunnels = fits,
                max_connections,
                "descriptor budget"
            );
        }
        Some(limit)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = max_connections;
        None
    }
}

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
    for l in &listeners {
        if let Ok(addr) = l.local_addr() {
            proxy.dialer().own_listeners().add(addr);
        }
    }
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
                    let admission = match proxy.admit(peer.ip()) {
                        Ok(a) => a,
                        Err(limit) => {
                            // Best effort, never blocking the accept loop: a full send buffer
                            // just means the client sees the close.
                            let _ = stream.try_write(&refusal(&proxy, limit));
                            proxy.note_refused(limit);
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let id = proxy.next_conn_id();
                    let span = tracing::info_span!("conn", id, %peer);
                    let conn_proxy = Arc::clone(&proxy);
                    proxy.tracker().spawn(
                        serve_connection(conn_proxy, stream, peer, admission).instrument(span),
                    );
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

fn refusal(proxy: &Proxy, limit: &str) -> Vec<u8> {
    super::respond::raw_error(
        proxy.via().pseudonym(),
        http::StatusCode::SERVICE_UNAVAILABLE,
        "connection_limit_reached",
        &format!("connection limit reached ({limit})"),
    )
}

async fn serve_connection(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    admission: Admission,
) {
    tracing::debug!("accepted");
    let state = Arc::new(ConnState::new(admission));
    let io = ClientIo::new(
        stream,
        Arc::clone(&state),
        Arc::clone(proxy.timeout_response()),
        proxy.via().pseudonym().into(),
    );
    let (svc_proxy, svc_state) = (Arc::clone(&proxy), Arc::clone(&state));
    let svc = service_fn(move |req| {
        svc_state.served.store(true, Ordering::Relaxed);
        service::handle(Arc::clone(&svc_proxy), req, peer, Arc::clone(&svc_state))
    });
    let limits = proxy.limits();
    let conn = http1::Builder::new()
        // Without a timer hyper silently ignores header_read_timeout.
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper answers 431 past these and closes; its buffer cannot go below 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .preserve_header_case(true)
        // A client that shuts its write side after the request still gets the response.
        .half_close(true)
        .serve_connection(TokioIo::new(io), svc)
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
        Err(e) if e.is_timeout() && !state.served.load(Ordering::Relaxed) => {
            // The socket is still inside `conn`; it answers 408 as it is dropped.
            state.timed_out.store(true, Ordering::Relaxed);
            tracing::debug!("no request head in time: 408");
        }
        Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
    }
}
