//! Corporate upstreams: an in-process HTTP proxy that wants NTLM (and offers Basic), checks
//! real NTLMv2 responses against the account's password, and binds the login to the
//! connection, as squid and Windows proxies do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use viaduct::Config;
use viaduct::upstream::proxy_auth::ntlm;

use crate::support::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What the NTLM upstream saw.
#[derive(Default)]
struct Seen {
    /// AUTHENTICATE messages whose NTLMv2 response matched the password.
    verified: AtomicUsize,
    /// Ones that did not (wrong password, or not v2).
    refused: AtomicUsize,
    /// Requests it served after authentication: "METHOD URI body".
    served: Mutex<Vec<String>>,
    /// `Proxy-Authorization` schemes it received, in order (`NTLM`, `Basic`, `-` for none).
    legs: Mutex<Vec<String>>,
}

struct NtlmUpstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

/// A proxy that wants NTLM for `DOMAIN\user:password` (it also offers Basic, which it refuses,
/// so a client that picks Basic fails). With `close_first`, the first 407 of a connection
/// (the one that answers no credentials at all) closes the connection.
async fn ntlm_upstream(account: ntlm::Account, close_first: bool) -> NtlmUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let seen = Arc::clone(&shared);
            let account = account.clone();
            // Per connection: the challenge sent, and whether it is authenticated.
            let state = Arc::new(Mutex::new((None::<[u8; 8]>, false)));
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (seen, account, state) =
                        (Arc::clone(&seen), account.clone(), Arc::clone(&state));
                    async move {
                        Ok::<_, hyper::Error>(
                            handle(req, &seen, &account, &state, close_first).await,
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    NtlmUpstream { addr, seen }
}

type State = Mutex<(Option<[u8; 8]>, bool)>;

fn challenge_407(extra: Option<&str>, close: bool) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(407);
    match extra {
        Some(token) => b = b.header("proxy-authenticate", format!("NTLM {token}")),
        None => {
            b = b
                .header("proxy-authenticate", "Basic realm=\"corp\"")
                .header("proxy-authenticate", "NTLM");
        }
    }
    if close {
        b = b.header("connection", "close");
    }
    b.body(Full::new(Bytes::from_static(b"authentication required\n")))
        .unwrap()
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    seen: &Seen,
    account: &ntlm::Account,
    state: &State,
    close_first: bool,
) -> Response<Full<Bytes>> {
    let auth = req
        .headers()
        .get("proxy-authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.legs.lock().unwrap().push(
        auth.as_deref()
            .and_then(|a| a.split(' ').next())
            .unwrap_or("-")
            .to_owned(),
    );
    let authed = state.lock().unwrap().1;
    if !authed {
        let Some(token) = auth.as_deref().and_then(|a| a.strip_prefix("NTLM ")) else {
            return challenge_407(None, close_first);
        };
        let raw = B64.decode(token).unwrap_or_default();
        match raw.get(8) {
            Some(1) => {
                // NEGOTIATE: answer with a challenge carrying TargetInfo with a timestamp (the
                // client must send a MIC), as Windows servers do.
                let server_challenge: [u8; 8] = rand_bytes();
                state.lock().unwrap().0 = Some(server_challenge);
                let msg = challenge_message(server_challenge);
                return challenge_407(Some(&B64.encode(msg)), false);
            }
            Some(3) => {
                let Some(server_challenge) = state.lock().unwrap().0 else {
                    return challenge_407(None, false);
                };
                let ok = ntlm::parse_authenticate(&raw).is_ok_and(|a| {
                    a.user.eq_ignore_ascii_case(&account.user)
                        && a.domain.eq_ignore_ascii_case(&account.domain)
                        && a.nt_response.len() > 24
                        && a.mic != [0; 16]
                        && ntlm::verify_v2(account, &server_challenge, a.nt_response)
                });
                if !ok {
                    seen.refused.fetch_add(1, Ordering::SeqCst);
                    return challenge_407(None, false);
                }
                seen.verified.fetch_add(1, Ordering::SeqCst);
                state.lock().unwrap().1 = true;
            }
            _ => return challenge_407(None, false),
        }
    }
    // Authenticated (now or earlier on this connection): serve.
    if req.method() == hyper::Method::CONNECT {
        let target = req.uri().authority().unwrap().to_string();
        tokio::spawn(async move {
            let up = hyper::upgrade::on(req).await.unwrap();
            let mut up = TokioIo::new(up);
            let mut to = TcpStream::connect(target).await.unwrap();
            let _ = tokio::io::copy_bidirectional(&mut up, &mut to).await;
        });
        return Response::new(Full::new(Bytes::new()));
    }
    let line = format!("{} {}", req.method(), req.uri());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let text = format!("{line} {}", String::from_utf8_lossy(&body));
    seen.served.lock().unwrap().push(text.clone());
    Response::new(Full::new(Bytes::from(text)))
}

fn rand_bytes() -> [u8; 8] {
    let mut b = [0; 8];
    for x in &mut b {
        *x = fastrand::u8(..);
    }
    b
}

/// A CHALLENGE with TargetInfo (NetBIOS domain and computer, a timestamp).
fn challenge_message(server_challenge: [u8; 8]) -> Vec<u8> {
    let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    let mut info = Vec::new();
    for (id, value) in [
        (2u16, utf16("CORP")),
        (1, utf16("PROXY")),
        (7, 1234u64.to_le_bytes().to_vec()),
    ] {
        info.extend_from_slice(&id.to_le_bytes());
        info.extend_from_slice(&(value.len() as u16).to_le_bytes());
        info.extend_from_slice(&value);
    }
    info.extend_from_slice(&[0; 4]);
    let flags: u32 = 0x0000_0001 | 0x0000_0200 | 0x0008_0000 | 0x0080_0000 | 0x2000_0000;
    let mut m = Vec::new();
    m.extend_from_slice(b"NTLMSSP\0");
    m.extend_from_slice(&2u32.to_le_bytes());
    m.extend_from_slice(&[0, 0, 0, 0, 48, 0, 0, 0]); // empty target name
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&server_challenge);
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&48u32.to_le_bytes());
    m.extend_from_slice(&info);
    m
}

/// A viaduct whose upstream is `up`, logging in as CORP\bob with `password`.
async fn as_bob(up: &NtlmUpstream, password: &str) -> ProxyHandle {
    start_proxy(Config {
        router: via(&format!("http://CORP%5Cbob:{password}@{}", up.addr)),
        ..config()
    })
    .await
}

fn bob() -> ntlm::Account {
    ntlm::Account::new("CORP\\bob", "s3cret")
}

/// CONNECT through a proxy that wants NTLM: viaduct learns the scheme from the 407 (NTLM
/// over the Basic also offered), authenticates with NTLMv2 (MIC included), and the tunnel
/// carries bytes; the next tunnel starts with NTLM at once (no discovery leg).
#[tokio::test]
async fn connect_through_an_ntlm_proxy() {
    let up = ntlm_upstream(bob(), false).await;
    let echo = echo_server().await;
    let p = as_bob(&up, "s3cret").await;
    for round in 0..2 {
        let (mut s, head) = connect(p.addr, &echo.to_string()).await;
        assert_eq!(head.status, 200, "round {round}");
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
    assert_eq!(up.seen.verified.load(Ordering::SeqCst), 2);
    assert_eq!(up.seen.refused.load(Ordering::SeqCst), 0);
    // First tunnel: ask, negotiate, authenticate; second: negotiate, authenticate. Basic
    // (offered too) never went out.
    assert_eq!(
        *up.seen.legs.lock().unwrap(),
        ["-", "NTLM", "NTLM", "NTLM", "NTLM"]
    );
}

/// A wrong password: 502 naming the account and the scheme, never the password; the
/// upstream saw a real (refused) NTLMv2 answer.
#[tokio::test]
async fn wrong_ntlm_password_is_a_clear_502() {
    let up = ntlm_upstream(bob(), false).await;
    let p = as_bob(&up, "wrong-pw").await;
    for raw in [
        "CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n",
        "GET http://127.0.0.1:9/x HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n",
    ] {
        let (head, body) = send(p.addr, raw).await;
        assert_eq!(head.status, 502, "{raw}");
        let ps = head.get("proxy-status").unwrap();
        assert!(
            ps.starts_with("viaduct; error=http_request_denied; received-status=407; details="),
            "{ps}"
        );
        assert!(
            ps.contains(&format!(
                "http proxy {} rejected NTLM credentials for CORP\\\\bob",
                up.addr
            )),
            "{ps}"
        );
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("wrong-pw") && !ps.contains("wrong-pw"),
            "{text}"
        );
        assert!(head.get("proxy-authenticate").is_none());
    }
    assert_eq!(up.seen.refused.load(Ordering::SeqCst), 2);
    assert_eq!(up.seen.verified.load(Ordering::SeqCst), 0);
}

/// Plain requests: bodies (Content-Length and chunked) arrive once and intact; the
/// authenticated connection carries the next requests without a new handshake.
#[tokio::test]
async fn plain_requests_ride_one_authenticated_connection() {
    let up = ntlm_upstream(bob(), false).await;
    let p = as_bob(&up, "s3cret").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let requests = [
        "POST http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 11\r\n\r\nhello world".to_owned(),
        "PUT http://origin.test/b HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nchunk\r\n6\r\ned-end\r\n0\r\n\r\n".to_owned(),
        "GET http://origin.test/c HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_owned(),
    ];
    let expected = [
        "POST http://origin.test/a hello world",
        "PUT http://origin.test/b chunked-end",
        "GET http://origin.test/c ",
    ];
    for (raw, want) in requests.iter().zip(expected) {
        s.write_all(raw.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        let body = read_body(&mut s, &head).await;
        assert_eq!(head.status, 200, "{raw}");
        assert_eq!(String::from_utf8_lossy(&body), want);
    }
    // Each body reached the upstream exactly once, and one handshake served all three.
    assert_eq!(*up.seen.served.lock().unwrap(), expected);
    assert_eq!(up.seen.verified.load(Ordering::SeqCst), 1);
}

/// A proxy that closes the connection on its first 407: the next leg goes on a new one.
#[tokio::test]
async fn a_407_with_connection_close_gets_a_new_connection() {
    let up = ntlm_upstream(bob(), true).await;
    let echo = echo_server().await;
    let p = as_bob(&up, "s3cret").await;
    let (mut s, head) = connect(p.addr, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    s.write_all(b"x").await.unwrap();
    let mut b = [0; 1];
    s.read_exact(&mut b).await.unwrap();
    let (head, body) = send(
        p.addr,
        "POST http://origin.test/p HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 4\r\n\r\nbody",
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "POST http://origin.test/p body"
    );
    assert_eq!(up.seen.verified.load(Ordering::SeqCst), 2);
}

/// A pinned scheme is never downgraded: `ntlm` against a proxy that offers only Basic is a
/// 502 that says so (no password goes out in Basic), and `negotiate` without a Kerberos ticket
/// is a 502 naming the missing ticket, not an NTLM login.
#[tokio::test]
async fn a_pinned_scheme_is_never_downgraded() {
    let route = |url: String, auth: &str| {
        viaduct::routing::Router::single(
            viaduct::upstream::Route::parse(&url)
                .unwrap()
                .with_auth(auth.parse().unwrap(), None),
        )
    };
    let (basic_only, mut with_basic) = basic_upstream(b"HTTP/1.1 200 OK\r\n\r\n").await;
    let p = start_proxy(Config {
        router: route(format!("http://CORP%5Cbob:s3cret@{basic_only}"), "ntlm"),
        ..config()
    })
    .await;
    let (head, _) = send(p.addr, "CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(head.status, 502);
    let ps = head.get("proxy-status").unwrap();
    assert!(
        ps.contains("offers Basic, not NTLM (the upstream's auth setting allows no other)"),
        "{ps}"
    );
    assert!(with_basic.try_recv().is_err(), "Basic credentials went out");

    let up = ntlm_upstream(bob(), false).await;
    let p = start_proxy(Config {
        router: route(format!("http://CORP%5Cbob:s3cret@{}", up.addr), "negotiate"),
        ..config()
    })
    .await;
    let (head, _) = send(p.addr, "CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(head.status, 502);
    let ps = head.get("proxy-status").unwrap();
    // Without a ticket (CI), the missing ticket is named; with one (a developer's machine), the
    // proxy's list is. Either way nothing of NTLM goes out.
    assert!(
        ps.contains("no Kerberos ticket for HTTP@127.0.0.1 (run kinit)")
            || ps.contains("offers NTLM, Basic, not Negotiate"),
        "{ps}"
    );
    assert!(!up.seen.legs.lock().unwrap().iter().any(|l| l == "NTLM"));
    assert_eq!(up.seen.verified.load(Ordering::SeqCst), 0);
}

/// `viaduct probe` prints each authentication leg (scheme offered, scheme used, result), for
/// plain requests (its own GET through the proxy) and for tunnels, and names a refusal.
#[tokio::test]
async fn probe_shows_each_auth_leg() {
    let up = ntlm_upstream(bob(), false).await;
    let probe = |url: &str, upstream: String| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_viaduct"));
        cmd.args(["probe", url, "--upstream", &upstream]);
        async move { cmd.output().await.unwrap() }
    };
    let out = probe(
        "http://127.0.0.1:9/x",
        format!("http://CORP%5Cbob:s3cret@{}", up.addr),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let legs: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(": auth "))
        .map(|l| l.rsplit("  ").next().unwrap_or("").trim())
        .collect();
    assert_eq!(
        legs,
        [
            "asks without credentials (to learn the scheme)",
            "407 offers NTLM, Basic",
            "sends NTLM negotiate (type 1)",
            "407 offers NTLM",
            "sends NTLMv2 authenticate (type 3) as CORP\\bob",
            "accepted (NTLM)",
        ],
        "{text}"
    );
    assert!(
        text.contains("GET http://127.0.0.1:9/x") && text.contains("200 OK"),
        "{text}"
    );

    // A tunnel with the wrong password: the legs, then the refusal in Proxy-Status words.
    let out = probe(
        "https://127.0.0.1:9/",
        format!("http://CORP%5Cbob:wrong@{}", up.addr),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("sends NTLMv2 authenticate (type 3) as CORP\\bob"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "FAILED  502 error=http_request_denied; details=\"http proxy {} rejected NTLM credentials for CORP\\bob\"",
            up.addr
        )),
        "{text}"
    );
    assert!(!text.contains("wrong"), "{text}");
}
