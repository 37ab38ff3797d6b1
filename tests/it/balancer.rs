//! Behind a load balancer: the PROXY protocol header names the client, and that client is the
//! one access control, per-IP limits and the access log see. Headers are only taken from the
//! balancers in `from`; a connection without one is closed unanswered.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use viaduct::Config;
use viaduct::server::ProxyProtocol;
use viaduct::session::access_log::Format;

use crate::support::*;

fn behind(from: &str) -> Option<ProxyProtocol> {
    Some(ProxyProtocol {
        from: vec![from.parse().unwrap()],
        timeout: Duration::from_secs(2),
    })
}

/// Connects with a v1 header naming `client`, then sends `request`.
async fn via_balancer(proxy: std::net::SocketAddr, client: &str, request: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let (ip, port) = client.rsplit_once(':').unwrap();
    s.write_all(format!("PROXY TCP4 {ip} 127.0.0.1 {port} 8083\r\n{request}").as_bytes())
        .await
        .unwrap();
    s
}

#[tokio::test]
async fn the_header_names_the_client_for_logs_limits_and_access() {
    let o = origin().await;
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let p = start_proxy(Config {
        proxy_protocol: behind("127.0.0.0/8"),
        limits: viaduct::Limits {
            max_connections_per_ip: 1,
            ..viaduct::Limits::default()
        },
        access: viaduct::access::Access {
            clients: viaduct::access::Clients {
                allow: vec!["192.0.2.0/24".parse().unwrap()],
            },
            ..Default::default()
        },
        ..config_with(|s| {
            s.access_log = Format::Json;
            s.access_log_file = Some(log.clone());
        })
    })
    .await;
    let get = format!(
        "GET http://{}/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        o.addr
    );
    let mut s = via_balancer(p.addr, "192.0.2.10:5000", &get).await;
    let head = read_head(&mut s).await;
    assert_eq!(head.status, 200);
    drop(s);

    // One connection per client IP: the real client's, not the balancer's.
    let connect = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n");
    let mut held = via_balancer(p.addr, "192.0.2.10:5001", &connect).await;
    assert_eq!(read_head(&mut held).await.status, 200);
    let mut second = via_balancer(p.addr, "192.0.2.10:5002", &connect).await;
    assert_eq!(read_head(&mut second).await.status, 503);
    let mut other = via_balancer(p.addr, "192.0.2.11:5003", &connect).await;
    assert_eq!(
        read_head(&mut other).await.status,
        200,
        "another client is not counted with it"
    );

    // Allowed clients: the real client's address decides.
    let mut outside = via_balancer(p.addr, "198.51.100.1:6000", &get).await;
    assert_eq!(read_head(&mut outside).await.status, 403);

    // No header: closed without an answer.
    let mut bare = TcpStream::connect(p.addr).await.unwrap();
    bare.write_all(get.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), bare.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{rest:?}");

    drop((held, other));
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("192.0.2.11:5003") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(text.contains("\"client\":\"192.0.2.10:5000\""), "{text}");
    assert!(text.contains("\"client\":\"192.0.2.11:5003\""), "{text}");
}

/// Only the configured balancers may send a header; anyone else is closed unanswered.
#[tokio::test]
async fn headers_from_elsewhere_are_refused() {
    let o = origin().await;
    let p = start_proxy(Config {
        proxy_protocol: behind("10.0.0.0/8"),
        ..config()
    })
    .await;
    let get = format!("GET http://{}/hello HTTP/1.1\r\nHost: x\r\n\r\n", o.addr);
    let mut s = via_balancer(p.addr, "192.0.2.10:5000", &get).await;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{rest:?}");
}

/// Hardening 2, finding 11: connections waiting for their PROXY header hold a place under
/// `max_connections` from accept: with every place taken by silent ones, the next is closed
/// at once; once the header timeout has closed them, the places are free again.
#[tokio::test]
async fn connections_waiting_for_their_header_count_toward_the_limit() {
    let o = origin().await;
    let p = start_proxy(Config {
        proxy_protocol: Some(ProxyProtocol {
            from: vec!["127.0.0.0/8".parse().unwrap()],
            timeout: Duration::from_millis(500),
        }),
        limits: viaduct::Limits {
            max_connections: 3,
            ..viaduct::Limits::default()
        },
        ..config()
    })
    .await;
    let get = format!(
        "GET http://{}/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        o.addr
    );
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(p.addr).await.unwrap());
    }
    // Each silent connection is accepted (and holds its place) before the next is opened:
    // the accept loop takes them in order, so once the fourth is refused, all three count.
    let mut refused = via_balancer(p.addr, "192.0.2.10:5000", &get).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), refused.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))) && buf.is_empty(),
        "served past the limit: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // The silent ones are closed at the header timeout; their places come back.
    for s in &mut silent {
        let mut b = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    }
    eventually("a place is free again", || {
        let get = get.clone();
        async move {
            let mut s = via_balancer(p.addr, "192.0.2.11:5000", &get).await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
            buf.starts_with(b"HTTP/1.1 200")
        }
    })
    .await;
}
