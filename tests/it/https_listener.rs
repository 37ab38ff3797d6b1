//! The `https://` listener: TLS between the client and viaduct, HTTP/1.1 inside, behaving as
//! on the plain port (CONNECT tunnels, plain forwarding); certificates checked at load.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use viaduct::Config;
use viaduct::server::ListenKind;

use crate::support::*;

struct Files {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

fn files() -> Files {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    Files {
        _dir: dir,
        cert,
        key,
        der: c.cert.der().clone(),
    }
}

/// The test configuration with `f` as the https:// listeners' certificate.
fn https_config(f: &Files) -> Config {
    Config {
        tls_listener: Some(viaduct::server::tls::server_config(&f.cert, &f.key).unwrap()),
        ..config()
    }
}

/// A TLS connection to the listener, trusting `der`, offering `alpn`.
async fn tls_client_alpn(
    proxy: std::net::SocketAddr,
    der: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(proxy).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

async fn tls_client(
    proxy: std::net::SocketAddr,
    der: &rustls::pki_types::CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_client_alpn(proxy, der, &[]).await
}

/// An HTTP/2 connection to the listener (ALPN h2), driven in the background.
async fn h2_client(
    proxy: std::net::SocketAddr,
    der: &rustls::pki_types::CertificateDer<'static>,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tls = tls_client_alpn(proxy, der, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn tunnels_and_forwards_inside_tls() {
    let f = files();
    let echo = echo_server().await;
    let o = origin().await;
    let addr = start_proxy_kind(ListenKind::Https, https_config(&f)).await;

    let mut s = tls_client(addr, &f.der).await;
    s.write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(head.status, 200);
    s.write_all(b"inside tls").await.unwrap();
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"inside tls");

    let mut s = tls_client(addr, &f.der).await;
    s.write_all(format!("GET http://{}/hello HTTP/1.1\r\nHost: x\r\n\r\n", o.addr).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    let body = read_body(&mut s, &head).await;
    assert_eq!((head.status, body.as_slice()), (200, b"hello\n".as_slice()));

    // Plain bytes on the TLS port get no HTTP answer.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.read_to_end(&mut rest),
    )
    .await;
    assert!(!rest.starts_with(b"HTTP/"), "{rest:?}");
}

/// A key that is not the certificate's, or an https:// listener without either, is refused
/// at load with the file named.
#[test]
fn bad_pairs_are_refused() {
    let (a, b) = (files(), files());
    let e = viaduct::server::tls::server_config(&a.cert, &b.key).unwrap_err();
    assert!(
        e.contains("do not make a pair") && e.contains("cert.pem"),
        "{e}"
    );
    let e = viaduct::server::tls::server_config(&a.key, &a.key).unwrap_err();
    assert!(e.contains("no certificate"), "{e}");
    let o = viaduct::RunFlags::parse_args(["--listen", "https://127.0.0.1:0"]).unwrap();
    let e = viaduct::config::runtime::merge(None, &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--tls-cert"), "{e}");
}

/// HTTP/2 on the TLS listener (ALPN h2): 100 CONNECT streams on one connection, each its own
/// tunnel; one stream whose reader stalls with 64 MiB coming does not stop the others (flow
/// control per stream), and all 64 MiB arrive once it reads; a plain request is forwarded.
#[tokio::test]
async fn http2_streams_are_independent_tunnels() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;

    let f = files();
    let echo = echo_server().await;
    let o = origin().await;
    const BIG: usize = 64 << 20;
    let source = serve_tcp(|mut s| async move {
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..BIG / chunk.len() {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = s.shutdown().await;
    })
    .await;
    let addr = start_proxy_kind(ListenKind::Https, https_config(&f)).await;

    let sender = h2_client(addr, &f.der).await;

    let open = |target: String| {
        let mut sender = sender.clone();
        async move {
            let req = http::Request::connect(target)
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            TokioIo::new(hyper::upgrade::on(resp).await.unwrap())
        }
    };
    // The stalled stream: 64 MiB on its way, nobody reading.
    let mut big = open(source.to_string()).await;
    let tunnels = (0..100).map(|i| {
        let open = open(echo.to_string());
        tokio::spawn(async move {
            let mut t = open.await;
            let msg = format!("stream {i}");
            t.write_all(msg.as_bytes()).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            t.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg.as_bytes());
        })
    });
    for t in tunnels {
        tokio::time::timeout(std::time::Duration::from_secs(20), t)
            .await
            .expect("every stream answers while one is stalled")
            .unwrap();
    }
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = big.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, BIG);

    // A plain request on the same connection.
    let mut sender = sender.clone();
    let req = http::Request::get(format!("http://{}/hello", o.addr))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), b"hello\n");
}

/// Graceful shutdown over HTTP/2: GOAWAY refuses new streams while an open tunnel keeps
/// working within the grace period, and is cut when it ends.
#[tokio::test]
async fn http2_goaway_lets_open_streams_finish() {
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;

    let f = files();
    let echo = echo_server().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = viaduct::Proxy::new(Config {
        settings: viaduct::Settings {
            shutdown_grace: std::time::Duration::from_millis(800),
            ..https_config(&f).settings
        },
        ..https_config(&f)
    })
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(viaduct::serve_all(
        vec![(listener, ListenKind::Https)],
        proxy,
        async move {
            let _ = stopped.await;
        },
    ));
    let mut sender = h2_client(addr, &f.der).await;
    let connect = || {
        http::Request::connect(echo.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let resp = sender.send_request(connect()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut tunnel = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());

    stop.send(()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The open stream still carries bytes during the grace period.
    tunnel.write_all(b"still open").await.unwrap();
    let mut buf = [0u8; 10];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still open");
    // New streams are refused after GOAWAY: the client gets an error, never a response (a
    // stream opened past the GOAWAY's last id is reset with REFUSED_STREAM).
    let refused = sender.send_request(connect()).await;
    assert!(
        refused.is_err(),
        "a stream after GOAWAY was answered: {:?}",
        refused.map(|r| r.status())
    );
    // The grace period ends: serve_all returns and the tunnel is cut.
    tokio::time::timeout(std::time::Duration::from_secs(5), served)
        .await
        .expect("shutdown completes after the grace period")
        .unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tunnel.read_to_end(&mut rest),
    )
    .await;
    assert!(matches!(ended, Ok(Ok(_)) | Ok(Err(_))), "the tunnel ended");
}

/// Hardening 2, finding 1: CONNECT streams with wrong passwords, each reset a moment after it
/// is sent, are charged to the failure budget when their verification starts: the next wrong
/// password gets 429, not 407, and no more hashes were computed than the budget allows.
#[tokio::test]
async fn reset_streams_do_not_escape_the_login_budget() {
    use base64::Engine;
    let f = files();
    let echo = echo_server().await;
    let text = format!("alice:{}\n", bcrypt::hash("s3cret", 8).unwrap());
    let auth = viaduct::auth::AuthSettings {
        max_failures: 10,
        ..viaduct::auth::AuthSettings::new(viaduct::auth::Users::parse(&text, "t").unwrap())
    };
    let (addr, proxy) = start_proxy_kind_with(
        ListenKind::Https,
        Config {
            auth: Some(auth),
            ..https_config(&f)
        },
    )
    .await;
    let mut sender = h2_client(addr, &f.der).await;
    let connect = |password: &str| {
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"));
        http::Request::connect(echo.to_string())
            .header("proxy-authorization", format!("Basic {creds}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    for i in 0..40 {
        sender.ready().await.unwrap();
        // Dropping the response future resets the stream (RST_STREAM CANCEL).
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(2),
            sender.send_request(connect(&format!("guess-{i}"))),
        )
        .await;
    }
    let auth = proxy.core().auth();
    let resp = sender.send_request(connect("one-more")).await.unwrap();
    assert_eq!(resp.status(), 429, "the budget was skipped");
    assert!(auth.failures() >= 10, "{}", auth.failures());
    assert!(auth.verifications() <= 10, "{}", auth.verifications());
}

/// Hardening 2, finding 5: HTTP/2 connections with nothing in progress are closed after the
/// header-read timeout (GOAWAY), so idle ones cannot hold every place under
/// `max_connections`; a connection with a tunnel open is not idle, and keeps taking streams.
#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let f = files();
    let echo = echo_server().await;
    let mut cfg = https_config(&f);
    cfg.limits.header_read_timeout = std::time::Duration::from_millis(300);
    cfg.limits.max_connections = 3;
    let addr = start_proxy_kind(ListenKind::Https, cfg).await;
    let connect = || {
        http::Request::connect(echo.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    // One connection keeps a tunnel open; two others only say hello.
    let mut busy = h2_client(addr, &f.der).await;
    let resp = busy.send_request(connect()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut tunnel = hyper_util::rt::TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    let idle: Vec<_> = [h2_client(addr, &f.der).await, h2_client(addr, &f.der).await].into();
    eventually("the idle connections are closed", || {
        let closed = idle.iter().all(|s| s.is_closed());
        async move { closed }
    })
    .await;
    // Their places are free again: a new client gets in.
    let mut fresh = h2_client(addr, &f.der).await;
    let resp = fresh.send_request(connect()).await.unwrap();
    assert_eq!(resp.status(), 200);
    // The busy one outlived several timeouts and still carries bytes and new streams.
    tunnel.write_all(b"alive").await.unwrap();
    let mut buf = [0u8; 5];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"alive");
    assert!(!busy.is_closed());
    let resp = busy.send_request(connect()).await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// Hardening 2, finding 17: a client refused on the TLS listener before its handshake gets a
/// TLS alert (access_denied), which its TLS stack reports, not plain text it cannot parse.
#[tokio::test]
async fn refusals_on_the_tls_listener_are_tls_alerts() {
    let f = files();
    let mut cfg = https_config(&f);
    cfg.access.clients.allow = vec!["192.0.2.0/24".parse().unwrap()];
    let addr = start_proxy_kind(ListenKind::Https, cfg).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(f.der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let Err(e) = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
    else {
        panic!("a refused client completed its handshake");
    };
    let alert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    assert_eq!(
        alert,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::AccessDenied
        )),
        "{e}"
    );
}
