//! `viaduct-loadgen`: the load generator for `bench/run`. Small, single-purpose and fast enough
//! not to be the bottleneck: raw sockets, one reusable buffer per connection, no HTTP library.
//!
//! ```text
//! viaduct-loadgen throughput   --proxy ADDR|direct --origin HOST:PORT --path /big --runs 5
//! viaduct-loadgen connect-rate --proxy ADDR --origin HOST:PORT --path /small --concurrency 32 --seconds 5
//! viaduct-loadgen idle         --proxy ADDR --origin HOST:PORT --count 10000 --hold 20 --path /warm.bin
//!                              (one keep-alive GET of --path through each tunnel first)  (one GET /small.txt through each first)
//! viaduct-loadgen soak         --proxy ADDR --origin HOST:PORT --path /small --count 2000 --seconds 600
//! ```
//! Every mode also takes `--socks 5` (SOCKS5 CONNECT instead of HTTP CONNECT), `--tls 1`
//! (TLS to the proxy, for throughput and connect-rate) and
//! `--proxy-user USER:PASS` (sent as `Proxy-Authorization: Basic` on
//! every CONNECT). Every mode prints one `key=value` line that `bench/run` parses.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: failing loudly is right

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `Proxy-Authorization` header line sent on every CONNECT (`--proxy-user`), or "".
static PROXY_AUTH: OnceLock<String> = OnceLock::new();

/// `--socks`: open tunnels with SOCKS5 CONNECT instead of HTTP CONNECT.
static SOCKS: OnceLock<bool> = OnceLock::new();

/// `--tls`: speak TLS to the proxy (an HTTPS proxy), without verifying its certificate (the
/// benchmark's own throwaway one).
static TLS: OnceLock<tokio_rustls::TlsConnector> = OnceLock::new();

struct Args {
    mode: String,
    proxy: Option<SocketAddr>,
    origin: String,
    path: String,
    runs: usize,
    concurrency: usize,
    seconds: u64,
    count: usize,
    hold: u64,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mode = it.next().expect("mode: throughput | connect-rate | idle");
    let mut a = Args {
        mode,
        proxy: None,
        origin: String::new(),
        path: "/".into(),
        runs: 5,
        concurrency: 32,
        seconds: 5,
        count: 10_000,
        hold: 10,
    };
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--proxy" if v == "direct" => a.proxy = None,
            "--proxy" => a.proxy = Some(v.parse().expect("--proxy ADDR")),
            "--origin" => a.origin = v,
            "--path" => a.path = v,
            "--runs" => a.runs = v.parse().unwrap(),
            "--concurrency" => a.concurrency = v.parse().unwrap(),
            "--seconds" => a.seconds = v.parse().unwrap(),
            "--count" => a.count = v.parse().unwrap(),
            "--hold" => a.hold = v.parse().unwrap(),
            "--tls" if v == "1" => {
                TLS.set(insecure_tls()).map_err(|_| ()).unwrap();
            }
            "--tls" => {}
            "--socks" => {
                SOCKS.set(v == "5").unwrap();
            }
            "--proxy-user" => {
                use base64::Engine;
                let b64 = base64::engine::general_purpose::STANDARD.encode(v);
                PROXY_AUTH
                    .set(format!("Proxy-Authorization: Basic {b64}\r\n"))
                    .unwrap();
            }
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

/// A connection to the origin: through a CONNECT tunnel when a proxy is given.
async fn open(proxy: Option<SocketAddr>, origin: &str) -> std::io::Result<TcpStream> {
    let Some(proxy) = proxy else {
        let s = TcpStream::connect(origin).await?;
        s.set_nodelay(true)?;
        return Ok(s);
    };
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    if SOCKS.get().copied().unwrap_or(false) {
        return socks5(s, origin).await;
    }
    let auth = PROXY_AUTH.get().map_or("", String::as_str);
    s.write_all(format!("CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n{auth}\r\n").as_bytes())
        .await?;
    // Read the head byte by byte: nothing past it may be consumed.
    let mut head = Vec::with_capacity(128);
    while !head.ends_with(b"\r\n\r\n") {
        let b = s.read_u8().await?;
        head.push(b);
        if head.len() > 8192 {
            return Err(std::io::Error::other("CONNECT answer too long"));
        }
    }
    if !(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200")) {
        let line = String::from_utf8_lossy(&head);
        return Err(std::io::Error::other(format!(
            "CONNECT refused: {}",
            line.lines().next().unwrap_or("")
        )));
    }
    Ok(s)
}

/// Any stream a tunnel runs over.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A tunnel to the origin through the proxy, over TLS to the proxy when `--tls 1`.
async fn open_any(proxy: Option<SocketAddr>, origin: &str) -> std::io::Result<Box<dyn Stream>> {
    let (Some(tls), Some(proxy)) = (TLS.get(), proxy) else {
        return Ok(Box::new(open(proxy, origin).await?));
    };
    let tcp = TcpStream::connect(proxy).await?;
    tcp.set_nodelay(true)?;
    let mut s = tls
        .connect("localhost".try_into().map_err(std::io::Error::other)?, tcp)
        .await?;
    s.write_all(format!("CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::with_capacity(128);
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await?);
        if head.len() > 8192 {
            return Err(std::io::Error::other("CONNECT answer too long"));
        }
    }
    if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
        return Err(std::io::Error::other("CONNECT refused"));
    }
    Ok(Box::new(s))
}

/// A TLS client that accepts any certificate (the benchmark's proxies use throwaway ones):
/// viaduct's own `--upstream-insecure` connector.
fn insecure_tls() -> tokio_rustls::TlsConnector {
    viaduct::upstream::tls::connector(&viaduct::upstream::TlsOptions {
        ca_files: Vec::new(),
        insecure: true,
    })
    .expect("an insecure TLS connector")
}

/// SOCKS5 CONNECT (no authentication) to `origin` (an IPv4 `host:port`).
async fn socks5(mut s: TcpStream, origin: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = origin.parse().map_err(std::io::Error::other)?;
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        return Err(std::io::Error::other("--socks 5 takes an IPv4 origin"));
    };
    // Greeting, then the request: two round trips, as clients do (not every server takes
    // them pipelined).
    s.write_all(&[5, 1, 0]).await?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await?;
    if choice != [5, 0] {
        return Err(std::io::Error::other(format!(
            "SOCKS method refused: {choice:?}"
        )));
    }
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&ip.octets());
    req.extend_from_slice(&addr.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    if reply[1] != 0 {
        return Err(std::io::Error::other(format!("SOCKS reply {}", reply[1])));
    }
    Ok(s)
}

/// Reads one response with a `Content-Length` body (nginx's answer to a small static file).
async fn read_answer(s: &mut TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await?);
        if head.len() > 16 * 1024 {
            return Err(std::io::Error::other("response head too long"));
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no content-length"))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(())
}

/// One GET with `Connection: close`, reading to EOF; returns the bytes received.
async fn get<S: Stream + ?Sized>(
    s: &mut S,
    origin: &str,
    path: &str,
    buf: &mut [u8],
) -> std::io::Result<u64> {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut total = 0u64;
    loop {
        let n = s.read(buf).await?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

async fn throughput(a: &Args) {
    let mut rates = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    for _ in 0..a.runs {
        let started = Instant::now();
        let mut s = open_any(a.proxy, &a.origin).await.expect("open");
        let bytes = get(&mut *s, &a.origin, &a.path, &mut buf)
            .await
            .expect("get");
        rates.push(bytes as f64 / 1e6 / started.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let all: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!("median_mbps={median:.0} runs_mbps={}", all.join(","));
}

async fn connect_rate(a: &Args) {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let (done, errors, origin, path, proxy) = (
            Arc::clone(&done),
            Arc::clone(&errors),
            a.origin.clone(),
            a.path.clone(),
            a.proxy,
        );
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while Instant::now() < deadline {
                let ok = match open_any(proxy, &origin).await {
                    Ok(mut s) => get(&mut *s, &origin, &path, &mut buf)
                        .await
                        .is_ok_and(|n| n > 0),
                    Err(_) => false,
                };
                if ok { &done } else { &errors }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "tunnels_per_s={:.0} done={} errors={}",
        done.load(Ordering::Relaxed) as f64 / secs,
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
}

async fn idle(a: &Args) {
    let mut open_ok = Vec::with_capacity(a.count);
    let mut errors = 0usize;
    let mut pending = tokio::task::JoinSet::new();
    let mut started = 0;
    // At most 256 handshakes in flight: a connect storm measures the SYN backlog, not memory.
    while started < a.count || !pending.is_empty() {
        while started < a.count && pending.len() < 256 {
            let (origin, path) = (a.origin.clone(), a.path.clone());
            let proxy = a.proxy;
            pending.spawn(async move {
                let mut s = open(proxy, &origin).await?;
                // One keep-alive request and its answer first (`--path`, e.g. a 64 KiB
                // object): an idle tunnel in real life has carried something (a TLS handshake,
                // a page), so its relay has been used, not only set up.
                s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes())
                    .await?;
                read_answer(&mut s).await?;
                Ok::<_, std::io::Error>(s)
            });
            started += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok(s))) => open_ok.push(s),
            _ => errors += 1,
        }
    }
    println!("open={} errors={errors}", open_ok.len());
    tokio::time::sleep(Duration::from_secs(a.hold)).await;
    // Check the tunnels are still alive after the hold: none was dropped.
    let mut alive = 0;
    let mut buf = [0u8; 1];
    for s in &open_ok {
        match s.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => alive += 1, // open, quiet
            Ok(n) if n > 0 => alive += 1,
            _ => {} // closed or reset
        }
    }
    println!("alive={alive}");
}

/// Keeps `count` tunnels busy with keep-alive requests inside them, plus 64 keep-alive
/// plain-HTTP clients, each aborting at random (a reset, mid-request or between requests) and
/// starting over, for `seconds`. Prints totals every 10 s.
async fn soak(a: &Args) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let aborted = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for i in 0..a.count + 64 {
        let (ok, failed, aborted) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&aborted));
        let (origin, path, proxy) = (a.origin.clone(), a.path.clone(), a.proxy);
        let tunnel = i < a.count;
        tasks.push(tokio::spawn(async move {
            // Spread the start so that the proxy sees a steady state, not one burst.
            tokio::time::sleep(Duration::from_millis((i as u64 * 7) % 5000)).await;
            let mut buf = vec![0u8; 4096];
            while Instant::now() < deadline {
                let conn = if tunnel {
                    open(proxy, &origin).await
                } else {
                    match proxy {
                        Some(p) => TcpStream::connect(p).await,
                        None => TcpStream::connect(&origin).await,
                    }
                };
                let Ok(mut s) = conn else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let target = if tunnel {
                    path.clone()
                } else {
                    format!("http://{origin}{path}")
                };
                let req = format!("GET {target} HTTP/1.1\r\nHost: {origin}\r\n\r\n");
                // A handful of requests on this connection, with pauses; then maybe an abort.
                for _ in
                    0..fastrand_like(i as u64 ^ Instant::now().elapsed().as_nanos() as u64, 1, 20)
                {
                    if s.write_all(req.as_bytes()).await.is_err()
                        || !read_response(&mut s, &mut buf).await
                    {
                        failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    ok.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(fastrand_like(i as u64, 50, 500)))
                        .await;
                }
                if fastrand_like(i as u64 + 1, 0, 3) == 0 {
                    // An abrupt abort: half a request, then a reset.
                    let _ = s.write_all(b"GET /half").await;
                    #[allow(deprecated)] // SO_LINGER 0 makes the drop a reset: that is the point
                    let _ = s.set_linger(Some(Duration::ZERO));
                    aborted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let reporter = {
        let (ok, failed, aborted) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&aborted));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                println!(
                    "ok={} failed={} aborted={}",
                    ok.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed),
                    aborted.load(Ordering::Relaxed)
                );
            }
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    reporter.abort();
    println!(
        "final ok={} failed={} aborted={}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        aborted.load(Ordering::Relaxed)
    );
}

/// Reads one response (Content-Length framed, as nginx sends for a static file).
async fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> bool {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match s.read_u8().await {
            Ok(b) => head.push(b),
            Err(_) => return false,
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let Some(len) = text
        .split("content-length:")
        .nth(1)
        .and_then(|r| r.split("\r\n").next())
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return false;
    };
    let mut left = len;
    let cap = buf.len();
    while left > 0 {
        match s.read(&mut buf[..left.min(cap)]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => left -= n,
        }
    }
    text.starts_with("http/1.1 200")
}

/// A cheap pseudo-random number in `lo..hi` (splitmix64 of a seed and the clock).
fn fastrand_like(seed: u64, lo: u64, hi: u64) -> u64 {
    let mut z = seed.wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    lo + z % (hi - lo).max(1)
}

#[tokio::main]
async fn main() {
    let a = parse_args();
    match a.mode.as_str() {
        "throughput" => throughput(&a).await,
        "connect-rate" => connect_rate(&a).await,
        "idle" => idle(&a).await,
        "soak" => soak(&a).await,
        m => panic!("unknown mode {m}"),
    }
}
