//! Regressions from the hardening pass (issue 15): each test failed against 2c9fdd8 and asserts
//! the fixed behaviour over loopback sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use viaduct::{Config, Limits};

use crate::support::*;

fn router(toml: &str) -> viaduct::routing::Router {
    viaduct::config::parse(toml, "t.toml").unwrap().router
}

fn basic(user: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:x"))
    )
}

/// Reads everything until EOF, bounded by `within`.
async fn read_all_within(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .ok()
        .map(|_| out)
}

/// An HTTP/1.1 origin that answers every request head with `reply` after `delay`, keeps the
/// connection alive, and counts the connections open right now and the most open at once.
async fn counting_origin(
    delay: Duration,
    reply: &'static [u8],
) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let live = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (counter, most) = (Arc::clone(&live), Arc::clone(&peak));
    let addr = serve_tcp(move |mut s| {
        let (live, peak) = (Arc::clone(&counter), Arc::clone(&most));
        async move {
            let now = live.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    tokio::time::sleep(delay).await;
                    if s.write_all(reply).await.is_err() {
                        break;
                    }
                }
            }
            live.fetch_sub(1, Ordering::SeqCst);
        }
    })
    .await;
    (addr, live, peak)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never: {what}");
}

/// Item 2: twenty spellings of one origin and forty concurrent requests leave at most
/// `max_idle_upstream` connections idle, and the reaper closes those after the idle timeout
/// with no further request to trigger it.
#[tokio::test]
async fn idle_upstream_connections_are_capped_and_reaped() {
    let (origin, live, peak) = counting_origin(
        Duration::from_millis(200),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let limits = Limits {
        max_idle_upstream: 4,
        upstream_idle_timeout: Duration::from_millis(600),
        ..Limits::default()
    };
    let p = start_proxy(Config { limits, ..config() }).await;
    let port = origin.port();
    let spellings = [
        "127.0.0.1",
        "127.1",
        "127.0.1",
        "2130706433",
        "0x7f000001",
        "0x7f.1",
        "0177.0.0.1",
        "0177.1",
        "0x7F.0.0.1",
        "127.0.0.01",
    ];
    let mut tasks = Vec::new();
    for i in 0..40 {
        let host = spellings[i % spellings.len()];
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            send(
                addr,
                &format!("GET http://{host}:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            )
            .await
        }));
    }
    for t in tasks {
        let (head, body) = t.await.unwrap();
        assert_eq!((head.status, body.as_slice()), (200, b"ok".as_slice()));
    }
    // At their peak (the cap may already have closed some of them since).
    assert!(
        peak.load(Ordering::SeqCst) >= 10,
        "the requests ran concurrently"
    );
    let proxy = Arc::clone(&p.proxy);
    eventually("idle connections capped at 4", || {
        proxy.idle_upstream_connections() <= 4 && live.load(Ordering::SeqCst) <= 4
    })
    .await;
    eventually("idle connections reaped", || {
        proxy.idle_upstream_connections() == 0 && live.load(Ordering::SeqCst) == 0
    })
    .await;
}

/// Item 4: a CONNECT (or plain request) to one of our own listen addresses, in any spelling,
/// is refused with 508 instead of nesting tunnels into ourselves.
#[tokio::test]
async fn requests_to_our_own_listener_are_refused() {
    let p = start_proxy(config()).await;
    let port = p.addr.port();
    for target in [
        format!("127.0.0.1:{port}"),
        format!("127.1:{port}"),
        format!("0.0.0.0:{port}"),
        format!("2130706433:{port}"),
    ] {
        let (head, body) = connect_error(p.addr, &target).await;
        assert_error(&head, &body, 508, "proxy_loop_detected").await;
    }
    let (head, body) = send(
        p.addr,
        &format!("GET http://127.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_error(&head, &body, 508, "proxy_loop_detected").await;
    assert_eq!(p.proxy.open_tunnels(), 0);

    // A wildcard listener is reached through every local address, names included.
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let wport = listener.local_addr().unwrap().port();
    let resolver = TestResolver::default().with("wild.test", ([127, 0, 0, 5], wport).into());
    let proxy = viaduct::Proxy::with_resolver(config(), Arc::new(resolver)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(viaduct::serve(listener, proxy, async move {
        let _ = stopped.await;
    }));
    let local: std::net::SocketAddr = ([127, 0, 0, 1], wport).into();
    wait_listening(local).await;
    for target in [format!("127.0.0.2:{wport}"), format!("wild.test:{wport}")] {
        let (head, body) = connect_error(local, &target).await;
        assert_error(&head, &body, 508, "proxy_loop_detected").await;
    }
    // Another port on the same addresses is fine.
    let echo = echo_server().await;
    let (_s, head) = connect(local, &format!("127.0.0.1:{}", echo.port())).await;
    assert_eq!(head.status, 200);
    let _ = stop.send(());
    task.await.unwrap();
}

/// Item 5: kept-alive forwarding connections never carry one account's requests on another
/// account's session, and a reload that rotates an account's password stops reusing sessions
/// opened with the old one.
#[tokio::test]
async fn kept_alive_connections_are_per_account() {
    let o = origin().await;
    let crate::support::Socks5Fixture {
        addr: socks,
        mut users,
        ..
    } = crate::support::socks5_fixture(
        crate::support::SocksAuth::AnyUser,
        std::collections::HashMap::new(),
    )
    .await;
    let conf = |alice_pw: &str| {
        router(&format!(
            "[upstreams]\na = \"socks5://alice:{alice_pw}@{socks}\"\nb = \"socks5://bob:pb@{socks}\"\n\
             [[rules]]\nmatch = {{ users = [\"alice\"] }}\nvia = \"a\"\n\
             [[rules]]\nmatch = {{ users = [\"bob\"] }}\nvia = \"b\"\n"
        ))
    };
    let p = start_proxy(Config {
        router: conf("pa"),
        auth: Some(crate::support::users(&[("alice", "x"), ("bob", "x")])),
        ..config()
    })
    .await;
    let get = |user: &'static str| {
        let addr = p.addr;
        let origin = o.addr;
        async move {
            let (head, body) = send(
                addr,
                &format!(
                    "GET http://{origin}/hello HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\n\r\n",
                    basic(user)
                ),
            )
            .await;
            assert_eq!((head.status, body.as_slice()), (200, b"hello\n".as_slice()));
        }
    };
    get("alice").await;
    assert_eq!(users.recv().await.unwrap(), "alice");
    get("bob").await;
    assert_eq!(
        users.recv().await.unwrap(),
        "bob",
        "bob got his own session"
    );
    get("alice").await;
    // The fixture reports a session before it relays a byte: had this request opened one, it
    // would be in the channel before the response came back.
    assert!(
        users.try_recv().is_err(),
        "alice's session was kept alive and reused"
    );

    // Rotate alice's password: her old session must not carry further requests.
    p.proxy.reload(Config {
        router: conf("pa2"),
        auth: Some(crate::support::users(&[("alice", "x"), ("bob", "x")])),
        ..config()
    });
    get("alice").await;
    assert_eq!(
        users.recv().await.unwrap(),
        "alice",
        "a new session after the reload"
    );
}

/// Items 6-8: rules see every spelling of an address; written ports must be valid; a query on
/// an empty path reaches the origin as `/?q`.
#[tokio::test]
async fn target_spellings_ports_and_queries() {
    let mut o = origin().await;
    let p = start_proxy(Config {
        router: router(
            "[[rules]]\nmatch = { cidrs = [\"127.0.0.0/8\"], ports = [9] }\nvia = \"block\"\n",
        ),
        ..config()
    })
    .await;
    for host in [
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "0.0.0.0",
        "[::ffff:127.0.0.1]",
    ] {
        let (head, body) = connect_error(p.addr, &format!("{host}:9")).await;
        assert_error(&head, &body, 403, "http_request_denied").await;
    }
    for url in [
        "http://127.0.0.1:99999/",
        "http://h.test:4x/",
        "http://h.test:/",
    ] {
        let (head, body) = send(p.addr, &format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert_error(&head, &body, 400, "http_request_error").await;
    }
    let (head, _) = send(
        p.addr,
        &format!("GET http://{}?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", o.addr),
    )
    .await;
    assert_eq!(head.status, 404);
    assert_eq!(o.seen.recv().await.unwrap().uri, "/?q=1");
}

/// Item 9: an unsolicited 101 is 502; TRACE and OPTIONS with `Max-Forwards: 0` are answered by
/// us (without echoing credentials) and decremented otherwise; a malformed chunked body from
/// the client is the client's 400, not the origin's 502.
#[tokio::test]
async fn switches_trace_options_and_bad_chunks() {
    let switcher = serve_tcp(|mut s| async move {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
            )
            .await;
        let _ = s.read(&mut buf).await;
    })
    .await;
    let mut o = origin().await;
    let p = start_proxy(config()).await;
    let (head, body) = send(
        p.addr,
        &format!("GET http://{switcher}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_error(&head, &body, 502, "http_protocol_error").await;

    let (head, body) = send(
        p.addr,
        &format!(
            "TRACE http://{}/x HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\nProxy-Authorization: Basic c2VjcmV0OnB3\r\nCookie: c=secret\r\nX-Mine: 1\r\n\r\n",
            o.addr
        ),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.get("content-type"), Some("message/http"));
    let echo = String::from_utf8(body).unwrap();
    assert!(echo.starts_with("TRACE http://"), "{echo}");
    assert!(echo.contains("x-mine: 1"), "{echo}");
    assert!(
        !echo.contains("c2VjcmV0") && !echo.contains("secret"),
        "{echo}"
    );

    let (head, _) = send(
        p.addr,
        &format!(
            "OPTIONS http://{}/ HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n",
            o.addr
        ),
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.get("allow").is_some_and(|a| a.contains("CONNECT")));
    assert!(o.seen.try_recv().is_err(), "the origin saw neither");

    let (_head, _) = send(
        p.addr,
        &format!(
            "OPTIONS http://{}/hello HTTP/1.1\r\nHost: x\r\nMax-Forwards: 3\r\n\r\n",
            o.addr
        ),
    )
    .await;
    let seen = o.seen.recv().await.unwrap();
    assert_eq!(seen.headers["max-forwards"], "2");

    let (head, body) = send(
        p.addr,
        &format!(
            "POST http://{}/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            o.addr
        ),
    )
    .await;
    assert_error(&head, &body, 400, "http_request_error").await;
}

/// Item 15: a forwarded response whose body stalls after its head is cut after the idle
/// timeout: the client sees the connection close instead of waiting forever.
#[tokio::test]
async fn stalled_response_bodies_are_cut() {
    let staller = serve_tcp(|mut s| async move {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            .await;
        let _ = s.read(&mut buf).await;
    })
    .await;
    let p = start_proxy(Config {
        ..config_with(|s| s.idle_timeout = Duration::from_millis(800))
    })
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(format!("GET http://{staller}/ HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(head.status, 200);
    let rest = read_all_within(&mut s, Duration::from_secs(10))
        .await
        .expect("the stalled body was cut");
    assert_eq!(
        rest, b"0123456789",
        "only what the origin sent, never passed off as complete"
    );
}

/// Item 16: a request body that stalls, or dribbles below the minimum rate after the grace
/// period, gets the client 408 with Proxy-Status, and the origin connection is closed at once.
#[tokio::test]
async fn slow_request_bodies_get_408_and_free_the_origin() {
    // An origin that reads until the proxy closes, counting its open connections.
    let live = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&live);
    let origin = serve_tcp(move |mut s| {
        let live = Arc::clone(&counter);
        async move {
            live.fetch_add(1, Ordering::SeqCst);
            let _ = s.read_to_end(&mut Vec::new()).await;
            live.fetch_sub(1, Ordering::SeqCst);
        }
    })
    .await;
    let limits = Limits {
        request_body_timeout: Duration::from_millis(700),
        request_body_grace: Duration::from_millis(700),
        request_body_min_rate: 1000,
        ..Limits::default()
    };
    let p = start_proxy(Config { limits, ..config() }).await;

    // Stalls after ten bytes.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        format!(
            "POST http://{origin}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let head = read_head(&mut s).await;
    let body = read_body(&mut s, &head).await;
    assert_error(&head, &body, 408, "http_request_error").await;
    assert!(String::from_utf8_lossy(&body).contains("stalled"));
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually("origin connection closed", || {
        live.load(Ordering::SeqCst) == 0
    })
    .await;

    // Dribbles one byte every 100 ms: alive, but far below 1000 bytes/s.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        format!("POST http://{origin}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let dribble = async {
        for _ in 0..100 {
            if s.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), dribble).await;
    let head = read_head(&mut s).await;
    let body = read_body(&mut s, &head).await;
    assert_error(&head, &body, 408, "http_request_error").await;
    assert!(
        String::from_utf8_lossy(&body).contains("bytes/s"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    eventually("origin connection closed", || {
        live.load(Ordering::SeqCst) == 0
    })
    .await;
}

/// Item 17: hyper's own answers to malformed heads (431, 400) carry Proxy-Status like ours.
#[tokio::test]
async fn malformed_heads_get_proxy_status() {
    let limits = Limits {
        max_header_bytes: 16 * 1024,
        ..Limits::default()
    };
    let p = start_proxy(Config { limits, ..config() }).await;
    for (raw, status) in [
        (
            format!(
                "GET http://127.0.0.1:9/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(20_000)
            ),
            431,
        ),
        ("GARBAGE\r\n\r\n".to_owned(), 400),
    ] {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        let _ = s.write_all(raw.as_bytes()).await;
        let head = read_head(&mut s).await;
        let body = read_body(&mut s, &head).await;
        assert_error(&head, &body, status, "http_request_error").await;
    }
}

/// Item 18: least-connections counts a plain request until its body has been carried, not
/// just until its head: while one member streams a long body, the next request goes elsewhere.
#[tokio::test]
async fn least_connections_counts_plain_requests_until_the_body_ends() {
    let member = |name: &'static str, tx: mpsc::UnboundedSender<&'static str>| {
        serve_tcp(move |mut s| {
            let tx = tx.clone();
            async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                tx.send(name).unwrap();
                // Head and half the body, then hold.
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
                    .await;
                let _ = s.read(&mut buf).await;
            }
        })
    };
    let (tx, mut hits) = mpsc::unbounded_channel();
    let a = member("a", tx.clone()).await;
    let b = member("b", tx).await;
    let p = start_proxy(Config {
        router: router(&format!(
            "[upstreams]\na = \"http://{a}\"\nb = \"http://{b}\"\n\
             [pools.p]\nmembers = [\"a\", \"b\"]\nstrategy = \"least-connections\"\n\
             [default]\nvia = \"p\"\n"
        )),
        ..config()
    })
    .await;
    let mut first = TcpStream::connect(p.addr).await.unwrap();
    first
        .write_all(b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_head(&mut first).await.status, 200);
    assert_eq!(hits.recv().await.unwrap(), "a");
    let mut second = TcpStream::connect(p.addr).await.unwrap();
    second
        .write_all(b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_head(&mut second).await.status, 200);
    assert_eq!(
        hits.recv().await.unwrap(),
        "b",
        "a still carries the first body"
    );
}

/// Item 3: a client that sent a tunnel more than its target ever reads, then vanished, does not
/// pin the tunnel (two sockets and a pipe) for the idle timeout: once nothing moves for the
/// linger (5 s) it is closed, and the target sees the close.
#[tokio::test]
async fn abandoned_tunnels_to_targets_that_never_read_are_closed() {
    // The target: a small receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let sink = socket.listen(16).unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let (s, _) = sink.accept().await.unwrap();
        // Report when the proxy closes its side, without reading a byte (read-closed
        // readiness shows the FIN or reset).
        loop {
            let ready = s.ready(tokio::io::Interest::READABLE).await.unwrap();
            if ready.is_read_closed() {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let p = start_proxy(config()).await;
    let (mut tunnel, head) = connect(p.addr, &sink_addr.to_string()).await;
    assert_eq!(head.status, 200);
    // Fill every buffer on the way until writes stall: the proxy is left holding bytes the
    // target will never read.
    let chunk = vec![b'x'; 64 * 1024];
    while tokio::time::timeout(Duration::from_millis(500), tunnel.write_all(&chunk))
        .await
        .is_ok()
    {}
    assert_eq!(p.proxy.open_tunnels(), 1);
    // The client goes away for good (a reset: its FIN could not pass its unsent bytes).
    #[allow(deprecated)]
    tunnel.set_linger(Some(Duration::ZERO)).unwrap();
    drop(tunnel);
    let left = Instant::now();
    let proxy = Arc::clone(&p.proxy);
    for _ in 0..400 {
        if proxy.open_tunnels() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        proxy.open_tunnels(),
        0,
        "tunnel still open {:?} after the client left",
        left.elapsed()
    );
    assert!(
        left.elapsed() < Duration::from_secs(9),
        "{:?}",
        left.elapsed()
    );
    let closed_at = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the target's connection was closed")
        .unwrap();
    assert!(closed_at.duration_since(left) < Duration::from_secs(9));
}

/// Item 13: an HTTPS upstream whose certificate is a self-signed CA certificate (OpenSSL 3's
/// default) is trusted when that very certificate is given to `--upstream-ca`; its name is
/// still checked, and failures read in words.
#[tokio::test]
async fn pinned_self_signed_ca_certificates_are_trusted() {
    let echo = echo_server().await;
    let behind = start_upstream("behind").await;
    let cert = test_ca_cert("proxy.test");
    let front = tls_front(&cert, behind.addr).await;
    let resolver = Arc::new(
        TestResolver::default()
            .with("proxy.test", front)
            .with("other.test", front),
    );
    let tls = || viaduct::upstream::TlsOptions {
        ca_files: vec![cert.pem_file.path().to_owned()],
        insecure: false,
    };
    let p = start_proxy_with(
        Config {
            router: via(&format!("https://proxy.test:{}", front.port())),
            tls: tls(),
            ..config()
        },
        resolver.clone(),
    )
    .await;
    let (mut s, head) = connect(p.addr, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    s.write_all(b"pinned").await.unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pinned");

    // The same certificate presented for another name is refused, in words.
    let p = start_proxy_with(
        Config {
            router: via(&format!("https://other.test:{}", front.port())),
            tls: tls(),
            ..config()
        },
        resolver,
    )
    .await;
    let (head, body) = connect_error(p.addr, &echo.to_string()).await;
    assert_error(&head, &body, 502, "tls_certificate_error").await;
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.contains("certificate is for") && body.contains("not other.test"),
        "{body}"
    );
    assert!(
        !body.contains("Other(") && !body.contains("Error"),
        "{body}"
    );
}

/// Item 14: a plain request through a pool whose first member answers 407 goes on to the next
/// member when it can be sent again (no body, or a small one), as CONNECT does; a large
/// streamed body cannot be replayed and gets the member's 502.
#[tokio::test]
async fn plain_requests_fail_over_past_a_members_407() {
    let (refuser, mut refused) = fake_upstream(
        b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let mut good = origin().await;
    let p = start_proxy(Config {
        router: router(&format!(
            "[upstreams]\nbad = \"http://{refuser}\"\ngood = \"http://{}\"\n\
             [pools.p]\nmembers = [\"bad\", \"good\"]\nstrategy = \"failover\"\nfailures = 100\n\
             [default]\nvia = \"p\"\n",
            good.addr
        )),
        ..config()
    })
    .await;
    let (head, body) = send(
        p.addr,
        "GET http://origin.test/hello HTTP/1.1\r\nHost: origin.test\r\n\r\n",
    )
    .await;
    assert_eq!((head.status, body.as_slice()), (200, b"hello\n".as_slice()));
    assert!(
        refused
            .recv()
            .await
            .unwrap()
            .starts_with("GET http://origin.test/hello")
    );
    assert_eq!(
        good.seen.recv().await.unwrap().uri,
        "http://origin.test/hello"
    );

    let (head, body) = send(
        p.addr,
        "POST http://origin.test/echo HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .await;
    assert_eq!(
        (head.status, body.as_slice()),
        (200, b"hello world".as_slice())
    );
    assert!(refused.recv().await.unwrap().starts_with("POST"));

    let big = "x".repeat(100 * 1024);
    let (head, body) = send(
        p.addr,
        &format!(
            "POST http://origin.test/echo HTTP/1.1\r\nHost: origin.test\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        ),
    )
    .await;
    assert_error(&head, &body, 502, "http_request_denied").await;
    assert!(String::from_utf8_lossy(&body).contains(&refuser.to_string()));
}

/// Item 12: a storm of reloads does not become a storm of health probes: members whose URL is
/// unchanged keep their health state, and their new checker waits one interval.
#[tokio::test]
async fn reload_storms_do_not_multiply_health_probes() {
    let (member, mut probes) = fake_upstream(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
    let echo = echo_server().await;
    let text = format!(
        "[upstreams]\nm = \"http://{member}\"\n\
         [pools.p]\nmembers = [\"m\"]\nhealth = {{ interval = \"2s\", target = \"{echo}\" }}\n\
         [default]\nvia = \"p\"\n"
    );
    let p = start_proxy(Config {
        router: router(&text),
        ..config()
    })
    .await;
    // The first checker probes at once.
    let first = tokio::time::timeout(Duration::from_secs(5), probes.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(first.starts_with("CONNECT "));
    for _ in 0..200 {
        p.proxy.reload(Config {
            router: router(&text),
            ..config()
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut during = 0;
    while probes.try_recv().is_ok() {
        during += 1;
    }
    assert_eq!(
        during, 0,
        "200 reloads within one interval sent {during} probes"
    );
}

/// Hardening 2, finding 7: a name an earlier rule sends to a `socks5h://` upstream is not
/// resolved here because a later rule asks for addresses: the upstream resolves it (here to
/// an echo server only it knows), and the local answer (an internal address, denied under
/// the safe default) never decides anything.
#[tokio::test]
async fn names_for_socks5h_upstreams_stay_unresolved_despite_resolve_rules() {
    let echo = echo_server().await;
    let socks = crate::support::socks5_fixture(
        crate::support::SocksAuth::Open,
        std::collections::HashMap::from([("app.corp".to_owned(), echo)]),
    )
    .await;
    let mut seen = socks.seen;
    let mut cfg = Config {
        router: router(&format!(
            "[upstreams]\ncorp = \"socks5h://{}\"\n\
             [[rules]]\nmatch = {{ domains = [\"*.corp\"] }}\nvia = \"corp\"\n\
             [[rules]]\nmatch = {{ cidrs = [\"10.0.0.0/8\"] }}\nresolve = true\nvia = \"block\"\n",
            socks.addr
        )),
        ..config()
    };
    cfg.access.destinations.deny_internal = true;
    // The local resolver would answer loopback: denied, had it been asked.
    let resolver = TestResolver::default().with("app.corp", "127.0.0.1:1".parse().unwrap());
    let p = start_proxy_with(cfg, Arc::new(resolver)).await;
    let target = format!("app.corp:{}", echo.port());
    let (mut s, head) = connect(p.addr, &target).await;
    assert_eq!(head.status, 200);
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    let (atyp, host, _) = seen.recv().await.unwrap();
    assert_eq!(
        (atyp, host.as_str()),
        (3, "app.corp"),
        "the name went upstream"
    );
}
