//! TLS to an HTTPS proxy hop (rustls on the ring provider).
//!
//! The hop's certificate is checked against its host name (SNI and verification both use the
//! host from the upstream URL) with the webpki roots plus any `--upstream-ca` files. Turning
//! verification off takes `--upstream-insecure`, explicitly.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

use super::error::ConnectError;
use crate::stream::BoxIo;
use crate::target::{Host, Target};

/// How to trust HTTPS proxies.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM files with extra CA certificates (for a private CA), on top of the webpki roots.
    pub ca_files: Vec<PathBuf>,
    /// Skip certificate verification entirely. For tests against throwaway proxies only.
    pub insecure: bool,
}

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("CA file {0} holds no certificate")]
    NoCertificates(String),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the connector once, at startup.
pub fn connector(options: &TlsOptions) -> Result<TlsConnector, TlsConfigError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let mut config = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut pinned = Vec::new();
        for path in &options.ca_files {
            let shown = path.display().to_string();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsConfigError::CaFile {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(TlsConfigError::NoCertificates(shown));
            }
            for cert in certs {
                roots.add(cert.clone())?;
                pinned.push(cert);
            }
        }
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| TlsConfigError::Rustls(rustls::Error::General(e.to_string())))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinning { webpki, pinned }))
            .with_no_client_auth()
    };
    // We speak HTTP/1.1 to proxies.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Runs the TLS handshake with the hop at `addr` over `io`.
pub async fn connect(
    tls: &TlsConnector,
    io: BoxIo,
    addr: &Target,
    peer: &str,
) -> Result<BoxIo, ConnectError> {
    connect_with_end_point(tls, io, addr, peer)
        .await
        .map(|(s, _)| s)
}

/// [`connect`], also returning the proxy's `tls-server-end-point` (RFC 5929: the hash of its
/// certificate), which channel bindings of an authentication over this TLS carry.
pub async fn connect_with_end_point(
    tls: &TlsConnector,
    io: BoxIo,
    addr: &Target,
    peer: &str,
) -> Result<(BoxIo, Option<Vec<u8>>), ConnectError> {
    let name = match &addr.host {
        Host::Name(n) => ServerName::try_from(n.clone()),
        Host::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
    }
    .map_err(|e| ConnectError::HopProtocol {
        peer: peer.to_owned(),
        reason: e.to_string(),
    })?;
    match tls.connect(name, io).await {
        Ok(stream) => {
            let end_point = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| server_end_point(c.as_ref()));
            Ok((Box::new(stream), end_point))
        }
        Err(e) => {
            let source = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .cloned();
            match source {
                Some(source) => Err(ConnectError::Tls {
                    peer: peer.to_owned(),
                    source,
                }),
                None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    Err(ConnectError::HopClosed {
                        peer: peer.to_owned(),
                    })
                }
                None => Err(ConnectError::io(peer, e)),
            }
        }
    }
}

/// webpki's verification, plus pinning: a proxy that presents, byte for byte, one of the
/// `--upstream-ca` certificates is trusted even when that certificate is marked as a CA
/// (OpenSSL 3's `req -x509` does so by default, and curl's `--proxy-cacert` accepts it). Its
/// name is still checked, and so are its dates (webpki checks validity before it refuses a CA
/// certificate as an end entity, so reaching that refusal means the dates were fine).
/// Everything else keeps webpki's rules.
#[derive(Debug)]
struct Pinning {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for Pinning {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)))
                if super::error::is_ca_as_end_entity(&other)
                    && self
                        .pinned
                        .iter()
                        .any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Accepts any certificate (still checking handshake signatures). Only with `--upstream-insecure`.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// RFC 5929 4.1 `tls-server-end-point`: the certificate's hash with the hash function of its
/// signature algorithm, SHA-256 where that is MD5 or SHA-1 (or unknown).
pub fn server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    use ring::digest;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    let algorithm = match oid.as_str() {
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => &digest::SHA384,
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => &digest::SHA512,
        _ => &digest::SHA256,
    };
    Some(digest::digest(algorithm, der).as_ref().to_vec())
}
