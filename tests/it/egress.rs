//! Egress over real sockets: source addresses from a prefix (every 127.0.0.0/8 address is
//! local on Linux, so the origin's view of the peer shows which one viaduct bound), Happy
//! Eyeballs against a blackholed address, and the DNS cache against a local DNS server.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use viaduct::routing::{Action, Router};
use viaduct::upstream::resolve::{Resolve, Resolving};
use viaduct::upstream::{Bind, BindMode, DnsResolver, Route};

use crate::support::*;

/// A TCP server that writes the peer's IP address and closes.
async fn who_am_i() -> SocketAddr {
    serve_tcp(|mut s| async move {
        let peer = s.peer_addr().unwrap().ip().to_string();
        let _ = s.write_all(peer.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await
}

fn bound(net: &str, mode: BindMode) -> Config {
    let net = viaduct::upstream::bind::parse(net).unwrap();
    let bind = Arc::new(Bind::new(net, mode, Duration::from_secs(600)));
    Config {
        router: Router {
            pac: None,
            bypass: None,
            rules: Vec::new(),
            default: Action::Direct(Route::direct().with_bind(bind)),
        },
        ..config()
    }
}

use viaduct::Config;

/// The address the origin saw for one tunnel opened as `creds` (a claimed name picks the
/// session without `[auth]`).
async fn seen_from(proxy: SocketAddr, origin: SocketAddr, creds: Option<&str>) -> IpAddr {
    let (mut s, head) = connect_as(proxy, &origin.to_string(), creds).await;
    assert_eq!(head.status, 200, "{head:?}");
    let mut ip = String::new();
    s.read_to_string(&mut ip).await.unwrap();
    ip.parse().unwrap()
}

/// `bind = "127.0.0.0/24"`: a session keeps its address, sessions spread over the prefix, and a
/// client without a session suffix keeps one address too (sticky mode).
#[tokio::test]
async fn sessions_keep_their_source_address_and_spread_over_the_prefix() {
    let origin = who_am_i().await;
    let proxy = start_proxy(bound("127.0.0.0/24", BindMode::Sticky)).await;
    let net: ipnet::IpNet = "127.0.0.0/24".parse().unwrap();
    let first = seen_from(proxy.addr, origin, Some("u-session-7:x")).await;
    assert!(net.contains(&first), "{first}");
    for _ in 0..3 {
        assert_eq!(
            seen_from(proxy.addr, origin, Some("u-session-7:x")).await,
            first
        );
    }
    let mut spread = HashSet::new();
    for i in 0..12 {
        let ip = seen_from(proxy.addr, origin, Some(&format!("u-session-{i}:x"))).await;
        assert!(net.contains(&ip), "{ip}");
        spread.insert(ip);
    }
    assert!(
        spread.len() >= 6,
        "12 sessions over 254 addresses: {spread:?}"
    );
    let client = seen_from(proxy.addr, origin, None).await;
    assert_eq!(seen_from(proxy.addr, origin, None).await, client);
}

/// `bind_mode = "random"`: without a session suffix every connection gets a fresh address; a
/// named session stays pinned.
#[tokio::test]
async fn random_mode_draws_per_connection_unless_a_session_is_named() {
    let origin = who_am_i().await;
    let proxy = start_proxy(bound("127.0.0.0/24", BindMode::Random)).await;
    let mut seen = HashSet::new();
    for _ in 0..8 {
        seen.insert(seen_from(proxy.addr, origin, None).await);
    }
    assert!(seen.len() >= 4, "{seen:?}");
    let pinned = seen_from(proxy.addr, origin, Some("u-session-a:x")).await;
    for _ in 0..3 {
        assert_eq!(
            seen_from(proxy.addr, origin, Some("u-session-a:x")).await,
            pinned
        );
    }
}

/// Plain HTTP requests leave from the session's address too, and a kept-alive connection of
/// one session is never reused for another.
#[tokio::test]
async fn plain_requests_leave_from_the_session_address() {
    let origin = serve_tcp(|mut s| async move {
        // A minimal keep-alive HTTP/1.1 server answering the peer address to every request.
        let peer = s.peer_addr().unwrap().ip().to_string();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 1024];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{peer}",
                    peer.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = start_proxy(bound("127.0.0.0/24", BindMode::Sticky)).await;
    let get = |session: &str| {
        let raw = format!(
            "GET http://{origin}/ HTTP/1.1\r\nHost: {origin}\r\n{}\r\n",
            proxy_auth(&format!("u-session-{session}:x"))
        );
        async move {
            let (head, body) = send(proxy.addr, &raw).await;
            assert_eq!(head.status, 200, "{head:?}");
            String::from_utf8(body).unwrap()
        }
    };
    let a = get("a").await;
    let mut others = HashSet::new();
    for i in 0..6 {
        assert_eq!(get("a").await, a, "session a keeps its address");
        others.insert(get(&i.to_string()).await);
    }
    assert!(others.len() >= 3, "{others:?}");
}

/// A single bind address: every connection leaves from it.
#[tokio::test]
async fn a_single_bind_address_is_used_for_every_connection() {
    let origin = who_am_i().await;
    let proxy = start_proxy(bound("127.0.0.2", BindMode::Sticky)).await;
    for creds in [None, Some("u-session-1:x")] {
        let ip = seen_from(proxy.addr, origin, creds).await;
        assert_eq!(ip, "127.0.0.2".parse::<IpAddr>().unwrap());
    }
}

/// A target of the other family than the bind: 502 destination_ip_unroutable, no fallback to
/// the host's default address.
#[tokio::test]
async fn a_target_of_the_other_family_is_unroutable() {
    let proxy = start_proxy(bound("127.0.0.0/24", BindMode::Sticky)).await;
    let (head, body) = connect_error(proxy.addr, "[::1]:9").await;
    assert_error(&head, &body, 502, "destination_ip_unroutable").await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("[::1]:9 has no IPv4 address") && text.contains("(bind)"),
        "{text}"
    );
}

/// Resolves each name to a fixed list of socket addresses (all loopback), in order, ports
/// included (whatever port was asked for), so that one name can lead to a dead port and a
/// live one.
#[derive(Default)]
struct ListResolver(HashMap<String, Vec<SocketAddr>>);

impl Resolve for ListResolver {
    fn resolve(&self, host: &str, _port: u16) -> Resolving {
        let found: Option<Vec<SocketAddr>> = self.0.get(host).cloned();
        Box::pin(async move {
            found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "nxdomain"))
        })
    }
}

/// A loopback address whose SYNs go unanswered: a listener with a full accept queue that never
/// accepts (Linux drops further SYNs), so a connect to it hangs like one to a dead host.
/// Returns the address and what keeps it full.
async fn blackhole() -> (SocketAddr, Vec<TcpStream>, std::net::TcpListener) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 3], 0)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let listener: std::net::TcpListener = sock.into();
    let addr = listener.local_addr().unwrap();
    let mut fill = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fill.push(s),
            Ok(Err(e)) => panic!("filling the blackhole: {e}"),
            Err(_) => break,
        }
        assert!(fill.len() < 64, "the accept queue never filled");
    }
    (addr, fill, listener)
}

/// Opens a tunnel to `two.test`, whose first address hangs (blackholed) and whose second is an
/// echo server, through a proxy routed by `router` with an 8 s connect timeout; asserts that
/// it connected in well under that (a one-by-one dial would wait the timeout out on the dead
/// address) and carries bytes. Returns the echo server's address.
async fn tunnel_past_a_dead_address(router: Router) -> SocketAddr {
    let (dead, _fill, _listener) = blackhole().await;
    let live = echo_server().await;
    let resolver = ListResolver(HashMap::from([("two.test".to_owned(), vec![dead, live])]));
    let mut cfg = config();
    cfg.settings.connect_timeout = Duration::from_secs(8);
    cfg.router = router;
    let proxy = start_proxy_with(cfg, Arc::new(resolver)).await;
    let started = Instant::now();
    let (mut s, head) = connect(proxy.addr, &format!("two.test:{}", live.port())).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}: the dead address was waited for",
        started.elapsed()
    );
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    live
}

/// Happy Eyeballs, direct: a dead first address costs one attempt delay, not the timeout.
#[tokio::test]
async fn a_dead_first_address_costs_the_attempt_delay_not_the_timeout() {
    tunnel_past_a_dead_address(Router::direct()).await;
}

/// A name whose every address refuses: 502 connection_refused naming each attempt.
#[tokio::test]
async fn a_name_with_only_dead_addresses_names_every_attempt() {
    let (a, b) = (
        free_addr(),
        SocketAddr::from(([127, 0, 0, 2], free_addr().port())),
    );
    let resolver = ListResolver(HashMap::from([("dead.test".to_owned(), vec![a, b])]));
    let proxy = start_proxy_with(config(), Arc::new(resolver)).await;
    let (head, body) = connect_error(proxy.addr, &format!("dead.test:{}", a.port())).await;
    assert_error(&head, &body, 502, "connection_refused").await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("all 2 addresses failed")
            && text.contains(&format!("{a} refused"))
            && text.contains(&format!("{b} refused")),
        "{text}"
    );
}

/// Through a `socks5://` upstream (names resolved here), the addresses are raced too: each
/// attempt is a SOCKS connect to one address, and the hanging one loses.
#[tokio::test]
async fn socks5_local_resolution_races_the_addresses() {
    let (socks, mut asked) = socks5_server(None, HashMap::new()).await;
    let live = tunnel_past_a_dead_address(via(&format!("socks5://{socks}"))).await;
    let first = asked.recv().await.unwrap();
    let second = asked.recv().await.unwrap();
    assert_eq!(first.0, 1, "an address, not a name, was sent: {first:?}");
    assert_eq!(
        (second.1.as_str(), second.2),
        (live.ip().to_string().as_str(), live.port())
    );
}

/// A local DNS server (UDP) answering A queries from a table with a TTL, NXDOMAIN (with an
/// SOA giving the negative TTL) for other names, and no records for AAAA. Counts the A
/// queries per name.
async fn dns_server(
    answers: HashMap<&'static str, (std::net::Ipv4Addr, u32)>,
) -> (SocketAddr, Arc<Mutex<HashMap<String, usize>>>) {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let seen = Arc::clone(&counts);
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(q) = query.queries().first().cloned() else {
                continue;
            };
            let name = q.name().to_string();
            let mut resp = Message::new();
            resp.set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_recursion_desired(true)
                .set_recursion_available(true)
                .add_query(q.clone());
            let key = name.trim_end_matches('.');
            let soa = || {
                Record::from_rdata(
                    Name::from_ascii("test.").unwrap(),
                    300,
                    RData::SOA(SOA::new(
                        Name::from_ascii("ns.test.").unwrap(),
                        Name::from_ascii("admin.test.").unwrap(),
                        1,
                        60,
                        60,
                        60,
                        300,
                    )),
                )
            };
            match answers.get(key) {
                Some((ip, ttl)) if q.query_type() == RecordType::A => {
                    *seen.lock().unwrap().entry(key.to_owned()).or_default() += 1;
                    resp.add_answer(Record::from_rdata(q.name().clone(), *ttl, RData::A(A(*ip))));
                }
                Some(_) => {
                    resp.add_name_server(soa());
                }
                None => {
                    if q.query_type() == RecordType::A {
                        *seen.lock().unwrap().entry(key.to_owned()).or_default() += 1;
                    }
                    resp.set_response_code(ResponseCode::NXDomain);
                    resp.add_name_server(soa());
                }
            }
            let _ = sock.send_to(&resp.to_vec().unwrap(), from).await;
        }
    });
    (addr, counts)
}

/// The cache honours TTLs: a name is asked for once within its TTL and again after it; an
/// NXDOMAIN is remembered for the SOA's negative TTL.
#[tokio::test]
async fn the_dns_cache_honours_ttls_positive_and_negative() {
    let (dns, counts) = dns_server(HashMap::from([
        ("long.test", ("127.0.0.1".parse().unwrap(), 300)),
        ("short.test", ("127.0.0.1".parse().unwrap(), 1)),
    ]))
    .await;
    let r = DnsResolver::with_servers(&[dns]);
    let count = |n: &str| counts.lock().unwrap().get(n).copied().unwrap_or(0);
    for _ in 0..3 {
        let a = r.resolve("long.test", 80).await.unwrap();
        assert_eq!(a, vec!["127.0.0.1:80".parse().unwrap()]);
        r.resolve("short.test", 443).await.unwrap();
        let e = r.resolve("missing.test", 80).await.unwrap_err();
        assert!(e.to_string().contains("NXDOMAIN"), "{e}");
    }
    assert_eq!(
        (
            count("long.test"),
            count("short.test"),
            count("missing.test")
        ),
        (1, 1, 1)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    r.resolve("long.test", 80).await.unwrap();
    r.resolve("short.test", 80).await.unwrap();
    r.resolve("missing.test", 80).await.unwrap_err();
    assert_eq!(
        (
            count("long.test"),
            count("short.test"),
            count("missing.test")
        ),
        (1, 2, 1),
        "only the 1 s record expired"
    );
}

/// One cache serves routing and dialing: a `resolve = true` rule and the dial after it ask
/// the DNS server once between them.
#[tokio::test]
async fn routing_and_dialing_share_one_lookup() {
    let (dns, counts) = dns_server(HashMap::from([(
        "origin.test",
        ("127.0.0.1".parse().unwrap(), 300),
    )]))
    .await;
    let live = echo_server().await;
    let text = r#"
[[rules]]
match = { cidrs = ["127.0.0.0/8"] }
resolve = true
via = "direct"

[default]
via = "block"
"#;
    let file = viaduct::config::parse(text, "test.toml").unwrap();
    let mut cfg = config();
    cfg.router = file.router;
    let proxy = start_proxy_with(cfg, Arc::new(DnsResolver::with_servers(&[dns]))).await;
    let (_s, head) = connect(proxy.addr, &format!("origin.test:{}", live.port())).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(counts.lock().unwrap().get("origin.test"), Some(&1));
}

/// The configuration file: bind on rules, `[default]` and direct upstream tables in a pool.
#[tokio::test]
async fn bind_from_the_file_on_rules_default_and_pool_members() {
    let origin = who_am_i().await;
    let ruled = who_am_i().await;
    let text = format!(
        r#"
[upstreams]
a = {{ via = "direct", bind = "127.0.0.5" }}
b = {{ via = "direct", bind = "127.0.0.6" }}

[pools.out]
members = ["a", "b"]
strategy = "round-robin"

[[rules]]
match = {{ ports = [{}] }}
via = "direct"
bind = "127.0.0.7"

[default]
via = "out"
"#,
        ruled.port()
    );
    let file = viaduct::config::parse(&text, "test.toml").unwrap();
    let mut cfg = config();
    cfg.router = file.router;
    let proxy = start_proxy(cfg).await;
    assert_eq!(
        seen_from(proxy.addr, ruled, None).await,
        "127.0.0.7".parse::<IpAddr>().unwrap()
    );
    let mut seen = HashSet::new();
    for _ in 0..4 {
        seen.insert(seen_from(proxy.addr, origin, None).await);
    }
    let want: HashSet<IpAddr> = ["127.0.0.5", "127.0.0.6"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        seen, want,
        "round-robin over two direct members, each its own address"
    );
    // Misconfigurations name the file, line and field.
    for (bad, field) in [
        (
            "[default]\nvia = \"direct\"\nbind = \"nope\"\n",
            "default.bind",
        ),
        (
            "[default]\nvia = \"direct\"\nbind_mode = \"random\"\n",
            "default.bind",
        ),
        (
            "[default]\nvia = \"block\"\nbind = \"127.0.0.1\"\n",
            "default.bind",
        ),
        ("[upstreams]\nd = { via = \"direct\" }\n", "upstreams.d"),
        (
            "[upstreams]\nd = { via = \"direct\", bind = \"127.0.0.1\", color = \"red\" }\n",
            "upstreams.d.color",
        ),
    ] {
        let e = viaduct::config::parse(bad, "bad.toml").unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.to_string().starts_with("bad.toml:"), "{e}");
    }
}
