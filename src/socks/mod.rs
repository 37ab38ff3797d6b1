//! The SOCKS listener protocol: SOCKS5 (RFC 1928, with RFC 1929 username/password) and
//! SOCKS4/4a CONNECT, turned into the same session calls as HTTP CONNECT: the same users,
//! rules, pools, limits, access line and counters. Failures are answered with the reply code
//! the one classifier gives (`Verdict::socks_reply`).
//!
//! UDP ASSOCIATE relays datagrams on direct routes ([`udp`]); through upstreams, and for
//! BIND, the answer is "command not supported" (0x07).

pub mod udp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::failure::{Failure, verdict};
use crate::relay::ClientEnd;
use crate::server::Admitted;
use crate::session::{Client, Core, Ends, Finished, SessionError, TunnelKind};
use crate::target::Target;

/// The SOCKS listener protocol and its settings.
pub struct Socks {
    core: Arc<Core>,
    /// The whole handshake (greeting, authentication, request) must arrive within this.
    handshake_timeout: Duration,
    /// A UDP association with no datagram for this long ends.
    udp_idle_timeout: Duration,
}

/// Why a handshake ended without a tunnel (answered already, or not answerable).
#[derive(Debug)]
enum Ended {
    /// The client went away or sent something that is not SOCKS.
    Client(std::io::Error),
    /// Answered with a failure reply.
    Answered,
}

impl Ended {
    fn log(self) {
        if let Self::Client(e) = self {
            tracing::debug!(error = %e, "SOCKS handshake ended");
        }
    }
}

impl From<std::io::Error> for Ended {
    fn from(e: std::io::Error) -> Self {
        Self::Client(e)
    }
}

impl Socks {
    /// `limits`: the handshake's deadline (`header_read_timeout`) and `udp_idle_timeout`.
    pub fn new(core: Arc<Core>, limits: &crate::config::Limits) -> Self {
        Self {
            core,
            handshake_timeout: limits.header_read_timeout,
            udp_idle_timeout: limits.udp_idle_timeout,
        }
    }

    /// Serves one connection whose first byte is 0x05 or 0x04 (not yet read).
    pub async fn serve(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
    ) {
        let started = Instant::now();
        // Only the client's part is timed here; reaching the target has its own bound
        // (connect_timeout) and always ends in a reply.
        let handshake = async {
            match stream.read_u8().await? {
                5 => self.read5(&mut stream, peer).await,
                4 => self.read4(&mut stream, peer).await,
                v => Err(Ended::Client(std::io::Error::other(format!(
                    "not SOCKS (version byte {v})"
                )))),
            }
        };
        let asked = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(asked)) => asked,
            Ok(Err(e)) => return e.log(),
            Err(_) => {
                tracing::debug!("no SOCKS handshake in time");
                return;
            }
        };
        let opened = match self.act(&mut stream, asked, started).await {
            Ok(opened) => opened,
            Err(e) => return e.log(),
        };
        let (client, target, reached, protocol) = match opened {
            Next::Tunnel(t) => t,
            Next::Udp(client, socket, expected) => {
                let bound = socket
                    .local_addr()
                    .map_or_else(|_| "-".into(), |a| a.to_string());
                self.core.ledger().request(&Finished {
                    client: &client,
                    protocol: "socks5",
                    method: "UDP ASSOCIATE",
                    target: &bound,
                    status: 200,
                    error: None,
                    started,
                });
                let stop = self.core.stop_for(&client);
                let _admitted = admitted;
                udp::relay(
                    &self.core,
                    stream,
                    socket,
                    &client,
                    expected,
                    self.udp_idle_timeout,
                    &stop,
                )
                .await;
                return;
            }
        };
        tracing::debug!(%target, elapsed_ms = started.elapsed().as_millis() as u64, "SOCKS tunnel open");
        self.core.spawn_tunnel(
            protocol,
            200,
            target.to_string(),
            &client,
            admitted,
            async move {
                Ok(Ends {
                    client: ClientEnd::Tcp(stream),
                    early: Bytes::new(),
                    target: reached.value,
                    member: reached.member,
                })
            },
        );
    }

    /// RFC 1928: greeting, method choice, RFC 1929 when `[auth]` is on, then the request.
    async fn read5(&self, s: &mut TcpStream, peer: SocketAddr) -> Result<Asked, Ended> {
        let n = s.read_u8().await?;
        let mut methods = vec![0u8; usize::from(n)];
        s.read_exact(&mut methods).await?;
        let auth = self.core.auth().enabled();
        let wanted = if auth { 0x02 } else { 0x00 };
        if !methods.contains(&wanted) {
            // 0xFF: no acceptable method (with [auth], "no authentication" is not one).
            s.write_all(&[5, 0xff]).await?;
            return Err(Ended::Answered);
        }
        s.write_all(&[5, wanted]).await?;
        let mut credentials = None;
        if auth {
            // RFC 1929: VER=1, ULEN, UNAME, PLEN, PASSWD.
            if s.read_u8().await? != 1 {
                return Err(Ended::Client(std::io::Error::other(
                    "bad username/password subnegotiation version",
                )));
            }
            let user = read_string(s).await?;
            let pass = read_string(s).await?;
            credentials = Some((user, pass));
        }
        let admitted = self
            .core
            .authenticate(
                peer,
                credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
            )
            .await;
        if auth {
            s.write_all(&[1, u8::from(admitted.is_err())]).await?;
        }
        let client = match admitted {
            Ok(c) => c,
            Err(e) => {
                self.log_failure(&Client::new(peer, None), "socks5", "-", &e, Instant::now());
                return Err(Ended::Answered);
            }
        };
        // Request: VER CMD RSV ATYP DST.ADDR DST.PORT.
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await?;
        let [ver, cmd, _, atyp] = head;
        if ver != 5 {
            return Err(Ended::Client(std::io::Error::other("bad request version")));
        }
        let host = match atyp {
            1 => {
                let mut a = [0u8; 4];
                s.read_exact(&mut a).await?;
                AskedHost::Ip(IpAddr::from(a))
            }
            4 => {
                let mut a = [0u8; 16];
                s.read_exact(&mut a).await?;
                AskedHost::Ip(IpAddr::from(a))
            }
            3 => {
                let n = s.read_u8().await?;
                let mut name = vec![0u8; usize::from(n)];
                s.read_exact(&mut name).await?;
                AskedHost::Name(String::from_utf8(name).unwrap_or_default())
            }
            _ => {
                reply5(s, 0x08, None).await?;
                return Err(Ended::Answered);
            }
        };
        let port = s.read_u16().await?;
        Ok(Asked {
            version: Version::Five,
            client,
            cmd,
            host,
            port,
        })
    }

    /// SOCKS4 and 4a: VN=4 CD DSTPORT DSTIP USERID\0 [DOMAIN\0]. With `[auth]` SOCKS4 is
    /// refused: it carries no password to check.
    async fn read4(&self, s: &mut TcpStream, peer: SocketAddr) -> Result<Asked, Ended> {
        let cmd = s.read_u8().await?;
        let port = s.read_u16().await?;
        let mut ip = [0u8; 4];
        s.read_exact(&mut ip).await?;
        let _user_id = read_until_nul(s).await?;
        // 0.0.0.x (x != 0): SOCKS4a, the name follows.
        let host = if ip[..3] == [0, 0, 0] && ip[3] != 0 {
            AskedHost::Name(read_until_nul(s).await?)
        } else {
            AskedHost::Ip(IpAddr::V4(Ipv4Addr::from(ip)))
        };
        if self.core.auth().enabled() {
            reply(s, Version::Four, Err(0x02)).await?;
            tracing::debug!("SOCKS4 refused: [auth] is on and SOCKS4 has no password");
            return Err(Ended::Answered);
        }
        let client = match self.core.authenticate(peer, None).await {
            Ok(c) => c,
            Err(e) => {
                reply(s, Version::Four, Err(0x02)).await?;
                self.log_failure(&Client::new(peer, None), "socks4", "-", &e, Instant::now());
                return Err(Ended::Answered);
            }
        };
        Ok(Asked {
            version: Version::Four,
            client,
            cmd,
            host,
            port,
        })
    }

    /// Carries out what the client asked: CONNECT, or (SOCKS5) UDP ASSOCIATE; anything else
    /// is "command not supported".
    async fn act(&self, s: &mut TcpStream, asked: Asked, started: Instant) -> Result<Next, Ended> {
        let Asked {
            version,
            client,
            cmd,
            host,
            port,
        } = asked;
        let protocol = version.protocol();
        match (version, cmd) {
            (_, 1) => {}
            (Version::Five, 3) => return self.associate(s, client, &host, port).await,
            // BIND (2) is not built.
            _ => {
                reply(s, version, Err(0x07)).await?;
                return Err(Ended::Answered);
            }
        }
        let target = match host.target(port) {
            Ok(t) => t,
            Err(e) => {
                reply(s, version, Err(verdict(Failure::BadRequest).socks_reply)).await?;
                tracing::debug!(error = %e, "bad SOCKS target");
                return Err(Ended::Answered);
            }
        };
        match self.core.open_tunnel(&target, &client).await {
            Ok(reached) => {
                reply(s, version, Ok(bound(&reached.value))).await?;
                Ok(Next::Tunnel((client, target, reached, version.tunnel())))
            }
            Err(e) => {
                reply(s, version, Err(verdict(e.failure()).socks_reply)).await?;
                self.log_failure(&client, protocol, &target.to_string(), &e, started);
                Err(Ended::Answered)
            }
        }
    }

    /// UDP ASSOCIATE: a UDP socket on the address the client reached us at, for direct routes.
    async fn associate(
        &self,
        s: &mut TcpStream,
        client: Client,
        host: &AskedHost,
        port: u16,
    ) -> Result<Next, Ended> {
        if !self.core.udp_possible() {
            // Upstream proxies carry TCP; datagrams would have to leave from here.
            reply5(s, 0x07, None).await?;
            tracing::debug!("UDP ASSOCIATE refused: the default route is not direct");
            return Err(Ended::Answered);
        }
        let local = s.local_addr()?;
        let socket = tokio::net::UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await?;
        reply5(s, 0x00, socket.local_addr().ok()).await?;
        // Where the client said it would send from; a name (or 0.0.0.0) means "not said".
        let expected = match host {
            AskedHost::Ip(ip) => SocketAddr::new(*ip, port),
            AskedHost::Name(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        Ok(Next::Udp(client, socket, expected))
    }

    fn log_failure(
        &self,
        client: &Client,
        protocol: &'static str,
        target: &str,
        e: &SessionError,
        started: Instant,
    ) {
        let v = verdict(e.failure());
        let details = e.to_string();
        tracing::debug!(error = %details, "SOCKS request failed");
        self.core.ledger().request(&Finished {
            client,
            protocol,
            method: "CONNECT",
            target: &target,
            status: v.status.as_u16(),
            error: Some((v.error, details.as_str())),
            started,
        });
    }
}

/// The SOCKS version a client spoke: it decides how replies look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Four,
    Five,
}

impl Version {
    fn protocol(self) -> &'static str {
        self.tunnel().protocol()
    }

    fn tunnel(self) -> TunnelKind {
        match self {
            Self::Four => TunnelKind::Socks4,
            Self::Five => TunnelKind::Socks5,
        }
    }
}

/// What a client asked for, once authenticated.
struct Asked {
    version: Version,
    client: Client,
    cmd: u8,
    host: AskedHost,
    port: u16,
}

/// The address a SOCKS request carries, as read from its bytes.
enum AskedHost {
    Ip(IpAddr),
    /// A name (SOCKS5 ATYP 3, SOCKS4a), still to be validated.
    Name(String),
}

impl AskedHost {
    fn target(&self, port: u16) -> Result<Target, crate::target::TargetError> {
        match self {
            Self::Ip(ip) => Target::from_ip(*ip, port),
            Self::Name(name) => Target::new(name, port),
        }
    }
}

/// A reply in the client's version: `Ok(bound address)` granted, `Err(SOCKS5 reply code)`
/// refused (SOCKS4 has one code for every refusal, 91).
async fn reply(
    s: &mut TcpStream,
    version: Version,
    outcome: Result<Option<SocketAddr>, u8>,
) -> std::io::Result<()> {
    match (version, outcome) {
        (Version::Five, Ok(bound)) => reply5(s, 0x00, bound).await,
        (Version::Five, Err(code)) => reply5(s, code, None).await,
        (Version::Four, Ok(_)) => s.write_all(&[0, 90, 0, 0, 0, 0, 0, 0]).await,
        (Version::Four, Err(_)) => s.write_all(&[0, 91, 0, 0, 0, 0, 0, 0]).await,
    }
}

/// What a handshake leads to: a tunnel, or a UDP association (the socket and the address the
/// client said it would send from).
enum Next {
    Tunnel(Opened),
    Udp(Client, tokio::net::UdpSocket, SocketAddr),
}

/// A handshake that opened a tunnel: who, where, the far end, and which SOCKS it was.
type Opened = (
    Client,
    Target,
    crate::session::Reached<crate::stream::BoxIo>,
    TunnelKind,
);

/// The outgoing connection's local address, when it is a plain TCP socket (direct routes).
fn bound(io: &crate::stream::BoxIo) -> Option<SocketAddr> {
    crate::stream::local_addr(io)
}

/// A SOCKS5 reply: VER REP RSV ATYP BND.ADDR BND.PORT.
async fn reply5(s: &mut TcpStream, code: u8, bound: Option<SocketAddr>) -> std::io::Result<()> {
    let addr = bound.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut out = vec![5, code, 0];
    match addr.ip() {
        IpAddr::V4(v4) => {
            out.push(1);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(4);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
    s.write_all(&out).await
}

/// A length-prefixed string (RFC 1929).
async fn read_string(s: &mut TcpStream) -> std::io::Result<String> {
    let n = s.read_u8().await?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await?;
    String::from_utf8(buf).map_err(|_| std::io::Error::other("not UTF-8"))
}

/// A NUL-terminated string (SOCKS4), at most 255 bytes.
async fn read_until_nul(s: &mut TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    loop {
        let b = s.read_u8().await?;
        if b == 0 {
            break;
        }
        if out.len() == 255 {
            return Err(std::io::Error::other("SOCKS4 field too long"));
        }
        out.push(b);
    }
    String::from_utf8(out).map_err(|_| std::io::Error::other("not UTF-8"))
}
