//! The HTTP CONNECT handshake toward an upstream proxy, written against the raw stream.
//!
//! Why not hyper-util's `Tunnel`: it drops bytes read past the 200, accepts only exactly 200 and
//! loses the status code (hyper-util PRs #300/#313/#315). Here the response head is parsed with
//! `httparse` from a bounded buffer, any 2xx opens the tunnel (RFC 9110 9.3.6), 1xx interim heads
//! are skipped, and whatever arrived after the head is returned to the caller.

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::ConnectError;
use crate::target::Target;

/// The largest upstream response head we read before giving up.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

/// Sends `CONNECT target` on `io` (already connected to the proxy `peer`) and reads the answer.
///
/// Returns the bytes the proxy sent after its 2xx head; they are the tunnel's first bytes.
///
/// # Errors
/// A non-2xx answer is [`ConnectError::HopStatus`]; EOF before a full head is
/// [`ConnectError::HopClosed`]; an unparseable or oversized head is `HopProtocol` /
/// `HopHeadTooLarge`; I/O failures are mapped by [`ConnectError::io`].
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    peer: &str,
    target: &Target,
    auth: Option<&HeaderValue>,
    via: &HeaderValue,
) -> Result<Bytes, ConnectError> {
    let mut req = Vec::with_capacity(256);
    let authority = target.to_string();
    req.extend_from_slice(b"CONNECT ");
    req.extend_from_slice(authority.as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    req.extend_from_slice(authority.as_bytes());
    if let Some(auth) = auth {
        req.extend_from_slice(b"\r\nProxy-Authorization: ");
        req.extend_from_slice(auth.as_bytes());
    }
    req.extend_from_slice(b"\r\nVia: ");
    req.extend_from_slice(via.as_bytes());
    req.extend_from_slice(b"\r\n\r\n");
    io.write_all(&req)
        .await
        .map_err(|e| ConnectError::io(peer, e))?;
    io.flush().await.map_err(|e| ConnectError::io(peer, e))?;

    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // Parse what we have first: a previous read may hold a 1xx head *and* the final one.
        match parse_head(&buf, peer)? {
            Some((len, status)) if status.is_informational() => {
                let _ = buf.split_to(len);
                continue;
            }
            Some((len, status)) if status.is_success() => {
                let _ = buf.split_to(len);
                tracing::debug!(%peer, status = status.as_u16(), leftover = buf.len(), "upstream opened the tunnel");
                return Ok(buf.freeze());
            }
            Some((_, status)) => {
                return Err(ConnectError::HopStatus {
                    peer: peer.to_owned(),
                    status,
                });
            }
            None if buf.len() >= MAX_HEAD => {
                return Err(ConnectError::HopHeadTooLarge {
                    peer: peer.to_owned(),
                    max: MAX_HEAD,
                });
            }
            None => {}
        }
        buf.reserve(4096.min(MAX_HEAD - buf.len()));
        let n = io
            .read_buf(&mut buf)
            .await
            .map_err(|e| ConnectError::io(peer, e))?;
        if n == 0 {
            return Err(ConnectError::HopClosed {
                peer: peer.to_owned(),
            });
        }
    }
}

/// `Some((head length, status))` once `buf` holds a complete head.
pub fn parse_head(buf: &[u8], peer: &str) -> Result<Option<(usize, StatusCode)>, ConnectError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let protocol = |reason: String| ConnectError::HopProtocol {
        peer: peer.to_owned(),
        reason,
    };
    match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let code = res.code.ok_or_else(|| protocol("no status code".into()))?;
            let status =
                StatusCode::from_u16(code).map_err(|_| protocol(format!("status code {code}")))?;
            Ok(Some((len, status)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(ConnectError::HopHeadTooLarge {
            peer: peer.to_owned(),
            max: MAX_HEAD,
        }),
        Err(e) => Err(protocol(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::error::ConnectErrorKind;
    use tokio::io::AsyncReadExt;

    const EXPECTED_REQ: &[u8] =
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nVia: 1.1 viaduct\r\n\r\n";

    async fn run(reads: &[&[u8]]) -> Result<Bytes, ConnectError> {
        let mut mock = tokio_test_like(reads);
        let target = Target::new("example.com", 443).unwrap();
        handshake(
            &mut mock,
            "upstream p:1",
            &target,
            None,
            &HeaderValue::from_static("1.1 viaduct"),
        )
        .await
    }

    /// A duplex whose far end asserts the request bytes, then writes each scripted chunk.
    fn tokio_test_like(reads: &[&[u8]]) -> tokio::io::DuplexStream {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let reads: Vec<Vec<u8>> = reads.iter().map(|r| r.to_vec()).collect();
        tokio::spawn(async move {
            let mut got = vec![0; EXPECTED_REQ.len()];
            far.read_exact(&mut got).await.unwrap();
            assert_eq!(got, EXPECTED_REQ, "{}", String::from_utf8_lossy(&got));
            for r in reads {
                far.write_all(&r).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        near
    }

    #[tokio::test]
    async fn any_2xx_opens_and_keeps_leftover() {
        // The 200 and the server's banner arrive in one read.
        let left = run(&[b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-x\r\n"])
            .await
            .unwrap();
        assert_eq!(&left[..], b"SSH-2.0-x\r\n");
        // HTTP/1.0 and a non-200 2xx, head split across reads.
        let left = run(&[b"HTTP/1.0 204 No", b" Content\r\nX: y\r\n", b"\r\n"])
            .await
            .unwrap();
        assert!(left.is_empty());
    }

    #[tokio::test]
    async fn skips_interim_responses() {
        let left = run(&[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nhi"])
            .await
            .unwrap();
        assert_eq!(&left[..], b"hi");
    }

    #[tokio::test]
    async fn classifies_failures() {
        let e = run(&[b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"])
            .await
            .unwrap_err();
        assert_eq!(
            e.kind(),
            ConnectErrorKind::HopStatus(StatusCode::PROXY_AUTHENTICATION_REQUIRED)
        );
        assert!(e.to_string().contains("credentials"), "{e}");
        assert_eq!(
            run(&[b"HTTP/1.1 200 OK\r\n"]).await.unwrap_err().kind(),
            ConnectErrorKind::Incomplete
        );
        assert_eq!(
            run(&[b"SSH-2.0-OpenSSH\r\n\r\n"]).await.unwrap_err().kind(),
            ConnectErrorKind::Protocol
        );
        let huge = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &vec![b'a'; MAX_HEAD]].concat();
        assert_eq!(
            run(&[&huge]).await.unwrap_err().kind(),
            ConnectErrorKind::HeadTooLarge
        );
    }
}
