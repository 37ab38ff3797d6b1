//! Listeners: the accept loop, admission under the connection limits, and the descriptor
//! budget. Each accepted connection goes, with its place under the limits, to a listener
//! [`Protocol`] (HTTP today) in its own task, tracked for shutdown; the loop itself never
//! blocks on a client and backs off when accepting fails.

pub mod admission;
pub mod proxy_protocol;
pub mod tls;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::admission::Refused;
pub use self::admission::{Admission, Admitted};
pub use self::proxy_protocol::ProxyProtocol;
use crate::failure::Failure;
use crate::shutdown::Shutdown;

/// What a listen address speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListenKind {
    /// HTTP, SOCKS5 and SOCKS4/4a on one port, told apart by the first byte.
    #[default]
    Mixed,
    Http,
    Socks,
    /// HTTP/1.1 inside TLS (an "HTTPS proxy").
    Https,
}

/// A listen address and what it speaks: `HOST:PORT` or `mixed://HOST:PORT` (HTTP and SOCKS),
/// `http://HOST:PORT`, `socks5://HOST:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub kind: ListenKind,
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, rest) = match s.split_once("://") {
            Some(("mixed", rest)) => (ListenKind::Mixed, rest),
            Some(("http", rest)) => (ListenKind::Http, rest),
            Some(("socks5" | "socks", rest)) => (ListenKind::Socks, rest),
            Some(("https", rest)) => (ListenKind::Https, rest),
            Some((scheme, _)) => {
                return Err(format!(
                    "\"{scheme}://\" is not a listener kind (mixed://, http://, https://, socks5://)"
                ));
            }
            None => (ListenKind::Mixed, s),
        };
        let addr = rest
            .trim_end_matches('/')
            .parse()
            .map_err(|_| format!("not an address:port: \"{rest}\""))?;
        Ok(Self { addr, kind })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ListenKind::Mixed => write!(f, "{}", self.addr),
            ListenKind::Http => write!(f, "http://{}", self.addr),
            ListenKind::Socks => write!(f, "socks5://{}", self.addr),
            ListenKind::Https => write!(f, "https://{}", self.addr),
        }
    }
}

impl From<SocketAddr> for Listen {
    fn from(addr: SocketAddr) -> Self {
        Self {
            addr,
            kind: ListenKind::Mixed,
        }
    }
}

/// What a listener speaks on the connections it accepts.
pub trait Protocol: Send + Sync + 'static {
    /// Serves one admitted connection until it ends; `admitted` holds its place under the
    /// limits (hand it to a tunnel that outlives the connection).
    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Tells a client it was refused (`failure`, in words: `details`; `retry_after`: when it
    /// may try again), best effort and without blocking; the connection is closed after.
    fn refuse(
        &self,
        stream: &TcpStream,
        failure: Failure,
        details: &str,
        retry_after: Option<Duration>,
    );
}

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

/// Accepts on every listener until `stop` resolves, handing connections to `protocol`; the
/// listeners are closed when this returns. Draining what is open is the caller's
/// ([`Shutdown::drain`]).
pub async fn accept_all<P: Protocol>(
    listeners: Vec<(TcpListener, Arc<P>)>,
    admission: Arc<Admission>,
    proxy_protocol: Option<Arc<ProxyProtocol>>,
    shutdown: &Shutdown,
    stop: impl Future<Output = ()>,
) {
    let stop_accepting = CancellationToken::new();
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|(l, protocol)| {
            tokio::spawn(accept_loop(
                l,
                protocol,
                Arc::clone(&admission),
                proxy_protocol.clone(),
                shutdown.clone(),
                stop_accepting.clone(),
            ))
        })
        .collect();
    stop.await;
    stop_accepting.cancel();
    for l in loops {
        let _ = l.await;
    }
}

/// A connection from a load balancer: the PROXY header first, then admission for the client
/// it names, then the protocol, which sees the client's address as the peer.
async fn behind_balancer<P: Protocol>(
    mut stream: TcpStream,
    balancer: SocketAddr,
    pp: Arc<ProxyProtocol>,
    protocol: Arc<P>,
    admission: Arc<Admission>,
    shutdown: Shutdown,
    place: tokio::sync::OwnedSemaphorePermit,
) {
    let peer =
        match tokio::time::timeout(pp.timeout, proxy_protocol::read_header(&mut stream)).await {
            Ok(Ok(Some(client))) => client,
            // The balancer's own connection (a health check).
            Ok(Ok(None)) => balancer,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "refused: no valid PROXY header");
                admission.note_refused("proxy_protocol_header");
                return;
            }
            Err(_) => {
                tracing::debug!("refused: no PROXY header in time");
                admission.note_refused("proxy_protocol_header");
                return;
            }
        };
    tracing::debug!(client = %peer, "PROXY header");
    let Some((stream, admitted)) =
        admit(stream, peer, &*protocol, &admission, &shutdown, Some(place))
    else {
        return;
    };
    protocol.serve(stream, peer, admitted).await;
}

/// Admits a connection from `peer` (allowed clients, then the connection caps), or answers
/// the refusal and lets it go.
fn admit<P: Protocol>(
    stream: TcpStream,
    peer: SocketAddr,
    protocol: &P,
    admission: &Arc<Admission>,
    shutdown: &Shutdown,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Option<(TcpStream, Admitted)> {
    if !admission.permits_client(peer.ip()) {
        // Answered before anything is read: no request is acted on.
        protocol.refuse(
            &stream,
            Failure::ClientDenied,
            &format!("client {} is not among the allowed clients", peer.ip()),
            None,
        );
        admission.note_refused("allow_clients");
        shutdown.tracker().spawn(linger_close(stream));
        return None;
    }
    match admission.admit_holding(peer.ip(), held) {
        Ok(admitted) => Some((stream, admitted)),
        Err(Refused {
            limit,
            retry_after: Some(after),
        }) => {
            protocol.refuse(
                &stream,
                Failure::RateLimited,
                &format!("too many new connections from {} ({limit})", peer.ip()),
                Some(after),
            );
            admission.note_refused(limit);
            // The client may have sent its request already: a plain close would reset the
            // connection under the answer.
            shutdown.tracker().spawn(linger_close(stream));
            None
        }
        Err(Refused { limit, .. }) => {
            protocol.refuse(
                &stream,
                Failure::LimitReached,
                &format!("connection limit reached ({limit})"),
                None,
            );
            admission.note_refused(limit);
            None
        }
    }
}

/// Closes a refused connection without resetting it under its answer: our write side ends
/// first, then what the client already sent is read and dropped (at most 64 KiB, for at most
/// half a second), so that the close does not turn into a reset that could destroy the answer
/// in flight.
async fn linger_close(stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = stream;
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}

/// Accepts until `stop` fires.
async fn accept_loop<P: Protocol>(
    listener: TcpListener,
    protocol: Arc<P>,
    admission: Arc<Admission>,
    proxy_protocol: Option<Arc<ProxyProtocol>>,
    shutdown: Shutdown,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    if let Some(pp) = &proxy_protocol {
                        // Admission waits for the header: it is about the real client.
                        if !pp.trusts(peer.ip()) {
                            admission.note_refused("proxy_protocol_from");
                            continue;
                        }
                        // Counted from accept: a connection whose header never comes holds
                        // a place, so such connections cannot pile up past the limit.
                        let Ok(place) = admission.hold_place() else {
                            admission.note_refused("max_connections");
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let id = admission.next_conn_id();
                        let span = tracing::info_span!("conn", id, %peer);
                        let task = behind_balancer(
                            stream,
                            peer,
                            Arc::clone(pp),
                            Arc::clone(&protocol),
                            Arc::clone(&admission),
                            shutdown.clone(),
                            place,
                        );
                        shutdown.tracker().spawn(task.instrument(span));
                        continue;
                    }
                    let Some((stream, admitted)) =
                        admit(stream, peer, &*protocol, &admission, &shutdown, None)
                    else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let id = admission.next_conn_id();
                    let span = tracing::info_span!("conn", id, %peer);
                    let serve = Arc::clone(&protocol).serve(stream, peer, admitted);
                    shutdown.tracker().spawn(serve.instrument(span));
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
