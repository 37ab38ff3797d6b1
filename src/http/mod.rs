//! The HTTP/1 listener protocol: serving HTTP on an accepted connection and turning each
//! request into session calls: CONNECT tunnels, plain forwarding, `Upgrade`.
//!
//! - [`client_io`]: the client socket under hyper, able to answer a header-read timeout.
//! - [`service`]: per-request dispatch, who the client is, the access line.
//! - [`connect`]: CONNECT tunnels (dial first, answer 200 only when the target is reachable).
//! - [`forward`]: absolute-form requests, including `Upgrade` (WebSocket).
//! - [`headers`]: hop-by-hop removal, `Via`, loop detection.
//! - [`respond`]: the one place errors become HTTP answers (through [`crate::failure`]).
//!
//! This is the only module that knows hyper's server types.

pub mod client_io;
pub mod connect;
pub mod forward;
pub mod headers;
pub mod respond;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use self::client_io::{ClientIo, ConnState, Socket};
use self::headers::Via;
use crate::config::Limits;
use crate::failure::Failure;
use crate::server::{Admitted, Protocol};
use crate::session::Core;
use crate::shutdown::Shutdown;

/// The body type of every response we send to clients.
pub type Body = BoxBody<Bytes, crate::BoxError>;

/// The HTTP listener protocol and its settings.
pub struct Http {
    core: Arc<Core>,
    via: Via,
    limits: Limits,
    response_timeout: Duration,
    shutdown: Shutdown,
    /// The 408 sent when a request head does not arrive in time, built once.
    timeout_response: Arc<[u8]>,
}

impl Http {
    pub fn new(
        core: Arc<Core>,
        via: Via,
        limits: Limits,
        response_timeout: Duration,
        shutdown: Shutdown,
    ) -> Self {
        let timeout_response = respond::raw_error(
            via.pseudonym(),
            Failure::ClientTimeout,
            &format!(
                "no request head within {}",
                humantime::format_duration(limits.header_read_timeout)
            ),
        )
        .into();
        Self {
            core,
            via,
            limits,
            response_timeout,
            shutdown,
            timeout_response,
        }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }
    pub(crate) fn via(&self) -> &Via {
        &self.via
    }
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }
    pub(crate) fn response_timeout(&self) -> Duration {
        self.response_timeout
    }
}

impl Http {
    /// Serves an accepted TLS connection (an `https://` listener): HTTP/2 when the client
    /// chose `h2` by ALPN, HTTP/1.1 otherwise.
    pub async fn serve_tls(
        self: Arc<Self>,
        stream: tokio_rustls::server::TlsStream<TcpStream>,
        peer: SocketAddr,
        admitted: Admitted,
    ) {
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            serve_h2(self, stream, peer, admitted).await;
        } else {
            serve_connection(self, stream, peer, admitted).await;
        }
    }
}

/// Drives a hyper connection to its end; when shutdown begins, asks it to finish gracefully
/// (HTTP/1: after the request in flight; HTTP/2: GOAWAY, open streams go on), and drops it
/// at the hard stop.
async fn until_shutdown<C, E>(
    mut conn: std::pin::Pin<&mut C>,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
    shutdown: &Shutdown,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::select! {
        res = conn.as_mut() => res,
        () = shutdown.graceful().cancelled() => {
            graceful(conn.as_mut());
            tokio::select! {
                res = conn.as_mut() => res,
                () = shutdown.hard_stop().cancelled() => Ok(()),
            }
        }
    }
}

/// Serves HTTP/2 (RFC 9113) on one TLS connection: every stream is a request (CONNECT
/// streams become tunnels, RFC 9113 8.5), each with its own flow control, at most
/// `max_concurrent_streams` at once; on graceful shutdown a GOAWAY lets open streams finish
/// within the grace period.
async fn serve_h2(
    http: Arc<Http>,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    admitted: Admitted,
) {
    tracing::debug!("accepted (HTTP/2)");
    let state = Arc::new(ConnState::new(admitted));
    let (svc_http, svc_state) = (Arc::clone(&http), Arc::clone(&state));
    let svc = service_fn(move |req| {
        svc_state.served.store(true, Ordering::Relaxed);
        service::handle(Arc::clone(&svc_http), req, peer, Arc::clone(&svc_state))
    });
    let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(http.limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(http.limits.max_header_bytes).unwrap_or(u32::MAX))
        // Flow control per stream: a slow tunnel's window fills, the others keep moving.
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        // Liveness of long-lived connections (tunnels): a peer that stops answering PINGs is
        // gone, and so are its streams.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    // An HTTP/2 connection with nothing in progress (no request ever, or none since the last
    // one ended) is idle: after `header_read_timeout`, as an idle HTTP/1 connection, it gets
    // a GOAWAY and closes. It must not hold a place under `max_connections` for nothing.
    let idle_limit = http.limits.header_read_timeout;
    let mut check = tokio::time::interval((idle_limit / 4).max(Duration::from_millis(50)));
    let res = loop {
        tokio::select! {
            res = conn.as_mut() => break res,
            () = http.shutdown.graceful().cancelled() => {
                break until_shutdown(conn.as_mut(), |c| c.graceful_shutdown(), &http.shutdown).await;
            }
            _ = check.tick() => {
                if state.idle_for() >= idle_limit {
                    tracing::debug!("HTTP/2 connection idle: GOAWAY");
                    conn.as_mut().graceful_shutdown();
                    break tokio::select! {
                        res = conn.as_mut() => res,
                        () = http.shutdown.hard_stop().cancelled() => Ok(()),
                    };
                }
            }
        }
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
    }
}

impl Protocol for Http {
    fn refuse(
        &self,
        stream: &TcpStream,
        failure: Failure,
        details: &str,
        retry_after: Option<std::time::Duration>,
    ) {
        let answer = respond::raw_error_after(self.via.pseudonym(), failure, details, retry_after);
        // Best effort, never blocking the accept loop: a full send buffer just means the
        // client sees the close.
        let _ = stream.try_write(&answer);
    }

    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(serve_connection(self, stream, peer, admitted))
    }
}

/// Serves HTTP/1 (with upgrades) on one client connection until it closes or shutdown cuts it.
async fn serve_connection<S: Socket>(
    http: Arc<Http>,
    stream: S,
    peer: SocketAddr,
    admitted: Admitted,
) {
    tracing::debug!("accepted");
    let state = Arc::new(ConnState::new(admitted));
    let io = ClientIo::new(
        stream,
        Arc::clone(&state),
        Arc::clone(&http.timeout_response),
        http.via.pseudonym().into(),
    );
    let (svc_http, svc_state) = (Arc::clone(&http), Arc::clone(&state));
    let svc = service_fn(move |req| {
        svc_state.served.store(true, Ordering::Relaxed);
        service::handle(Arc::clone(&svc_http), req, peer, Arc::clone(&svc_state))
    });
    let limits = &http.limits;
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
    let res = until_shutdown(conn.as_mut(), |c| c.graceful_shutdown(), &http.shutdown).await;
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
