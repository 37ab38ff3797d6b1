//! CONNECT tunnels: direct and through an upstream HTTP proxy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use viaduct::Config;

use crate::support::*;

/// Waits (bounded) until the proxy reports no open tunnel: nothing outlives its tunnel.
pub async fn assert_no_tunnels(p: &ProxyHandle) {
    assert_no_tunnels_below(p, 1).await;
}

/// Waits (bounded) until fewer than `n` tunnels are open.
pub async fn assert_no_tunnels_below(p: &ProxyHandle, n: usize) {
    for _ in 0..200 {
        if p.proxy.open_tunnels() < n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} tunnel(s) still open", p.proxy.open_tunnels());
}

/// A direct tunnel carries bytes both ways and is gone once both sides close.
#[tokio::test]
async fn direct_tunnel_relays_and_cleans_up() {
    let echo = echo_server().await;
    let p = start_proxy(config()).await;
    let (mut s, head) = connect(p.addr, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    s.write_all(b"hello through the tunnel").await.unwrap();
    let mut buf = [0; 24];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello through the tunnel");
    assert_eq!(p.proxy.open_tunnels(), 1);
    s.shutdown().await.unwrap();
    assert_eq!(
        s.read(&mut buf).await.unwrap(),
        0,
        "EOF passed back after half-close"
    );
    assert_no_tunnels(&p).await;
}

/// Anything but host:port is refused with 400 before any dial.
#[tokio::test]
async fn malformed_targets_are_400() {
    let p = start_proxy(config()).await;
    for target in [
        "example.com",
        "example.com:0",
        "exa_mple..com:443",
        "user@127.0.0.1:80",
        "[::1:443",
    ] {
        let (head, body) = send(
            p.addr,
            &format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
        .await;
        assert_eq!(head.status, 400, "{target}: {head:?}");
        // Ours or hyper's (for a request line it cannot parse): Proxy-Status either way.
        assert_error(&head, &body, 400, "http_request_error").await;
    }
    let (head, body) = send(
        p.addr,
        "CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await;
    assert_error(&head, &body, 400, "http_request_error").await;
    assert!(String::from_utf8_lossy(&body).contains("no port"));
}

/// A refused target is 502 connection_refused, and the connection still serves requests.
#[tokio::test]
async fn refused_target_is_502() {
    let closed = free_addr();
    let p = start_proxy(config()).await;
    let (head, body) = connect_error(p.addr, &closed.to_string()).await;
    assert_error(&head, &body, 502, "connection_refused").await;
    assert!(String::from_utf8_lossy(&body).contains(&format!("target {closed} refused")));
}

/// A name that does not resolve is 502 dns_error (resolver injected, nothing leaves the host).
#[tokio::test]
async fn dns_failure_is_502_dns_error() {
    let p = start_proxy_with(config(), Arc::new(TestResolver::default())).await;
    let (head, body) = connect_error(p.addr, "nowhere.test:443").await;
    assert_error(&head, &body, 502, "dns_error").await;
}

/// The upstream gets exactly one well-formed CONNECT with decoded credentials and Via, and the
/// bytes it sends in the same write as its 200 reach the client first.
#[tokio::test]
async fn upstream_connect_bytes_and_leftover() {
    let (up, mut heads) =
        basic_upstream(b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-banner\r\n").await;
    let p = start_proxy(Config {
        router: via(&format!("http://al%40ice:p%3Aw@{up}")),
        ..config()
    })
    .await;
    let (mut s, head) = connect(p.addr, "origin.test:22").await;
    assert_eq!(head.status, 200);
    let mut banner = [0; 16];
    s.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"SSH-2.0-banner\r\n");
    // al@ice:p:w
    assert_eq!(
        heads.recv().await.unwrap(),
        "CONNECT origin.test:22 HTTP/1.1\r\nHost: origin.test:22\r\n\
         Proxy-Authorization: Basic YWxAaWNlOnA6dw==\r\nVia: 1.1 viaduct\r\n\r\n"
    );
    s.write_all(b"after").await.unwrap();
    let mut back = [0; 5];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"after");
}

/// Bytes the client pipelines right behind its CONNECT (before our 200) reach the target.
#[tokio::test]
async fn optimistic_client_data_is_kept() {
    let echo = echo_server().await;
    let p = start_proxy(config()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\nEARLY-CLIENT-HELLO").as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(head.status, 200);
    let mut buf = [0; 18];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"EARLY-CLIENT-HELLO");
}

/// Any 2xx from the upstream opens the tunnel, HTTP/1.0 included.
#[tokio::test]
async fn any_2xx_from_upstream_opens() {
    let (up, _) = fake_upstream(b"HTTP/1.0 204 No Content\r\nContent-Length: 10\r\n\r\n").await;
    let p = start_proxy(Config {
        router: via(&format!("http://{up}")),
        ..config()
    })
    .await;
    let (mut s, head) = connect(p.addr, "origin.test:443").await;
    assert_eq!(head.status, 200);
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

/// Upstream failures: each a clear status and Proxy-Status, never a hang.
#[tokio::test]
async fn upstream_failures_are_reported() {
    let cases: [(&'static [u8], u16, &str, &str); 4] = [
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
            502,
            "http_request_denied",
            "credentials",
        ),
        (
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
            502,
            "destination_unavailable",
            "answered 503",
        ),
        (
            b"SSH-2.0-not-http\r\n\r\n",
            502,
            "http_protocol_error",
            "invalid handshake response",
        ),
        (
            b"HTTP/1.1 200 OK\r\n",
            502,
            "http_response_incomplete",
            "closed the connection",
        ),
    ];
    for (reply, status, error_type, detail) in cases {
        let (up, _) = if reply.ends_with(b"OK\r\n") {
            closing_upstream(reply).await
        } else {
            fake_upstream(reply).await
        };
        let p = start_proxy(Config {
            router: via(&format!("http://u:secret@{up}")),
            ..config()
        })
        .await;
        let (head, body) = connect_error(p.addr, "origin.test:443").await;
        assert_error(&head, &body, status, error_type).await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains(detail) && text.contains(&up.to_string()),
            "{text}"
        );
        assert!(!text.contains("secret") && !head.get("proxy-status").unwrap().contains("secret"));
        // An upstream that answered in HTTP is named with its status; one that did not, not.
        let received = head
            .get("proxy-status")
            .unwrap()
            .split("; ")
            .find_map(|p| p.strip_prefix("received-status="))
            .map(str::to_owned);
        let expected = match reply {
            r if r.starts_with(b"HTTP/1.1 407") => Some("407"),
            r if r.starts_with(b"HTTP/1.1 503") => Some("503"),
            _ => None,
        };
        assert_eq!(
            received.as_deref(),
            expected,
            "{:?}",
            head.get("proxy-status")
        );
    }
}

async fn closing_upstream(
    reply: &'static [u8],
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve_tcp(move |mut s| async move {
        let mut buf = [0; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(reply).await;
    })
    .await;
    (addr, rx)
}

/// An upstream that never answers the CONNECT gives 504 after the connect timeout.
#[tokio::test]
async fn silent_upstream_is_504() {
    let up = serve_tcp(|mut s| async move {
        let _ = s.read_to_end(&mut Vec::new()).await;
    })
    .await;
    let p = start_proxy(Config {
        router: via(&format!("http://{up}")),
        ..config_with(|s| s.connect_timeout = Duration::from_millis(300))
    })
    .await;
    let (head, body) = connect_error(p.addr, "origin.test:443").await;
    assert_error(&head, &body, 504, "connection_timeout").await;
}

/// 32 MiB each way at once through two chained proxies arrive byte-identical.
#[tokio::test]
async fn large_transfer_both_ways_through_a_chain() {
    let echo = echo_server().await;
    let second = start_upstream("second").await;
    let first = start_proxy(Config {
        router: via(&format!("http://{}", second.addr)),
        ..config()
    })
    .await;
    let (s, head) = connect(first.addr, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    let (mut r, mut w) = s.into_split();
    const N: usize = 32 << 20;
    let data: Vec<u8> = (0..N).map(|i| (i * 7 % 251) as u8).collect();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(N);
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), N);
    assert!(got == expected, "bytes differ");
    assert_no_tunnels(&first).await;
    assert_no_tunnels(&second).await;
}

/// A tunnel with no traffic is closed after the idle timeout.
#[tokio::test]
async fn idle_tunnel_is_closed() {
    let echo = echo_server().await;
    let p = start_proxy(Config {
        ..config_with(|s| s.idle_timeout = Duration::from_millis(300))
    })
    .await;
    let (mut s, head) = connect(p.addr, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    let started = Instant::now();
    let mut buf = [0; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed by idle timeout");
    assert_eq!(n.unwrap(), 0);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_no_tunnels(&p).await;
}

/// An upstream pointing back at the proxy itself fails fast with 508, not a socket storm.
#[tokio::test]
async fn self_loop_is_508() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = viaduct::Proxy::new(Config {
        router: via(&format!("http://{addr}")),
        ..config()
    })
    .unwrap();
    tokio::spawn(viaduct::serve(listener, proxy, std::future::pending()));
    let (head, body) = connect_error(addr, "origin.test:443").await;
    assert_error(&head, &body, 508, "proxy_loop_detected").await;
    let (head, body) = send(
        addr,
        "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_error(&head, &body, 508, "proxy_loop_detected").await;
}
