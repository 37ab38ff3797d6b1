//! Plain HTTP forwarding of absolute-form requests.

use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use viaduct::Config;

use crate::support::*;

/// Direct: the origin gets origin-form with the right Host and Via, and no hop-by-hop header
/// goes either way.
#[tokio::test]
async fn direct_get_rewrites_headers_both_ways() {
    let mut o = origin().await;
    let p = start_proxy(config()).await;
    let (head, body) = send(
        p.addr,
        &format!(
            "GET http://{}/hop?q=1 HTTP/1.1\r\nHost: wrong.example\r\nConnection: close, X-Private\r\n\
             X-Private: 1\r\nProxy-Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
             Trailer: X-T\r\nProxy-Authorization: Basic Y2xpZW50OnB3\r\nX-End: kept\r\n\r\n",
            o.addr
        ),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(body, b"hop\n");
    let seen = o.seen.recv().await.unwrap();
    assert_eq!(seen.uri, "/hop?q=1", "origin-form on the wire");
    assert_eq!(seen.headers["host"], o.addr.to_string());
    assert_eq!(seen.headers["via"], "1.1 viaduct");
    assert_eq!(seen.headers["x-end"], "kept");
    for h in [
        "x-private",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
    ] {
        assert!(!seen.headers.contains_key(h), "{h} was forwarded");
    }
    assert_eq!(head.get("via"), Some("1.1 viaduct"));
    assert_eq!(head.get("x-end"), Some("kept"));
    for h in ["x-hop", "keep-alive", "proxy-authenticate"] {
        assert!(head.get(h).is_none(), "{h} came back: {head:?}");
    }
}

/// Via an upstream: absolute-form, with the upstream's credentials (the client sends none).
#[tokio::test]
async fn via_upstream_sends_absolute_form_with_credentials() {
    let (up, mut heads) = basic_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n").await;
    let p = start_proxy(Config {
        router: via(&format!("http://bob:pa%20ss@{up}")),
        ..config()
    })
    .await;
    let (head, body) = send(
        p.addr,
        "GET http://origin.test:8080/a?b HTTP/1.1\r\nHost: origin.test:8080\r\n\r\n",
    )
    .await;
    assert_eq!((head.status, body.as_slice()), (200, b"ok\n".as_slice()));
    let req = heads.recv().await.unwrap();
    assert!(
        req.starts_with("GET http://origin.test:8080/a?b HTTP/1.1\r\n"),
        "{req}"
    );
    // bob:pa ss
    assert!(
        req.to_ascii_lowercase().contains(
            "proxy-authorization: basic Ym9iOnBhIHNz"
                .to_ascii_lowercase()
                .as_str()
        ),
        "{req}"
    );
    assert!(
        req.contains("via: 1.1 viaduct") || req.contains("Via: 1.1 viaduct"),
        "{req}"
    );
}

/// An upstream's 407 on a plain request becomes a 502 that names the problem; the challenge is
/// not passed to the client.
#[tokio::test]
async fn upstream_407_on_plain_request_is_502() {
    let (up, _) = fake_upstream(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n").await;
    let p = start_proxy(Config {
        router: via(&format!("http://{up}")),
        ..config()
    })
    .await;
    let (head, body) = send(
        p.addr,
        "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n",
    )
    .await;
    assert_error(&head, &body, 502, "http_request_denied").await;
    assert!(head.get("proxy-authenticate").is_none());
    assert!(String::from_utf8_lossy(&body).contains("credentials"));
}

/// Request bodies stream to the origin and back: chunked and Content-Length.
#[tokio::test]
async fn bodies_stream_both_ways() {
    let o = origin().await;
    let p = start_proxy(config()).await;
    let (head, body) = send(
        p.addr,
        &format!(
            "POST http://{}/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            o.addr
        ),
    )
    .await;
    assert_eq!(
        (head.status, body.as_slice()),
        (200, b"hello world".as_slice())
    );

    let big = "z".repeat(3 << 20);
    let (head, body) = send(
        p.addr,
        &format!(
            "PUT http://{}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{big}",
            o.addr,
            big.len()
        ),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(body.len(), big.len());

    let (head, body) = send(
        p.addr,
        &format!(
            "GET http://{}/big/5000000 HTTP/1.1\r\nHost: x\r\n\r\n",
            o.addr
        ),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(body.len(), 5_000_000);
}

/// `Expect: 100-continue`: the client gets 100 before sending its body, then the answer.
#[tokio::test]
async fn expect_100_continue() {
    let o = origin().await;
    let p = start_proxy(config()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        format!("POST http://{}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n", o.addr)
            .as_bytes(),
    )
    .await
    .unwrap();
    let interim = read_head(&mut s).await;
    assert_eq!(interim.status, 100);
    s.write_all(b"data").await.unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(head.status, 200);
    assert_eq!(read_body(&mut s, &head).await, b"data");
}

/// An HTTP/1.0 client gets its answer (and Via names 1.0, the protocol we received).
#[tokio::test]
async fn http_10_client() {
    let mut o = origin().await;
    let p = start_proxy(config()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(format!("GET http://{}/big/100000 HTTP/1.0\r\n\r\n", o.addr).as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.0 200 OK\r\n"),
        "{}",
        &text[..80.min(text.len())]
    );
    let body_at = text.find("\r\n\r\n").unwrap() + 4;
    assert_eq!(all.len() - body_at, 100_000);
    assert_eq!(o.seen.recv().await.unwrap().headers["via"], "1.0 viaduct");
}

/// Keep-alive both sides: two requests on one client connection reuse one origin connection.
#[tokio::test]
async fn keep_alive_and_pooling() {
    let o = origin().await;
    let p = start_proxy(config()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    for _ in 0..3 {
        s.write_all(format!("GET http://{}/hello HTTP/1.1\r\nHost: x\r\n\r\n", o.addr).as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert_eq!(head.status, 200);
        assert_eq!(read_body(&mut s, &head).await, b"hello\n");
    }
    let (head, _) = get_hello(p.addr, o.addr).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        o.connections.load(Ordering::SeqCst),
        1,
        "origin connection reused"
    );
}

/// `Upgrade: websocket` is forwarded with its pair, and after 101 bytes flow both ways.
#[tokio::test]
async fn upgrade_to_websocket() {
    let mut o = origin().await;
    let p = start_proxy(config()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        format!(
            "GET http://{}/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            o.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(head.status, 101);
    assert_eq!(head.get("upgrade"), Some("websocket"));
    let seen = o.seen.recv().await.unwrap();
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.headers["connection"], "upgrade");
    s.write_all(b"frame").await.unwrap();
    let mut buf = [0; 5];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"frame");
}

/// A response cut short by the origin is never passed off as complete: the client's
/// connection closes before Content-Length is reached.
#[tokio::test]
async fn truncated_response_closes_client() {
    let origin = serve_tcp(|mut s| async move {
        let mut buf = [0; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-half")
            .await;
    })
    .await;
    let p = start_proxy(config()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(format!("GET http://{origin}/ HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(head.get("content-length"), Some("100"));
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.len() < 100, "got {} bytes", rest.len());
}

/// Forwarding errors: refused origin 502, origin-form and https:// URLs 400.
#[tokio::test]
async fn forwarding_errors() {
    let closed = free_addr();
    let p = start_proxy(config()).await;
    let (head, body) = send(
        p.addr,
        &format!("GET http://{closed}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_error(&head, &body, 502, "connection_refused").await;
    assert!(String::from_utf8_lossy(&body).contains(&closed.to_string()));
    let (head, body) = send(p.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_error(&head, &body, 400, "http_request_error").await;
    let (head, body) = send(
        p.addr,
        "GET https://origin.test/ HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_error(&head, &body, 400, "http_request_error").await;
    let (head, body) = send(
        p.addr,
        "GET http://nowhere.test/ HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_error(&head, &body, 502, "dns_error").await;
}
