//! The SOCKS listener, scripted byte by byte over loopback sockets: SOCKS5 with every address
//! type, RFC 1929 authentication against the users file, every reply code from the one
//! classifier, SOCKS4 and 4a, and the mixed port telling HTTP and SOCKS apart by the first
//! byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use viaduct::Config;
use viaduct::server::ListenKind;

use crate::support::*;

/// Greets with `methods`, returns the chosen method.
async fn greet(s: &mut TcpStream, methods: &[u8]) -> u8 {
    let mut hello = vec![5, methods.len() as u8];
    hello.extend_from_slice(methods);
    s.write_all(&hello).await.unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice[0], 5);
    choice[1]
}

/// Sends a request (`cmd`, `atyp`, address bytes, port) and returns the reply code and the
/// bound address it carries.
async fn request(s: &mut TcpStream, cmd: u8, atyp: u8, addr: &[u8], port: u16) -> (u8, SocketAddr) {
    let mut req = vec![5, cmd, 0, atyp];
    req.extend_from_slice(addr);
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut head = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
        .await
        .expect("a reply in time")
        .unwrap();
    let ip: std::net::IpAddr = match head[3] {
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await.unwrap();
            a.into()
        }
        4 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await.unwrap();
            a.into()
        }
        t => panic!("reply address type {t}"),
    };
    let port = s.read_u16().await.unwrap();
    (head[1], SocketAddr::new(ip, port))
}

fn name(host: &str) -> Vec<u8> {
    let mut v = vec![host.len() as u8];
    v.extend_from_slice(host.as_bytes());
    v
}

async fn round_trip(s: &mut TcpStream) {
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

/// CONNECT by IPv4, IPv6 and name; the reply carries the outgoing connection's bound address.
#[tokio::test]
async fn socks5_connects_by_every_address_type() {
    let echo = echo_server().await;
    let p = start_proxy_with(
        config(),
        Arc::new(TestResolver::default().with("echo.test", echo)),
    )
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    assert_eq!(greet(&mut s, &[0]).await, 0);
    let (code, bound) = request(&mut s, 1, 1, &[127, 0, 0, 1], echo.port()).await;
    assert_eq!(code, 0);
    assert!(bound.ip().is_loopback() && bound.port() != 0, "{bound}");
    round_trip(&mut s).await;

    let mut s = TcpStream::connect(p.addr).await.unwrap();
    greet(&mut s, &[0]).await;
    let (code, _) = request(&mut s, 1, 3, &name("echo.test"), echo.port()).await;
    assert_eq!(code, 0);
    round_trip(&mut s).await;

    if let Ok(v6) = TcpListener::bind("[::1]:0").await {
        let port = v6.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut c, _) = v6.accept().await.unwrap();
            let (mut r, mut w) = c.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        greet(&mut s, &[0]).await;
        let (code, _) = request(&mut s, 1, 4, &std::net::Ipv6Addr::LOCALHOST.octets(), port).await;
        assert_eq!(code, 0);
        round_trip(&mut s).await;
    }
}

/// Every reply code comes from the classifier: 0x02 blocked or denied, 0x03 network
/// unreachable (an upstream's report), 0x04 DNS, 0x05 refused, 0x06 timeout, 0x07 BIND and UDP,
/// 0x08 address type, 0x01 otherwise.
#[tokio::test]
async fn socks5_reply_codes() {
    let echo = echo_server().await;
    let text = "[[rules]]\nmatch = { domains = [\"blocked.test\"] }\nvia = \"block\"\n";
    let p = start_proxy(Config {
        router: viaduct::config::parse(text, "t.toml").unwrap().router,
        ..config()
    })
    .await;
    let code = |cmd: u8, atyp: u8, addr: Vec<u8>, port: u16, proxy: SocketAddr| async move {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        greet(&mut s, &[0]).await;
        request(&mut s, cmd, atyp, &addr, port).await.0
    };
    assert_eq!(code(1, 3, name("blocked.test"), 443, p.addr).await, 0x02);
    assert_eq!(code(1, 3, name("nowhere.test"), 443, p.addr).await, 0x04);
    assert_eq!(
        code(1, 1, vec![127, 0, 0, 1], free_addr().port(), p.addr).await,
        0x05
    );
    assert_eq!(
        code(2, 1, vec![127, 0, 0, 1], echo.port(), p.addr).await,
        0x07
    );
    {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        greet(&mut s, &[0]).await;
        s.write_all(&[5, 1, 0, 9]).await.unwrap();
        let mut reply = [0u8; 2];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[1], 0x08);
    }

    // Denied by the destination policy.
    let denied = start_proxy(Config {
        access: viaduct::access::Access {
            destinations: viaduct::access::Destinations {
                deny_internal: true,
                ..Default::default()
            },
            ..Default::default()
        },
        ..config()
    })
    .await;
    assert_eq!(
        code(1, 1, vec![127, 0, 0, 1], echo.port(), denied.addr).await,
        0x02
    );

    // Through upstreams: a SOCKS upstream that reports "network unreachable", one that never
    // answers (timeout), and an HTTP upstream answering 403 (general failure).
    let unreachable = serve_tcp(|mut s| async move {
        let mut b = [0u8; 3];
        let _ = s.read_exact(&mut b).await;
        let _ = s.write_all(&[5, 0]).await;
        let mut req = [0u8; 10];
        let _ = s.read_exact(&mut req).await;
        let _ = s.write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    })
    .await;
    let silent = serve_tcp(|mut s| async move {
        let _ = s.read_to_end(&mut Vec::new()).await;
    })
    .await;
    let (forbidding, _) =
        fake_upstream(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").await;
    for (up, want) in [
        (format!("socks5://{unreachable}"), 0x03),
        (format!("http://{silent}"), 0x06),
        (format!("http://{forbidding}"), 0x01),
    ] {
        let q = start_proxy(Config {
            router: via(&up),
            ..config_with(|s| s.connect_timeout = Duration::from_millis(300))
        })
        .await;
        assert_eq!(
            code(1, 1, vec![127, 0, 0, 1], echo.port(), q.addr).await,
            want,
            "{up}"
        );
        // UDP cannot go through an upstream proxy: command not supported.
        assert_eq!(code(3, 1, vec![0, 0, 0, 0], 0, q.addr).await, 0x07, "{up}");
    }
}

/// With `[auth]`: only username/password is offered (no-auth gets 0xFF); the same users as
/// HTTP, a session suffix included; wrong passwords get the RFC 1929 failure.
#[tokio::test]
async fn socks5_authenticates_the_same_users() {
    let echo = echo_server().await;
    let p = start_proxy(Config {
        auth: Some(users(&[("alice", "pw")])),
        ..config()
    })
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    assert_eq!(greet(&mut s, &[0]).await, 0xff);

    let login = |user: &'static str, pass: &'static str| async move {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        assert_eq!(greet(&mut s, &[0, 2]).await, 2);
        let mut sub = vec![1, user.len() as u8];
        sub.extend_from_slice(user.as_bytes());
        sub.push(pass.len() as u8);
        sub.extend_from_slice(pass.as_bytes());
        s.write_all(&sub).await.unwrap();
        let mut status = [0u8; 2];
        s.read_exact(&mut status).await.unwrap();
        (s, status[1])
    };
    let (_, status) = login("alice", "nope").await;
    assert_eq!(status, 1);
    for user in ["alice", "alice-session-7"] {
        let (mut s, status) = login(user, "pw").await;
        assert_eq!(status, 0, "{user}");
        let (code, _) = request(&mut s, 1, 1, &[127, 0, 0, 1], echo.port()).await;
        assert_eq!(code, 0);
        round_trip(&mut s).await;
    }
}

/// SOCKS4 and 4a CONNECT; with `[auth]` SOCKS4 is refused (it carries no password).
#[tokio::test]
async fn socks4_and_4a() {
    let echo = echo_server().await;
    let p = start_proxy_with(
        config(),
        Arc::new(TestResolver::default().with("echo.test", echo)),
    )
    .await;
    let socks4 = |proxy: SocketAddr, ip: [u8; 4], host: Option<&'static str>| async move {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let mut req = vec![4, 1];
        req.extend_from_slice(&echo.port().to_be_bytes());
        req.extend_from_slice(&ip);
        req.extend_from_slice(b"someone\0");
        if let Some(h) = host {
            req.extend_from_slice(h.as_bytes());
            req.push(0);
        }
        s.write_all(&req).await.unwrap();
        let mut reply = [0u8; 8];
        s.read_exact(&mut reply).await.unwrap();
        (s, reply[1])
    };
    let (mut s, code) = socks4(p.addr, [127, 0, 0, 1], None).await;
    assert_eq!(code, 90);
    round_trip(&mut s).await;
    let (mut s, code) = socks4(p.addr, [0, 0, 0, 1], Some("echo.test")).await;
    assert_eq!(code, 90);
    round_trip(&mut s).await;
    let (_, code) = socks4(p.addr, [0, 0, 0, 1], Some("nowhere.test")).await;
    assert_eq!(code, 91);

    let authed = start_proxy(Config {
        auth: Some(users(&[("alice", "pw")])),
        ..config()
    })
    .await;
    let (_, code) = socks4(authed.addr, [127, 0, 0, 1], None).await;
    assert_eq!(code, 91);
}

/// The mixed port serves SOCKS5, SOCKS4 and HTTP by their first byte; a client that sends
/// nothing gets HTTP's 408. `http://` and `socks5://` listeners speak only theirs.
#[tokio::test]
async fn first_byte_picks_the_protocol() {
    let echo = echo_server().await;
    let o = origin().await;
    let p = start_proxy(Config {
        limits: viaduct::Limits {
            header_read_timeout: Duration::from_millis(300),
            ..viaduct::Limits::default()
        },
        ..config()
    })
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    assert_eq!(greet(&mut s, &[0]).await, 0);
    assert_eq!(
        request(&mut s, 1, 1, &[127, 0, 0, 1], echo.port()).await.0,
        0
    );
    round_trip(&mut s).await;
    let (head, body) = get_hello(p.addr, o.addr).await;
    assert_eq!((head.status, body.as_slice()), (200, b"hello\n".as_slice()));
    let (mut t, head) = connect(p.addr, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    round_trip(&mut t).await;
    let mut quiet = TcpStream::connect(p.addr).await.unwrap();
    let head = read_head(&mut quiet).await;
    assert_eq!(head.status, 408);

    let http_only = start_proxy_kind(ListenKind::Http, config()).await;
    let mut s = TcpStream::connect(http_only).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(
        head.status, 400,
        "SOCKS bytes on an HTTP-only port are a bad request"
    );

    let socks_only = start_proxy_kind(ListenKind::Socks, config()).await;
    let mut s = TcpStream::connect(socks_only).await.unwrap();
    s.write_all(b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "closed without an answer: {rest:?}"
    );
    let mut s = TcpStream::connect(socks_only).await.unwrap();
    assert_eq!(greet(&mut s, &[0]).await, 0);
}

/// A UDP echo server on loopback.
async fn udp_echo() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// UDP ASSOCIATE on a direct route: datagrams go to the target named in each header and the
/// answers come back with the sender's address; a denied destination gets nothing through;
/// closing the control connection ends the association.
#[tokio::test]
async fn udp_associate_relays_datagrams() {
    let echo = udp_echo().await;
    let associate = |proxy: SocketAddr| async move {
        let mut control = TcpStream::connect(proxy).await.unwrap();
        greet(&mut control, &[0]).await;
        let (code, relay) = request(&mut control, 3, 1, &[0, 0, 0, 0], 0).await;
        assert_eq!(code, 0);
        assert!(relay.ip().is_loopback() && relay.port() != 0, "{relay}");
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (control, client, relay)
    };
    let datagram = |payload: &[u8]| {
        let mut d = vec![0, 0, 0, 1];
        d.extend_from_slice(&[127, 0, 0, 1]);
        d.extend_from_slice(&echo.port().to_be_bytes());
        d.extend_from_slice(payload);
        d
    };
    let p = start_proxy(config()).await;
    let (control, client, relay) = associate(p.addr).await;
    client.send_to(&datagram(b"over udp"), relay).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let mut want = vec![0, 0, 0, 1, 127, 0, 0, 1];
    want.extend_from_slice(&echo.port().to_be_bytes());
    want.extend_from_slice(b"over udp");
    assert_eq!(&buf[..n], want.as_slice());

    drop(control);
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.send_to(&datagram(b"after"), relay).await.unwrap();
    let late = tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf)).await;
    assert!(
        late.is_err(),
        "the association ended with its control connection"
    );

    let denied = start_proxy(Config {
        access: viaduct::access::Access {
            destinations: viaduct::access::Destinations {
                deny_internal: true,
                allow: vec![],
                ..Default::default()
            },
            ..Default::default()
        },
        ..config()
    })
    .await;
    let (_control, client, relay) = associate(denied.addr).await;
    client
        .send_to(&datagram(b"to loopback"), relay)
        .await
        .unwrap();
    let none = tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf)).await;
    assert!(none.is_err(), "a denied destination gets no datagram");
}

/// The handshake timeout bounds the client's part only: a dial slower than it still ends in
/// its reply (here the connect timeout's 0x06), never in a silent close.
#[tokio::test]
async fn a_slow_dial_is_answered_not_cut() {
    let silent = serve_tcp(|mut s| async move {
        let _ = s.read_to_end(&mut Vec::new()).await;
    })
    .await;
    let p = start_proxy(Config {
        router: via(&format!("http://{silent}")),
        limits: viaduct::Limits {
            header_read_timeout: Duration::from_millis(200),
            ..viaduct::Limits::default()
        },
        ..config_with(|s| s.connect_timeout = Duration::from_millis(600))
    })
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    greet(&mut s, &[0]).await;
    let (code, _) = request(&mut s, 1, 1, &[127, 0, 0, 1], 443).await;
    assert_eq!(code, 0x06);
}

/// Hardening 2, finding 6: datagrams obey `[access] connect_ports` and pay the address's
/// bandwidth bucket, as tunnels do.
#[tokio::test]
async fn udp_obeys_connect_ports_and_bandwidth() {
    let allowed = udp_echo().await;
    let other = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let datagram = |to: SocketAddr, payload: &[u8]| {
        let mut d = vec![0, 0, 0, 1, 127, 0, 0, 1];
        d.extend_from_slice(&to.port().to_be_bytes());
        d.extend_from_slice(payload);
        d
    };
    let mut cfg = config();
    cfg.access.destinations.connect_ports = vec![allowed.port()];
    cfg.limits.bandwidth_per_ip = Some(viaduct::config::value::Bandwidth(100_000));
    let p = start_proxy(cfg).await;
    let mut control = TcpStream::connect(p.addr).await.unwrap();
    greet(&mut control, &[0]).await;
    let (code, relay) = request(&mut control, 3, 1, &[0, 0, 0, 0], 0).await;
    assert_eq!(code, 0);
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // The relay handles datagrams in order: once the allowed one's echo is back, the one to
    // the unlisted port was handled (and must not have arrived).
    let to_other = other.local_addr().unwrap();
    client
        .send_to(&datagram(to_other, b"unlisted"), relay)
        .await
        .unwrap();
    client
        .send_to(&datagram(allowed, b"listed"), relay)
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .expect("the listed port answers")
        .unwrap();
    assert!(buf[..n].ends_with(b"listed"));
    assert!(
        other.try_recv_from(&mut buf).is_err(),
        "a datagram reached a port connect_ports does not list"
    );
    // 1 KB datagrams offered at ~500 KB/s for 1.2 s, through 100 KB/s each way (a quarter
    // second of burst): at most ~145 can come back in that time (unlimited, nearly all of
    // the ~600 do); a slow machine only lowers the count.
    let chunk = [7u8; 1000];
    let window = tokio::time::Instant::now() + Duration::from_millis(1200);
    let sender = async {
        while tokio::time::Instant::now() < window {
            client
                .send_to(&datagram(allowed, &chunk), relay)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let receiver = async {
        let mut within = 0;
        let mut buf = [0u8; 2048];
        while let Ok(Ok(_)) = tokio::time::timeout_at(window, client.recv_from(&mut buf)).await {
            within += 1;
        }
        within
    };
    let ((), within) = tokio::join!(sender, receiver);
    assert!(within > 0, "nothing came back");
    assert!(
        within <= 170,
        "{within} KB came back within 1.2 s at 100 KB/s"
    );
}
