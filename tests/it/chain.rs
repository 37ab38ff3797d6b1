//! Upstreams of every kind (HTTPS, SOCKS5/5h, chains), with in-process proxies as hops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use viaduct::Config;
use viaduct::routing::Router;
use viaduct::upstream::{Route, TlsOptions};

use crate::support::*;

fn route(s: &str) -> Router {
    Router::single(Route::parse(s).unwrap())
}

async fn assert_echo(proxy: SocketAddr, target: &str) {
    let (mut s, head) = connect(proxy, target).await;
    assert_eq!(head.status, 200, "{head:?}");
    s.write_all(b"through every hop").await.unwrap();
    let mut buf = [0; 17];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"through every hop");
}

async fn error_of(proxy: SocketAddr, target: &str) -> (Head, String) {
    let (head, body) = connect_error(proxy, target).await;
    (head, String::from_utf8(body).unwrap())
}

/// `socks5h://` hands the target's name to the proxy (no local DNS); `socks5://` resolves it
/// here and sends the address. Both with RFC 1929 credentials from the URL.
#[tokio::test]
async fn socks5h_sends_names_socks5_sends_addresses() {
    let echo = echo_server().await;
    let names = HashMap::from([("origin.test".to_owned(), echo)]);
    let (socks, mut seen) = socks5_server(Some(("bob", "p@ss")), names).await;
    let target = format!("origin.test:{}", echo.port());

    let p = start_proxy(Config {
        router: route(&format!("socks5h://bob:p%40ss@{socks}")),
        ..config()
    })
    .await;
    assert_echo(p.addr, &target).await;
    assert_eq!(
        seen.recv().await.unwrap(),
        (3, "origin.test".to_owned(), echo.port())
    );

    let resolver = TestResolver::default().with("origin.test", echo);
    let p = start_proxy_with(
        Config {
            router: route(&format!("socks5://bob:p%40ss@{socks}")),
            ..config()
        },
        Arc::new(resolver),
    )
    .await;
    assert_echo(p.addr, &target).await;
    assert_eq!(
        seen.recv().await.unwrap(),
        (1, "127.0.0.1".to_owned(), echo.port())
    );
}

/// SOCKS failures say which hop and what it answered, in words.
#[tokio::test]
async fn socks_failures_name_the_hop() {
    let (socks, _) = socks5_server(Some(("bob", "right")), HashMap::new()).await;
    let p = start_proxy(Config {
        router: route(&format!("socks5h://bob:wrong@{socks}")),
        ..config()
    })
    .await;
    let (head, body) = error_of(p.addr, "origin.test:443").await;
    assert_eq!(head.status, 502);
    assert!(
        head.get("proxy-status")
            .unwrap()
            .contains("error=http_request_denied")
    );
    assert!(
        body.contains(&format!(
            "socks5h proxy {socks} rejected our user name and password"
        )),
        "{body}"
    );
    assert!(!body.contains("wrong"));

    let p = start_proxy(Config {
        router: route(&format!("socks5h://bob:right@{socks}")),
        ..config()
    })
    .await;
    let (head, body) = error_of(p.addr, "nowhere.test:443").await;
    assert_eq!(head.status, 502);
    assert!(
        head.get("proxy-status")
            .unwrap()
            .contains("error=destination_unavailable")
    );
    assert!(
        body.contains(&format!("socks5h proxy {socks} answered: host unreachable")),
        "{body}"
    );
}

/// An HTTPS upstream with a private CA: tunnels and plain requests work; the wrong CA is a
/// clear 502 tls_certificate_error; `insecure` skips verification.
#[tokio::test]
async fn https_upstream_with_private_ca() {
    let echo = echo_server().await;
    let mut o = origin().await;
    let behind = start_upstream("behind").await;
    let cert = test_cert("proxy.test");
    let front = tls_front(&cert, behind.addr).await;
    let resolver = Arc::new(TestResolver::default().with("proxy.test", front));
    let hop = || route(&format!("https://proxy.test:{}", front.port()));

    let tls = TlsOptions {
        ca_files: vec![cert.pem_file.path().to_owned()],
        insecure: false,
    };
    let p = start_proxy_with(
        Config {
            router: hop(),
            tls,
            ..config()
        },
        resolver.clone(),
    )
    .await;
    assert_echo(p.addr, &echo.to_string()).await;
    let (head, body) = get_hello(p.addr, o.addr).await;
    assert_eq!((head.status, body.as_slice()), (200, b"hello\n".as_slice()));
    let seen = o.seen.recv().await.unwrap();
    assert_eq!(seen.uri, "/hello");
    let via: Vec<_> = seen
        .headers
        .get_all("via")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        via.join(", "),
        "1.1 viaduct, 1.1 behind",
        "absolute-form to the HTTPS hop, which forwarded it"
    );

    let wrong = test_cert("proxy.test");
    let tls = TlsOptions {
        ca_files: vec![wrong.pem_file.path().to_owned()],
        insecure: false,
    };
    let p = start_proxy_with(
        Config {
            router: hop(),
            tls,
            ..config()
        },
        resolver.clone(),
    )
    .await;
    let (head, body) = error_of(p.addr, &echo.to_string()).await;
    assert_eq!(head.status, 502, "{body}");
    assert!(
        head.get("proxy-status")
            .unwrap()
            .contains("error=tls_certificate_error"),
        "{head:?}"
    );
    assert!(
        body.contains(&format!(
            "TLS with https proxy proxy.test:{} failed",
            front.port()
        )),
        "{body}"
    );

    let tls = TlsOptions {
        ca_files: vec![],
        insecure: true,
    };
    let p = start_proxy_with(
        Config {
            router: hop(),
            tls,
            ..config()
        },
        resolver,
    )
    .await;
    assert_echo(p.addr, &echo.to_string()).await;
}

/// Any kind at any hop: SOCKS then a TLS proxy then plain HTTP, and CONNECT then SOCKS.
#[tokio::test]
async fn any_kind_at_any_hop() {
    let echo = echo_server().await;
    let cert = test_cert("proxy.test");
    let last = start_upstream("last").await;
    let middle = start_upstream("middle").await;
    let front = tls_front(&cert, middle.addr).await;
    let names = HashMap::from([
        ("proxy.test".to_owned(), front),
        ("origin.test".to_owned(), echo),
    ]);
    let (socks, mut seen) = socks5_server(None, names).await;

    // TLS proxy behind SOCKS, then CONNECT inside the TLS, then another CONNECT.
    let chain = format!(
        "socks5h://{socks},https://proxy.test:{},http://{}",
        front.port(),
        last.addr
    );
    let tls = TlsOptions {
        ca_files: vec![cert.pem_file.path().to_owned()],
        insecure: false,
    };
    let p = start_proxy(Config {
        router: route(&chain),
        tls,
        ..config()
    })
    .await;
    assert_echo(p.addr, &echo.to_string()).await;
    assert_eq!(
        seen.recv().await.unwrap(),
        (3, "proxy.test".to_owned(), front.port())
    );

    // SOCKS inside CONNECT: the SOCKS handshake runs through an HTTP proxy's tunnel.
    let chain = format!("http://{},socks5h://{socks}", last.addr);
    let p = start_proxy(Config {
        router: route(&chain),
        ..config()
    })
    .await;
    assert_echo(p.addr, &format!("origin.test:{}", echo.port())).await;
}

/// Plain HTTP through SOCKS or a chain rides a tunnel: the origin sees origin-form.
#[tokio::test]
async fn plain_http_through_socks_and_chains() {
    let mut o = origin().await;
    let (socks, _) = socks5_server(None, HashMap::from([("origin.test".to_owned(), o.addr)])).await;
    let second = start_upstream("second").await;
    for chain in [
        format!("socks5h://{socks}"),
        format!("http://{},socks5h://{socks}", second.addr),
    ] {
        let p = start_proxy(Config {
            router: route(&chain),
            ..config()
        })
        .await;
        let req = format!(
            "GET http://origin.test:{}/hello HTTP/1.1\r\nHost: origin.test\r\n\r\n",
            o.addr.port()
        );
        let (head, body) = send(p.addr, &req).await;
        assert_eq!(
            (head.status, body.as_slice()),
            (200, b"hello\n".as_slice()),
            "{chain}"
        );
        let seen = o.seen.recv().await.unwrap();
        assert_eq!(seen.uri, "/hello");
        assert_eq!(
            seen.headers["host"],
            format!("origin.test:{}", o.addr.port())
        );
    }
}

/// In a chain, a failure names the hop by position: "hop 2 (...) answered 407".
#[tokio::test]
async fn chain_failures_name_the_hop() {
    let first = start_upstream("first").await;
    let (denying, _) = fake_upstream(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
    let chain = format!("http://{},http://user:secret@{denying}", first.addr);
    let p = start_proxy(Config {
        router: route(&chain),
        ..config()
    })
    .await;
    let (head, body) = error_of(p.addr, "origin.test:443").await;
    assert_eq!(head.status, 502);
    assert!(
        head.get("proxy-status")
            .unwrap()
            .contains("received-status=407")
    );
    assert!(
        body.contains(&format!("hop 2 (http proxy {denying}) answered 407")),
        "{body}"
    );
    assert!(!body.contains("secret"));

    // The connect timeout covers the whole chain and names where it stopped.
    let silent = serve_tcp(|mut s| async move {
        let _ = s.read_to_end(&mut Vec::new()).await;
    })
    .await;
    let chain = format!("http://{},socks5h://{silent}", first.addr);
    let p = start_proxy(Config {
        router: route(&chain),
        ..config_with(|s| s.connect_timeout = Duration::from_millis(400))
    })
    .await;
    let (head, body) = error_of(p.addr, "origin.test:443").await;
    assert_eq!(head.status, 504);
    assert!(
        body.contains(&format!("hop 2 (socks5h proxy {silent})")),
        "{body}"
    );
}
