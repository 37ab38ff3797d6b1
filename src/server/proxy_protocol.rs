//! The PROXY protocol (HAProxy's, v1 text and v2 binary): a load balancer in front of
//! viaduct states the client's address before the first byte of HTTP or SOCKS. With it on, that
//! address is the client's for everything (allowed clients, per-IP limits and budgets, sticky
//! keys, logs), and only the balancers in `from` may send it; a connection from anyone else,
//! or without a header, is closed unanswered.
//!
//! Parsing is the `ppp` crate's; this module only reads exactly the header's bytes (the rest
//! belongs to the protocol behind it).

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// PROXY protocol settings of the listeners.
#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    /// Who may send a header (the load balancers). Others are refused.
    pub from: Vec<IpNet>,
    /// The header must arrive within this.
    pub timeout: Duration,
}

impl ProxyProtocol {
    /// Whether `ip` is one of the balancers.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = crate::target::normalize(ip);
        self.from.iter().any(|n| n.contains(&ip))
    }
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads one PROXY header from `stream`: the client's address, or `None` when the balancer
/// says the connection is its own (v2 LOCAL, v1 UNKNOWN: its health checks).
///
/// # Errors
/// No header, a malformed one, or a closed connection, in words.
pub async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, String> {
    let io = |e: std::io::Error| format!("reading the PROXY header: {e}");
    let mut buf = vec![0u8; 16];
    // 15 bytes is the shortest header there is ("PROXY UNKNOWN\r\n").
    stream.read_exact(&mut buf[..15]).await.map_err(io)?;
    if buf.starts_with(b"PROXY ") {
        buf.truncate(15);
        // v1: up to 107 bytes, ending in CRLF.
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= 107 {
                return Err("a PROXY v1 header longer than 107 bytes".into());
            }
            buf.push(stream.read_u8().await.map_err(io)?);
        }
    } else if buf[..12] == V2_SIGNATURE[..] {
        stream.read_exact(&mut buf[15..16]).await.map_err(io)?;
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        buf.resize(16 + len, 0);
        stream.read_exact(&mut buf[16..]).await.map_err(io)?;
    } else {
        return Err("no PROXY protocol header (this listener expects one)".into());
    }
    match ppp::HeaderResult::parse(&buf) {
        ppp::HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        }),
        ppp::HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (ppp::v2::Command::Local, _) => None,
            (_, ppp::v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (_, ppp::v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            _ => None,
        }),
        ppp::HeaderResult::V1(Err(e)) => Err(format!("a malformed PROXY v1 header: {e}")),
        ppp::HeaderResult::V2(Err(e)) => Err(format!("a malformed PROXY v2 header: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn parse(bytes: Vec<u8>) -> (Result<Option<SocketAddr>, String>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&bytes).await.unwrap();
            c.write_all(b"GET /").await.unwrap();
            c.shutdown().await.unwrap();
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let header = read_header(&mut s).await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        client.await.unwrap();
        (header, rest)
    }

    #[tokio::test]
    async fn v1_v2_and_refusals() {
        let (h, rest) = parse(b"PROXY TCP4 192.0.2.10 127.0.0.1 5000 8083\r\n".to_vec()).await;
        assert_eq!(h.unwrap(), Some("192.0.2.10:5000".parse().unwrap()));
        assert_eq!(rest, b"GET /", "nothing past the header is consumed");
        let (h, _) = parse(b"PROXY TCP6 2001:db8::1 ::1 6000 8083\r\n".to_vec()).await;
        assert_eq!(h.unwrap(), Some("[2001:db8::1]:6000".parse().unwrap()));
        let (h, _) = parse(b"PROXY UNKNOWN\r\n".to_vec()).await;
        assert_eq!(h.unwrap(), None);

        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "198.51.100.7:4242".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:8083".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let (h, rest) = parse(v2).await;
        assert_eq!(h.unwrap(), Some("198.51.100.7:4242".parse().unwrap()));
        assert_eq!(rest, b"GET /");

        let (h, _) = parse(b"GET http://x/ HTTP/1.1\r\n\r\n".to_vec()).await;
        assert!(h.unwrap_err().contains("no PROXY protocol header"));
        let (h, _) = parse(b"PROXY TCP4 nonsense here and there\r\n".to_vec()).await;
        assert!(h.unwrap_err().contains("malformed"));
    }
}
