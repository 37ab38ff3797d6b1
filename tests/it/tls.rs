//! The seed scenario: an HTTPS request whose TLS handshake runs through a CONNECT tunnel that
//! goes through an upstream proxy (here a second viaduct), to a TLS origin.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use viaduct::Config;

use crate::support::*;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS origin for `origin.test` that answers every request with a fixed HTTP response.
async fn tls_origin() -> (std::net::SocketAddr, CertificateDer<'static>) {
    let cert = rcgen::generate_simple_self_signed(vec!["origin.test".to_owned()]).unwrap();
    let der = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = vec![0; 4096];
                let mut req = Vec::new();
                while !req.ends_with(b"\r\n\r\n") {
                    let n = tls.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nhello, https\n").await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, der)
}

/// curl -x viaduct https://origin.test/ with viaduct going through an upstream: the TLS
/// handshake completes inside the tunnel and the HTTPS response arrives intact.
#[tokio::test]
async fn https_through_upstream_tunnel() {
    let (origin_addr, cert) = tls_origin().await;
    let resolver = TestResolver::default().with("origin.test", origin_addr);
    let upstream = start_proxy_with(
        Config {
            ..config_with(|s| s.via_name = "upstream".into())
        },
        Arc::new(resolver),
    )
    .await;
    let p = start_proxy(Config {
        router: via(&format!("http://{}", upstream.addr)),
        ..config()
    })
    .await;

    let (tunnel, head) = connect(p.addr, &format!("origin.test:{}", origin_addr.port())).await;
    assert_eq!(head.status, 200);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let mut tls = connector
        .connect(ServerName::try_from("origin.test").unwrap(), tunnel)
        .await
        .expect("TLS handshake through the tunnel");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.starts_with("HTTP/1.1 200 OK") && text.ends_with("hello, https\n"),
        "{text}"
    );
}
