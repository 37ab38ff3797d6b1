//! Test harness: viaduct, origins and fake upstreams, each on `127.0.0.1:0` in-process, and a
//! raw HTTP/1 client that shows exactly what crosses the wire.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use viaduct::routing::Router;
use viaduct::upstream::resolve::{Resolve, Resolving};
use viaduct::upstream::{Hop, Route};
use viaduct::{Config, Proxy};

/// A running viaduct.
pub struct ProxyHandle {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ProxyHandle {
    /// Signals shutdown and waits for `serve` to return (re-raising its panics).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("serve panicked");
    }
}

/// Short timeouts so that failure tests finish quickly; otherwise the defaults.
pub fn config() -> Config {
    Config {
        settings: viaduct::Settings {
            connect_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_millis(500),
            ..viaduct::Settings::default()
        },
        ..Config::default()
    }
}

/// [`config`] with some settings changed.
pub fn config_with(change: impl FnOnce(&mut viaduct::Settings)) -> Config {
    let mut c = config();
    change(&mut c.settings);
    c
}

/// `[auth]` with these users and passwords (bcrypt at the lowest cost, to keep tests fast).
pub fn users(list: &[(&str, &str)]) -> viaduct::auth::AuthSettings {
    let text: String = list
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
        .collect();
    viaduct::auth::AuthSettings::new(viaduct::auth::Users::parse(&text, "test").unwrap())
}

pub fn via(url: &str) -> Router {
    Router::single(Route::via(vec![Hop::parse(url).expect("valid hop url")]))
}

/// A viaduct to chain through, under its own `Via` name (two viaducts sharing one would see
/// each other's requests as loops).
pub async fn start_upstream(via_name: &str) -> ProxyHandle {
    start_proxy(config_with(|s| s.via_name = via_name.into())).await
}

pub async fn start_proxy(config: Config) -> ProxyHandle {
    start_proxy_with(config, Arc::new(TestResolver::default())).await
}

pub async fn start_proxy_with(config: Config, resolver: Arc<dyn Resolve>) -> ProxyHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_proxy_on(listener, config, resolver).await
}

/// Serves on `listener` (e.g. bound to `0.0.0.0:0`); `addr` is its loopback address.
pub async fn start_proxy_on(
    listener: TcpListener,
    config: Config,
    resolver: Arc<dyn Resolve>,
) -> ProxyHandle {
    let mut addr = listener.local_addr().unwrap();
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let proxy = Proxy::with_resolver(config, resolver).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(viaduct::serve(listener, Arc::clone(&proxy), async move {
        let _ = stopped.await;
    }));
    ProxyHandle {
        addr,
        proxy,
        stop: Some(stop),
        task,
    }
}

/// A viaduct whose one listener (on `127.0.0.1:0`) speaks `kind`; runs until the test ends.
pub async fn start_proxy_kind(kind: viaduct::server::ListenKind, config: Config) -> SocketAddr {
    start_proxy_kind_with(kind, config).await.0
}

/// [`start_proxy_kind`], keeping the proxy (its counters) at hand.
pub async fn start_proxy_kind_with(
    kind: viaduct::server::ListenKind,
    config: Config,
) -> (SocketAddr, Arc<Proxy>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Proxy::new(config).unwrap();
    tokio::spawn(viaduct::serve_all(
        vec![(listener, kind)],
        Arc::clone(&proxy),
        std::future::pending(),
    ));
    (addr, proxy)
}

/// Resolves names from a fixed map (all loopback); anything else fails like NXDOMAIN.
#[derive(Default, Clone)]
pub struct TestResolver(pub HashMap<String, SocketAddr>);

impl TestResolver {
    pub fn with(mut self, name: &str, addr: SocketAddr) -> Self {
        self.0.insert(name.to_owned(), addr);
        self
    }
}

impl Resolve for TestResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let found = self.0.get(host).map(|a| SocketAddr::new(a.ip(), port));
        let host = host.to_owned();
        Box::pin(async move {
            found.map(|a| vec![a]).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("no such host {host}"))
            })
        })
    }
}

// === raw client ===

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub version: u8,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Reads one response head byte by byte, so nothing after it is consumed.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Head {
    let mut buf = Vec::new();
    while !buf.ends_with(b"\r\n\r\n") {
        let b = s
            .read_u8()
            .await
            .unwrap_or_else(|e| panic!("eof in head {:?}: {e}", String::from_utf8_lossy(&buf)));
        buf.push(b);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    res.parse(&buf).unwrap();
    Head {
        status: res.code.unwrap(),
        version: res.version.unwrap(),
        headers: res
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    }
}

/// Reads a body framed by `head` (Content-Length, chunked, or until close).
pub async fn read_body<S: AsyncRead + Unpin>(s: &mut S, head: &Head) -> Vec<u8> {
    if let Some(len) = head.get("content-length") {
        let mut body = vec![0; len.parse().unwrap()];
        s.read_exact(&mut body).await.unwrap();
        return body;
    }
    if head
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let line = read_line(s).await;
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            if size == 0 {
                read_line(s).await;
                return body;
            }
            let start = body.len();
            body.resize(start + size, 0);
            s.read_exact(&mut body[start..]).await.unwrap();
            read_line(s).await;
        }
    }
    let mut body = Vec::new();
    s.read_to_end(&mut body).await.unwrap();
    body
}

async fn read_line<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        line.push(s.read_u8().await.unwrap());
    }
    String::from_utf8(line).unwrap()
}

/// Sends raw request bytes on a new connection to `proxy` and reads one response.
pub async fn send(proxy: SocketAddr, raw: &str) -> (Head, Vec<u8>) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    let body = read_body(&mut s, &head).await;
    (head, body)
}

/// A plain `GET /hello` of `origin` through `proxy`, on a connection of its own.
pub async fn get_hello(proxy: SocketAddr, origin: SocketAddr) -> (Head, Vec<u8>) {
    send(
        proxy,
        &format!("GET http://{origin}/hello HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await
}

/// Opens a CONNECT tunnel through `proxy`; returns the stream and the proxy's answer.
pub async fn connect(proxy: SocketAddr, target: &str) -> (TcpStream, Head) {
    connect_as(proxy, target, None).await
}

/// `Proxy-Authorization: Basic` for `user:pass`, as a header line.
pub fn proxy_auth(creds: &str) -> String {
    use base64::Engine;
    format!(
        "Proxy-Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(creds)
    )
}

/// Opens a CONNECT tunnel through `proxy` with `creds` (`user:pass`) when given.
pub async fn connect_as(proxy: SocketAddr, target: &str, creds: Option<&str>) -> (TcpStream, Head) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let auth = creds.map(proxy_auth).unwrap_or_default();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

/// Opens a CONNECT through `proxy` that is expected to fail; returns the answer and its body.
pub async fn connect_error(proxy: SocketAddr, target: &str) -> (Head, Vec<u8>) {
    let (mut s, head) = connect(proxy, target).await;
    let body = read_body(&mut s, &head).await;
    (head, body)
}

/// A TCP connection to `to` from the loopback address `from` (e.g. 127.0.0.2), so that one
/// test can be two clients.
pub async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((from, 0))).unwrap();
    sock.connect(to).await.unwrap()
}

/// A loopback address where nothing listens (bound, then released).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Polls `condition` until it holds, for at most 10 s; panics naming `what` otherwise. For
/// events whose timing the test does not control (a refresh, a log line written when a
/// connection closes): never a fixed sleep that passes or fails with machine load.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until something accepts connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing ever listened on {addr}");
}

/// Asserts an error answer: its status, `Proxy-Status` error type, and a one-line body.
pub async fn assert_error(head: &Head, body: &[u8], status: u16, error_type: &str) {
    assert_eq!(
        head.status,
        status,
        "{head:?} {}",
        String::from_utf8_lossy(body)
    );
    let ps = head
        .get("proxy-status")
        .unwrap_or_else(|| panic!("no Proxy-Status in {head:?}"));
    assert!(
        ps.contains(&format!("error={error_type};")),
        "Proxy-Status: {ps}"
    );
    let text = String::from_utf8_lossy(body);
    assert!(
        text.starts_with(&status.to_string()) && text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
}

// === servers ===

/// Echoes every byte; on EOF from the client, finishes its writes and closes.
pub async fn echo_server() -> SocketAddr {
    serve_tcp(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Runs `f` on every accepted connection.
pub async fn serve_tcp<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(f(s));
        }
    });
    addr
}

/// A fake upstream proxy: records each request head, answers `reply` (raw bytes), then, if it
/// said 2xx, acts as an echo server on the same connection.
pub async fn fake_upstream(reply: &'static [u8]) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    fake_proxy(reply, false).await
}

/// An upstream proxy that wants Basic credentials, as a real one does: a request without
/// `Proxy-Authorization` gets `407 Proxy-Authenticate: Basic` on a kept-alive connection
/// (viaduct asks before it sends a password); a request with one is recorded and answered
/// `reply` (a 2xx then echoes, as [`fake_upstream`]).
pub async fn basic_upstream(reply: &'static [u8]) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    fake_proxy(reply, true).await
}

/// The two fakes above: `basic` challenges heads without Basic credentials first.
async fn fake_proxy(
    reply: &'static [u8],
    basic: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    const CHALLENGE: &[u8] = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
        Proxy-Authenticate: Basic realm=\"up\"\r\nContent-Length: 0\r\n\r\n";
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve_tcp(move |mut s| {
        let tx = tx.clone();
        async move {
            let head = loop {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read_u8().await {
                        Ok(b) => head.push(b),
                        Err(_) => return,
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let has_basic = text
                    .to_ascii_lowercase()
                    .contains("\r\nproxy-authorization: basic ");
                if !basic || has_basic {
                    break text;
                }
                if s.write_all(CHALLENGE).await.is_err() {
                    return;
                }
            };
            let _ = tx.send(head);
            if s.write_all(reply).await.is_err() {
                return;
            }
            if reply.starts_with(b"HTTP/1.1 2") || reply.starts_with(b"HTTP/1.0 2") {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            } else {
                // Hold the connection open until the proxy closes it.
                let _ = s.read_to_end(&mut Vec::new()).await;
            }
        }
    })
    .await;
    (addr, rx)
}

/// What an origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

/// An HTTP origin (hyper) that records requests and serves a few paths:
/// `/hello` (text), `/echo` (streams the request body back), `/big/N` (N bytes, chunked),
/// `/hop` (response with hop-by-hop headers), `/ws` (101, then echo).
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    pub connections: Arc<AtomicUsize>,
}

pub async fn origin() -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, seen) = mpsc::unbounded_channel();
    let connections = Arc::new(AtomicUsize::new(0));
    let conns = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| origin_handle(req, tx.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Origin {
        addr,
        seen,
        connections,
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> OriginBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn origin_handle(
    mut req: Request<Incoming>,
    tx: mpsc::UnboundedSender<Seen>,
) -> Result<Response<OriginBody>, Infallible> {
    let _ = tx.send(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_owned();
    let resp = match path.as_str() {
        "/hello" => Response::new(full("hello\n")),
        "/echo" => Response::new(req.into_body().boxed()),
        "/hop" => Response::builder()
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("x-end", "kept")
            .body(full("hop\n"))
            .unwrap(),
        "/ws" => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let up = on.await.unwrap();
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
            Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(full(""))
                .unwrap()
        }
        p if p.starts_with("/big/") => {
            let n: usize = p["/big/".len()..].parse().unwrap();
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let frames = (0..n.div_ceil(chunk.len())).map(move |i| {
                let len = chunk.len().min(n - i * chunk.len());
                Ok::<_, hyper::Error>(Frame::data(chunk.slice(..len)))
            });
            Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        }
        _ => Response::builder()
            .status(404)
            .body(full("not found\n"))
            .unwrap(),
    };
    Ok(resp)
}

// === upstream fixtures for chains ===

/// What the SOCKS5 fixture was asked to connect to: `(address type, host, port)`, with
/// address type 1 (IPv4), 3 (name) or 4 (IPv6).
pub type SocksSeen = (u8, String, u16);

/// How the SOCKS5 fixture asks for a user name and password (RFC 1929).
#[derive(Clone, Copy)]
pub enum SocksAuth {
    /// No authentication.
    Open,
    /// Only this user with this password.
    Password(&'static str, &'static str),
    /// Any user name and password (the fixture reports who came).
    AnyUser,
}

/// The SOCKS5 fixture: where it listens, what each session asked for, who authenticated.
pub struct Socks5Fixture {
    pub addr: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<SocksSeen>,
    pub users: mpsc::UnboundedReceiver<String>,
}

/// A minimal SOCKS5 server (RFC 1928 CONNECT, RFC 1929 auth when `creds` is set) that resolves
/// names through `names` (loopback only) and relays. Reports each request it gets.
pub async fn socks5_server(
    creds: Option<(&'static str, &'static str)>,
    names: HashMap<String, SocketAddr>,
) -> (SocketAddr, mpsc::UnboundedReceiver<SocksSeen>) {
    let auth = creds.map_or(SocksAuth::Open, |(u, p)| SocksAuth::Password(u, p));
    let f = socks5_fixture(auth, names).await;
    (f.addr, f.seen)
}

/// The one SOCKS5 test server, with its authentication mode.
pub async fn socks5_fixture(auth: SocksAuth, names: HashMap<String, SocketAddr>) -> Socks5Fixture {
    let (tx, seen) = mpsc::unbounded_channel();
    let (users_tx, users) = mpsc::unbounded_channel();
    let names = Arc::new(names);
    let addr = serve_tcp(move |mut s| {
        let (tx, users_tx, names) = (tx.clone(), users_tx.clone(), Arc::clone(&names));
        async move {
            let mut head = [0u8; 2];
            s.read_exact(&mut head).await.unwrap();
            let mut methods = vec![0; head[1] as usize];
            s.read_exact(&mut methods).await.unwrap();
            if let SocksAuth::Open = auth {
                s.write_all(&[5, 0]).await.unwrap();
            } else {
                if !methods.contains(&2) {
                    s.write_all(&[5, 0xff]).await.unwrap();
                    return;
                }
                s.write_all(&[5, 2]).await.unwrap();
                let mut v = [0u8; 2];
                s.read_exact(&mut v).await.unwrap();
                let mut u = vec![0; v[1] as usize];
                s.read_exact(&mut u).await.unwrap();
                let plen = s.read_u8().await.unwrap();
                let mut p = vec![0; plen as usize];
                s.read_exact(&mut p).await.unwrap();
                let ok = match auth {
                    SocksAuth::Password(user, pass) => u == user.as_bytes() && p == pass.as_bytes(),
                    _ => true,
                };
                s.write_all(&[1, if ok { 0 } else { 1 }]).await.unwrap();
                if !ok {
                    return;
                }
                let _ = users_tx.send(String::from_utf8_lossy(&u).into_owned());
            }
            let mut req = [0u8; 4];
            s.read_exact(&mut req).await.unwrap();
            let host = match req[3] {
                1 => {
                    let mut ip = [0u8; 4];
                    s.read_exact(&mut ip).await.unwrap();
                    std::net::Ipv4Addr::from(ip).to_string()
                }
                3 => {
                    let len = s.read_u8().await.unwrap();
                    let mut name = vec![0; len as usize];
                    s.read_exact(&mut name).await.unwrap();
                    String::from_utf8(name).unwrap()
                }
                4 => {
                    let mut ip = [0u8; 16];
                    s.read_exact(&mut ip).await.unwrap();
                    std::net::Ipv6Addr::from(ip).to_string()
                }
                _ => return,
            };
            let port = s.read_u16().await.unwrap();
            let _ = tx.send((req[3], host.clone(), port));
            let dest = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => Some(SocketAddr::new(ip, port)),
                Err(_) => names.get(&host).map(|a| SocketAddr::new(a.ip(), port)),
            };
            let upstream = match dest {
                Some(d) => TcpStream::connect(d).await.ok(),
                None => None,
            };
            let Some(mut upstream) = upstream else {
                // 4: host unreachable
                let _ = s.write_all(&[5, 4, 0, 1, 0, 0, 0, 0, 0, 0]).await;
                return;
            };
            s.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0])
                .await
                .unwrap();
            let _ = tokio::io::copy_bidirectional(&mut s, &mut upstream).await;
        }
    })
    .await;
    Socks5Fixture { addr, seen, users }
}

/// A self-signed certificate for `name`, written as PEM to a temp file (usable as a CA file).
pub struct TestCert {
    pub der: rustls::pki_types::CertificateDer<'static>,
    pub key_der: Vec<u8>,
    pub pem_file: tempfile::NamedTempFile,
}

pub fn test_cert(name: &str) -> TestCert {
    let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let mut pem_file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut pem_file, cert.cert.pem().as_bytes()).unwrap();
    TestCert {
        der: cert.cert.der().clone(),
        key_der: cert.signing_key.serialize_der(),
        pem_file,
    }
}

/// A self-signed certificate for `name` marked as a CA (`CA:TRUE`), as `openssl req -x509`
/// makes them by default in OpenSSL 3.
pub fn test_ca_cert(name: &str) -> TestCert {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let mut pem_file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut pem_file, cert.pem().as_bytes()).unwrap();
    TestCert {
        der: cert.der().clone(),
        key_der: key.serialize_der(),
        pem_file,
    }
}

/// A TLS terminator: accepts TLS with `cert` and relays the plaintext to `backend` (so a plain
/// viaduct behind it is an HTTPS proxy).
pub async fn tls_front(cert: &TestCert, backend: SocketAddr) -> SocketAddr {
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_der.clone().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der.clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    serve_tcp(move |s| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(s).await else {
                return;
            };
            let Ok(mut plain) = TcpStream::connect(backend).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        }
    })
    .await
}
