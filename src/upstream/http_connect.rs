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
use super::proxy_auth::{Negotiation, Offer};
use crate::target::Target;

/// The largest upstream response head we read before giving up.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

/// How a CONNECT handshake ended, when it did not fail.
pub enum Opened {
    /// The tunnel is open; these bytes came after the proxy's 2xx head.
    Tunnel(Bytes),
    /// The proxy closed the connection after a 407 whose next leg may go on a new one: dial
    /// again (the negotiation holds that leg).
    Again,
}

/// The largest 407 body skipped to keep the connection for the next leg.
const MAX_SKIPPED_BODY: u64 = 1 << 20;

/// Sends `CONNECT target` on `io` (already connected to the proxy `peer`) and reads the answer,
/// authenticating with `auth` through as many 407 legs as its scheme takes.
///
/// # Errors
/// A non-2xx answer is [`ConnectError::HopStatus`] (an authentication that cannot complete is
/// [`ConnectError::ProxyAuth`]); EOF before a full head is [`ConnectError::HopClosed`]; an
/// unparseable or oversized head is `HopProtocol` / `HopHeadTooLarge`; I/O failures are mapped
/// by [`ConnectError::io`].
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    peer: &str,
    target: &Target,
    auth: &mut Negotiation,
    via: &HeaderValue,
) -> Result<Opened, ConnectError> {
    let authority = target.to_string();
    let request = RequestHead {
        line: format!("CONNECT {authority}"),
        host: authority,
        extra: "",
    };
    match exchange(io, peer, &request, auth, via).await? {
        Answer::Again => Ok(Opened::Again),
        Answer::Final { status, rest } if status.is_success() => {
            tracing::debug!(%peer, status = status.as_u16(), leftover = rest.len(), "upstream opened the tunnel");
            Ok(Opened::Tunnel(rest.freeze()))
        }
        Answer::Final { status, .. } => Err(ConnectError::HopStatus {
            peer: peer.to_owned(),
            status,
        }),
    }
}

/// A bodiless request to send to a proxy: `CONNECT a:443`, or `GET http://a/` (the probe).
pub struct RequestHead<'a> {
    /// Method and request target.
    pub line: String,
    pub host: String,
    /// Further header lines, each ending in CRLF.
    pub extra: &'a str,
}

/// How an authenticated exchange ended.
pub enum Answer {
    /// The proxy's final answer (not a 407 that authentication could go on from), and the
    /// bytes read past its head.
    Final { status: StatusCode, rest: BytesMut },
    /// The proxy closed the connection after a 407 whose next leg may go on a new one.
    Again,
}

/// Sends `request` with each of `auth`'s legs until the proxy answers something other than a
/// 407 it is still negotiating.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    peer: &str,
    request: &RequestHead<'_>,
    auth: &mut Negotiation,
    via: &HeaderValue,
) -> Result<Answer, ConnectError> {
    let mut leg = auth.start().await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let mut req = Vec::with_capacity(256);
        req.extend_from_slice(request.line.as_bytes());
        req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        req.extend_from_slice(request.host.as_bytes());
        if let Some(value) = &leg.header {
            req.extend_from_slice(b"\r\nProxy-Authorization: ");
            req.extend_from_slice(value.as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(request.extra.as_bytes());
        req.extend_from_slice(b"Via: ");
        req.extend_from_slice(via.as_bytes());
        req.extend_from_slice(b"\r\n\r\n");
        io.write_all(&req)
            .await
            .map_err(|e| ConnectError::io(peer, e))?;
        io.flush().await.map_err(|e| ConnectError::io(peer, e))?;

        let head = read_head(io, &mut buf, peer).await?;
        if head.status != StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            if head.status.is_success() || head.status.is_redirection() {
                auth.accepted(leg.scheme);
            }
            return Ok(Answer::Final {
                status: head.status,
                rest: buf,
            });
        }
        let next = auth.answer(&head.offer).await?;
        let kept = !head.close && skip_body(io, &mut buf, head.body, peer).await?;
        if kept {
            leg = next;
            continue;
        }
        if next.bound {
            return Err(ConnectError::ProxyAuth {
                peer: peer.to_owned(),
                reason: format!(
                    "closed the connection in the middle of the {} handshake (it must stay open between legs)",
                    next.scheme
                        .map_or_else(|| "authentication".to_owned(), |s| s.to_string())
                ),
            });
        }
        auth.pending = Some(next);
        return Ok(Answer::Again);
    }
}

/// How a response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Length(u64),
    Chunked,
    /// Until the connection closes.
    Close,
}

/// A final (non-1xx) response head, as far as a handshake needs it.
pub struct Head {
    pub status: StatusCode,
    pub offer: Offer,
    pub body: BodyFraming,
    /// The proxy will close the connection after this response.
    pub close: bool,
}

/// Reads the next final response head from `io` into `buf` (1xx heads are skipped), leaving
/// whatever follows it in `buf`.
async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    peer: &str,
) -> Result<Head, ConnectError> {
    loop {
        // Parse what we have first: a previous read may hold a 1xx head *and* the final one.
        match parse_response(buf, peer)? {
            Some((len, head)) if head.status.is_informational() => {
                let _ = buf.split_to(len);
                continue;
            }
            Some((len, head)) => {
                let _ = buf.split_to(len);
                return Ok(head);
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
            .read_buf(buf)
            .await
            .map_err(|e| ConnectError::io(peer, e))?;
        if n == 0 {
            return Err(ConnectError::HopClosed {
                peer: peer.to_owned(),
            });
        }
    }
}

/// Reads past a response body so the connection can carry the next request. `false` when it
/// cannot (delimited by close, or too large to be worth reading).
async fn skip_body<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    framing: BodyFraming,
    peer: &str,
) -> Result<bool, ConnectError> {
    match framing {
        BodyFraming::Close => Ok(false),
        BodyFraming::Length(n) if n > MAX_SKIPPED_BODY => Ok(false),
        BodyFraming::Length(n) => {
            skip_exactly(n as usize, io, buf, peer).await?;
            Ok(true)
        }
        BodyFraming::Chunked => {
            let mut skipped = 0u64;
            loop {
                // A chunk-size line (extensions ignored), its data and CRLF; size 0 ends the
                // chunks, then trailer lines until an empty one.
                let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() > 1024 {
                        return Err(bad_chunk(peer));
                    }
                    fill(io, buf, peer).await?;
                    continue;
                };
                let line = std::str::from_utf8(&buf[..eol]).map_err(|_| bad_chunk(peer))?;
                let size_text = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size_text, 16).map_err(|_| bad_chunk(peer))?;
                let _ = buf.split_to(eol + 2);
                if size == 0 {
                    loop {
                        let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                            if buf.len() > 8192 {
                                return Err(bad_chunk(peer));
                            }
                            fill(io, buf, peer).await?;
                            continue;
                        };
                        let _ = buf.split_to(eol + 2);
                        if eol == 0 {
                            return Ok(true);
                        }
                    }
                }
                skipped += size;
                if skipped > MAX_SKIPPED_BODY {
                    return Ok(false);
                }
                // The chunk's data and its CRLF.
                skip_exactly(size as usize + 2, io, buf, peer).await?;
            }
        }
    }
}

/// Drops `n` bytes: those already in `buf`, then what is read from `io` into it.
async fn skip_exactly<S: AsyncRead + Unpin>(
    mut n: usize,
    io: &mut S,
    buf: &mut BytesMut,
    peer: &str,
) -> Result<(), ConnectError> {
    loop {
        let take = n.min(buf.len());
        let _ = buf.split_to(take);
        n -= take;
        if n == 0 {
            return Ok(());
        }
        fill(io, buf, peer).await?;
    }
}

/// Reads more of a body into `buf`; the peer closing first is an error.
async fn fill<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    peer: &str,
) -> Result<(), ConnectError> {
    buf.reserve(4096);
    match io.read_buf(buf).await {
        Ok(0) => Err(ConnectError::HopClosed {
            peer: peer.to_owned(),
        }),
        Ok(_) => Ok(()),
        Err(e) => Err(ConnectError::io(peer, e)),
    }
}

fn bad_chunk(peer: &str) -> ConnectError {
    ConnectError::HopProtocol {
        peer: peer.to_owned(),
        reason: "invalid chunked body".into(),
    }
}

/// `Some((head length, status))` once `buf` holds a complete head.
pub fn parse_head(buf: &[u8], peer: &str) -> Result<Option<(usize, StatusCode)>, ConnectError> {
    Ok(parse_response(buf, peer)?.map(|(len, head)| (len, head.status)))
}

/// `Some((head length, head))` once `buf` holds a complete head.
fn parse_response(buf: &[u8], peer: &str) -> Result<Option<(usize, Head)>, ConnectError> {
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
            let mut body = BodyFraming::Close;
            let mut close = res.version == Some(0);
            for h in res.headers.iter() {
                let value = String::from_utf8_lossy(h.value);
                if h.name.eq_ignore_ascii_case("content-length") {
                    if let Ok(n) = value.trim().parse()
                        && body != BodyFraming::Chunked
                    {
                        body = BodyFraming::Length(n);
                    }
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    if value.to_ascii_lowercase().trim_end().ends_with("chunked") {
                        body = BodyFraming::Chunked;
                    }
                } else if h.name.eq_ignore_ascii_case("connection")
                    || h.name.eq_ignore_ascii_case("proxy-connection")
                {
                    for token in value.split(',') {
                        match token.trim().to_ascii_lowercase().as_str() {
                            "close" => close = true,
                            "keep-alive" if res.version == Some(0) => close = false,
                            _ => {}
                        }
                    }
                }
            }
            let offer = Offer::parse(
                res.headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("proxy-authenticate"))
                    .map(|h| h.value),
            );
            Ok(Some((
                len,
                Head {
                    status,
                    offer,
                    body,
                    close,
                },
            )))
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
        let hop = crate::upstream::Hop::parse("http://p:1").unwrap();
        let mut auth = hop.negotiation("upstream p:1");
        // A hop known to need nothing sends no credentials and needs no discovery leg.
        match handshake(
            &mut mock,
            "upstream p:1",
            &target,
            &mut auth,
            &HeaderValue::from_static("1.1 viaduct"),
        )
        .await?
        {
            Opened::Tunnel(left) => Ok(left),
            Opened::Again => panic!("no authentication was asked for"),
        }
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

    /// A 407's body is read past (sized, chunked with extensions and trailers) so the next
    /// leg can use the connection; what follows the body stays in the buffer. A body delimited
    /// by close cannot be skipped.
    #[tokio::test]
    async fn skips_407_bodies() {
        let (mut near, mut far) = tokio::io::duplex(1024);
        far.write_all(b"lo\r\n3\r\nabc\r\n0\r\nTrailer: x\r\n\r\nNEXT")
            .await
            .unwrap();
        let mut buf = BytesMut::from(&b"4;ext=1\r\nwxyz\r\n5\r\nhel"[..]);
        assert!(
            skip_body(&mut near, &mut buf, BodyFraming::Chunked, "p")
                .await
                .unwrap()
        );
        assert_eq!(&buf[..], b"NEXT");
        let mut buf = BytesMut::from(&b"ab"[..]);
        far.write_all(b"cNEXT").await.unwrap();
        assert!(
            skip_body(&mut near, &mut buf, BodyFraming::Length(3), "p")
                .await
                .unwrap()
        );
        assert_eq!(&buf[..], b"NEXT");
        assert!(
            !skip_body(&mut near, &mut buf, BodyFraming::Close, "p")
                .await
                .unwrap()
        );
        let mut bad = BytesMut::from(&b"zz\r\n"[..]);
        assert!(
            skip_body(&mut near, &mut bad, BodyFraming::Chunked, "p")
                .await
                .is_err()
        );
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
        // A 407 without any challenge: the status as it came.
        assert_eq!(
            e.to_string(),
            "upstream p:1 answered 407 Proxy Authentication Required (its credentials were rejected or are missing: check user:pass in the upstream URL)"
        );
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
