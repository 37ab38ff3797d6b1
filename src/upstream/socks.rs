//! SOCKS5 (RFC 1928, with RFC 1929 username/password) and SOCKS4a handshakes over any stream,
//! so that SOCKS hops compose with TLS and CONNECT hops in a chain.
//!
//! The wire work is tokio-socks': it reads replies with exact-length reads, so nothing past a
//! reply is ever consumed (no leftover to carry). This module maps its errors to
//! [`ConnectError`]s that name the hop and say, in words, what the hop answered.

use std::io;
use std::net::SocketAddr;

use tokio_socks::tcp::{Socks4Stream, Socks5Stream};
use tokio_socks::{Error as SocksError, IntoTargetAddr, TargetAddr};

use super::error::{ConnectError, SocksReply};
use super::hop::Credentials;
use crate::stream::BoxIo;
use crate::target::{Host, Target};

/// Where a SOCKS hop should connect: a name it resolves itself, or an address we resolved.
#[derive(Debug, Clone)]
pub enum SocksTarget {
    Name(String, u16),
    Addr(SocketAddr),
}

impl SocksTarget {
    /// The target as given: names stay names (for `socks5h`/`socks4a`).
    pub fn remote(target: &Target) -> Self {
        match &target.host {
            Host::Name(n) => Self::Name(n.clone(), target.port),
            Host::Ip(ip) => Self::Addr(SocketAddr::new(*ip, target.port)),
        }
    }

    fn addr(&self) -> Result<TargetAddr<'_>, SocksError> {
        match self {
            Self::Name(n, port) => (n.as_str(), *port).into_target_addr(),
            Self::Addr(a) => Ok(TargetAddr::Ip(*a)),
        }
    }
}

/// SOCKS5 CONNECT through `io` (connected to the hop `peer`).
pub async fn socks5(
    io: BoxIo,
    peer: &str,
    target: &SocksTarget,
    credentials: Option<&Credentials>,
) -> Result<BoxIo, ConnectError> {
    let addr = target.addr().map_err(|e| map(peer, e))?;
    let stream = match credentials {
        Some(c) => Socks5Stream::connect_with_password_and_socket(io, addr, &c.user, &c.pass).await,
        None => Socks5Stream::connect_with_socket(io, addr).await,
    };
    Ok(stream.map_err(|e| map(peer, e))?.into_inner())
}

/// SOCKS4a CONNECT through `io`; the user id is the URL's user name (empty when none).
pub async fn socks4a(
    io: BoxIo,
    peer: &str,
    target: &SocksTarget,
    credentials: Option<&Credentials>,
) -> Result<BoxIo, ConnectError> {
    let addr = target.addr().map_err(|e| map(peer, e))?;
    let user = credentials.map_or("", |c| c.user.as_str());
    let stream = Socks4Stream::connect_with_userid_and_socket(io, addr, user).await;
    Ok(stream.map_err(|e| map(peer, e))?.into_inner())
}

fn map(peer: &str, e: SocksError) -> ConnectError {
    let peer = peer.to_owned();
    let reply = |reply| ConnectError::SocksReply {
        peer: peer.clone(),
        reply,
    };
    match e {
        SocksError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            ConnectError::HopClosed { peer }
        }
        SocksError::Io(e) => ConnectError::io(&peer, e),
        SocksError::GeneralSocksServerFailure => reply(SocksReply::GeneralFailure),
        SocksError::ConnectionNotAllowedByRuleset => reply(SocksReply::NotAllowed),
        SocksError::NetworkUnreachable => reply(SocksReply::NetworkUnreachable),
        SocksError::HostUnreachable => reply(SocksReply::HostUnreachable),
        SocksError::ConnectionRefused => reply(SocksReply::ConnectionRefused),
        SocksError::TtlExpired => reply(SocksReply::TtlExpired),
        SocksError::CommandNotSupported => reply(SocksReply::CommandNotSupported),
        SocksError::AddressTypeNotSupported => reply(SocksReply::AddressTypeNotSupported),
        // tokio-socks reports an unassigned SOCKS5 reply code as "unknown auth method".
        SocksError::UnknownAuthMethod | SocksError::UnknownError => reply(SocksReply::Unassigned),
        SocksError::PasswordAuthFailure(_) => ConnectError::HopAuth {
            peer,
            reason: "rejected our user name and password (check user:pass in the upstream URL)",
        },
        SocksError::NoAcceptableAuthMethods | SocksError::AuthorizationRequired => {
            ConnectError::HopAuth {
                peer,
                reason: "requires an authentication method we did not offer (add user:pass to the upstream URL)",
            }
        }
        SocksError::IdentdAuthFailure | SocksError::InvalidUserIdAuthFailure => {
            ConnectError::HopAuth {
                peer,
                reason: "rejected the request: identd check failed",
            }
        }
        other => ConnectError::HopProtocol {
            peer,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    //! Each handshake scripted byte by byte with `tokio_test`-style mocks: the mock asserts what
    //! we write and plays the server's bytes.
    use super::*;
    use crate::upstream::error::ConnectErrorKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fake SOCKS server on a duplex: each step is (bytes we must write, bytes it answers).
    fn server(steps: Vec<(Vec<u8>, Vec<u8>)>) -> tokio::io::DuplexStream {
        let (near, mut far) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            for (expect, answer) in steps {
                let mut got = vec![0; expect.len()];
                if far.read_exact(&mut got).await.is_err() {
                    return;
                }
                assert_eq!(got, expect);
                far.write_all(&answer).await.unwrap();
            }
            // Then act as the target: echo.
            let (mut r, mut w) = tokio::io::split(far);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        near
    }

    fn creds() -> Credentials {
        Credentials {
            user: "bob".into(),
            pass: "pw".into(),
        }
    }

    const GREET_AUTH: [u8; 4] = [5, 2, 0, 2];
    const AUTH: [u8; 8] = [1, 3, b'b', b'o', b'b', 2, b'p', b'w'];
    /// CONNECT example.com:443 by name.
    fn req_name() -> Vec<u8> {
        [&[5, 1, 0, 3, 11][..], b"example.com", &[1, 187]].concat()
    }
    const OK_V4: [u8; 10] = [5, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90];

    async fn run5(steps: Vec<(Vec<u8>, Vec<u8>)>) -> Result<BoxIo, ConnectError> {
        let target = SocksTarget::Name("example.com".into(), 443);
        socks5(
            Box::new(server(steps)),
            "socks5h proxy p:1080",
            &target,
            Some(&creds()),
        )
        .await
    }

    #[tokio::test]
    async fn socks5_with_password_then_relays_without_losing_bytes() {
        let mut s = run5(vec![
            // greeting: offer no-auth and user/pass; server picks user/pass
            (GREET_AUTH.to_vec(), vec![5, 2]),
            // RFC 1929 sub-negotiation; success
            (AUTH.to_vec(), vec![1, 0]),
            // CONNECT by name; success with an IPv4 bound address
            (req_name(), OK_V4.to_vec()),
        ])
        .await
        .unwrap();
        s.write_all(b"after").await.unwrap();
        let mut buf = [0; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"after");
    }

    #[tokio::test]
    async fn socks5_ip_target_without_auth() {
        let target = SocksTarget::Addr("192.0.2.7:80".parse().unwrap());
        let steps = vec![
            (vec![5, 1, 0], vec![5, 0]),
            (
                vec![5, 1, 0, 1, 192, 0, 2, 7, 0, 80],
                [&[5, 0, 0, 4][..], &[0; 16], &[0, 0]].concat(),
            ),
        ];
        assert!(
            socks5(Box::new(server(steps)), "socks5 proxy p:1", &target, None)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn socks5_every_reply_code_is_named() {
        let expected = [
            (1, SocksReply::GeneralFailure),
            (2, SocksReply::NotAllowed),
            (3, SocksReply::NetworkUnreachable),
            (4, SocksReply::HostUnreachable),
            (5, SocksReply::ConnectionRefused),
            (6, SocksReply::TtlExpired),
            (7, SocksReply::CommandNotSupported),
            (8, SocksReply::AddressTypeNotSupported),
            (9, SocksReply::Unassigned),
        ];
        for (code, reply) in expected {
            let err = run5(vec![
                (GREET_AUTH.to_vec(), vec![5, 2]),
                (AUTH.to_vec(), vec![1, 0]),
                (req_name(), vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0]),
            ])
            .await
            .err()
            .expect("handshake should fail");
            assert_eq!(
                err.kind(),
                ConnectErrorKind::SocksReply(reply),
                "code {code}"
            );
            assert!(
                err.to_string().starts_with("socks5h proxy p:1080 answered"),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn socks5_auth_rejected_and_truncated_and_garbage() {
        let err = run5(vec![
            (GREET_AUTH.to_vec(), vec![5, 2]),
            (AUTH.to_vec(), vec![1, 1]),
        ])
        .await
        .err()
        .expect("handshake should fail");
        assert_eq!(err.kind(), ConnectErrorKind::HopAuth);
        assert!(
            err.to_string()
                .contains("rejected our user name and password"),
            "{err}"
        );
        let err = run5(vec![(GREET_AUTH.to_vec(), vec![5, 0xff])])
            .await
            .err()
            .expect("handshake should fail");
        assert_eq!(err.kind(), ConnectErrorKind::HopAuth);

        // The server closes in the middle of its reply.
        let (near, mut far) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let mut g = [0; 4];
            far.read_exact(&mut g).await.unwrap();
            far.write_all(&[5]).await.unwrap();
        });
        let target = SocksTarget::Name("example.com".into(), 443);
        let err = socks5(Box::new(near), "p", &target, Some(&creds()))
            .await
            .err()
            .expect("handshake should fail");
        assert_eq!(err.kind(), ConnectErrorKind::Incomplete);

        // Not a SOCKS server at all.
        let err = run5(vec![(
            GREET_AUTH.to_vec(),
            b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
        )])
        .await
        .err()
        .expect("handshake should fail");
        assert_eq!(err.kind(), ConnectErrorKind::Protocol);
    }

    /// Bytes the server sends right behind its reply (a server that speaks first) are the
    /// tunnel's first bytes, not swallowed by the handshake.
    #[tokio::test]
    async fn socks5_extra_bytes_after_reply_are_kept() {
        let mut s = run5(vec![
            (GREET_AUTH.to_vec(), vec![5, 2]),
            (AUTH.to_vec(), vec![1, 0]),
            (req_name(), [&OK_V4[..], b"220 smtp ready\r\n"].concat()),
        ])
        .await
        .unwrap();
        let mut banner = [0; 16];
        s.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"220 smtp ready\r\n");
    }

    #[tokio::test]
    async fn socks4a_by_name() {
        let target = SocksTarget::Name("example.com".into(), 443);
        let req = [&[4, 1, 1, 187, 0, 0, 0, 1][..], b"bob\0example.com\0"].concat();
        let ok = vec![(req.clone(), vec![0, 0x5a, 0, 0, 0, 0, 0, 0])];
        assert!(
            socks4a(Box::new(server(ok)), "p", &target, Some(&creds()))
                .await
                .is_ok()
        );
        let rejected = vec![(req, vec![0, 0x5b, 0, 0, 0, 0, 0, 0])];
        let err = socks4a(Box::new(server(rejected)), "p", &target, Some(&creds()))
            .await
            .err()
            .expect("handshake should fail");
        assert_eq!(
            err.kind(),
            ConnectErrorKind::SocksReply(SocksReply::GeneralFailure)
        );
    }
}
