//! Access control over real sockets: proxy authentication (407, cache, failure budget, caps,
//! revocation at reload), allowed clients, and the destination policy with its safe defaults.
//! Every target is a loopback server; "internal" destinations are loopback ones under a policy
//! that denies them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use viaduct::Config;
use viaduct::access::{Access, Clients, Destinations};
use viaduct::auth::AuthSettings;

use crate::support::*;

fn authed(list: &[(&str, &str)]) -> Config {
    Config {
        auth: Some(users(list)),
        ..config()
    }
}

/// An echo round trip through an open tunnel.
async fn echoes(s: &mut tokio::net::TcpStream) -> bool {
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"ping"
}

/// No credentials and wrong ones get 407 with a Basic challenge, `Proxy-Status` and one line;
/// right ones (with or without a session suffix) tunnel and forward, and the client's
/// `Proxy-Authorization` never reaches the origin.
#[tokio::test]
async fn proxy_authentication_challenges_and_admits() {
    let echo = echo_server().await;
    let mut o = origin().await;
    let p = start_proxy(authed(&[("alice", "s3cret")])).await;
    for creds in [None, Some("alice:wrong"), Some("mallory:s3cret")] {
        let (mut s, head) = connect_as(p.addr, &echo.to_string(), creds).await;
        let body = read_body(&mut s, &head).await;
        assert_error(&head, &body, 407, "http_request_denied").await;
        assert_eq!(
            head.get("proxy-authenticate"),
            Some("Basic realm=\"viaduct\"")
        );
        assert!(!String::from_utf8_lossy(&body).contains("s3cret"));
    }
    // A plain request without credentials: 407 too, and the origin never hears of it.
    let (head, body) = get_hello(p.addr, o.addr).await;
    assert_error(&head, &body, 407, "http_request_denied").await;
    assert!(o.seen.try_recv().is_err());
    // The wrong password was verified, and so was mallory's against a decoy hash: an
    // unknown name costs what a known one does (no enumeration by timing).
    let verified = p.proxy.core().auth().verifications();
    assert_eq!(verified, 2);

    for creds in ["alice:s3cret", "alice-session-42:s3cret"] {
        let (mut s, head) = connect_as(p.addr, &echo.to_string(), Some(creds)).await;
        assert_eq!(head.status, 200, "{creds}");
        assert!(echoes(&mut s).await);
    }
    let (head, body) = send(
        p.addr,
        &format!(
            "GET http://{}/hello HTTP/1.1\r\nHost: x\r\n{}\r\n",
            o.addr,
            proxy_auth("alice:s3cret")
        ),
    )
    .await;
    assert_eq!((head.status, body.as_slice()), (200, b"hello\n".as_slice()));
    let seen = o.seen.recv().await.unwrap();
    assert!(!seen.headers.contains_key("proxy-authorization"));
    // One bcrypt for all of alice's requests (the suffix does not change the password).
    assert_eq!(p.proxy.core().auth().verifications(), verified + 1);
}

/// Fifty concurrent tunnels with the same credentials cost one password verification.
#[tokio::test]
async fn concurrent_logins_share_one_verification() {
    let echo = echo_server().await;
    let p = start_proxy(authed(&[("alice", "s3cret")])).await;
    let tunnels = (0..50).map(|_| {
        let (addr, target) = (p.addr, echo.to_string());
        tokio::spawn(async move { connect_as(addr, &target, Some("alice:s3cret")).await })
    });
    for t in tunnels {
        let (mut s, head) = t.await.unwrap();
        assert_eq!(head.status, 200);
        assert!(echoes(&mut s).await);
    }
    assert_eq!(p.proxy.core().auth().verifications(), 1);
}

/// Past the failure budget an address gets 429 with `Retry-After`, even with the right
/// password, while another address is let in; after the cool-down it is let in again.
#[tokio::test]
async fn failed_logins_are_budgeted_per_client_address() {
    let echo = echo_server().await;
    let p = start_proxy(Config {
        auth: Some(AuthSettings {
            max_failures: 3,
            lockout: Duration::from_secs(1),
            ..users(&[("alice", "s3cret")])
        }),
        ..config()
    })
    .await;
    let attempt = |from: [u8; 4], creds: &'static str| {
        let (addr, target) = (p.addr, echo);
        async move {
            let mut s = connect_from(from, addr).await;
            s.write_all(
                format!(
                    "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{}\r\n",
                    proxy_auth(creds)
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let head = read_head(&mut s).await;
            // A 200 opens a tunnel: no body to read.
            let body = if head.status == 200 {
                Vec::new()
            } else {
                read_body(&mut s, &head).await
            };
            (head, body)
        }
    };
    for _ in 0..3 {
        let (head, _) = attempt([127, 0, 0, 1], "alice:guess").await;
        assert_eq!(head.status, 407);
    }
    let (head, body) = attempt([127, 0, 0, 1], "alice:s3cret").await;
    assert_error(&head, &body, 429, "http_request_denied").await;
    assert_eq!(head.get("retry-after"), Some("1"));
    let (head, _) = attempt([127, 0, 0, 2], "alice:s3cret").await;
    assert_eq!(head.status, 200, "another client is not slowed");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (head, _) = attempt([127, 0, 0, 1], "alice:s3cret").await;
    assert_eq!(head.status, 200, "let in after the cool-down");
}

/// A reload that removes a user (or changes their password) closes their open tunnels within
/// a second and answers their new requests 407; other users' tunnels carry on.
#[tokio::test]
async fn reload_revokes_removed_and_changed_users() {
    let echo = echo_server().await;
    // Fixed hashes: bob's line is the same in both files (a new salt would be a new hash).
    let hash = |p: &str| bcrypt::hash(p, 4).unwrap();
    let (a, b, c, c2) = (hash("a"), hash("b"), hash("c"), hash("c2"));
    let file = |text: String| Config {
        auth: Some(AuthSettings::new(
            viaduct::auth::Users::parse(&text, "users").unwrap(),
        )),
        ..config()
    };
    let p = start_proxy(file(format!("alice:{a}\nbob:{b}\ncarol:{c}\n"))).await;
    let mut open = Vec::new();
    for creds in ["alice:a", "bob:b", "carol:c"] {
        let (mut s, head) = connect_as(p.addr, &echo.to_string(), Some(creds)).await;
        assert_eq!(head.status, 200);
        assert!(echoes(&mut s).await);
        open.push(s);
    }
    // alice removed, carol's password changed, bob unchanged.
    p.proxy.reload(file(format!("bob:{b}\ncarol:{c2}\n")));
    let mut carol = open.pop().unwrap();
    let mut bob = open.pop().unwrap();
    let mut alice = open.pop().unwrap();
    for (name, s) in [("alice", &mut alice), ("carol", &mut carol)] {
        let mut buf = [0; 16];
        let closed = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "{name}'s tunnel is closed within a second: {closed:?}"
        );
    }
    assert!(echoes(&mut bob).await, "bob's tunnel carries on");
    for creds in ["alice:a", "carol:c"] {
        let (_, head) = connect_as(p.addr, &echo.to_string(), Some(creds)).await;
        assert_eq!(head.status, 407, "{creds}");
    }
    let (mut s, head) = connect_as(p.addr, &echo.to_string(), Some("carol:c2")).await;
    assert_eq!(head.status, 200);
    assert!(echoes(&mut s).await);
}

/// `max_connections_per_user`: past it, 503 `connection_limit_reached`; a closed tunnel frees
/// its place; other users are not counted against it.
#[tokio::test]
async fn per_user_cap() {
    let echo = echo_server().await;
    let p = start_proxy(Config {
        auth: Some(AuthSettings {
            max_per_user: 2,
            ..users(&[("alice", "a"), ("bob", "b")])
        }),
        ..config()
    })
    .await;
    let target = echo.to_string();
    let (mut t1, h1) = connect_as(p.addr, &target, Some("alice:a")).await;
    let (_t2, h2) = connect_as(p.addr, &target, Some("alice-session-9:a")).await;
    assert_eq!((h1.status, h2.status), (200, 200));
    assert!(echoes(&mut t1).await);
    let (mut s, head) = connect_as(p.addr, &target, Some("alice:a")).await;
    let body = read_body(&mut s, &head).await;
    assert_error(&head, &body, 503, "connection_limit_reached").await;
    let (_b, head) = connect_as(p.addr, &target, Some("bob:b")).await;
    assert_eq!(head.status, 200);
    t1.shutdown().await.unwrap();
    drop(t1);
    let mut admitted = false;
    for _ in 0..50 {
        let (_t, head) = connect_as(p.addr, &target, Some("alice:a")).await;
        if head.status == 200 {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "a closed tunnel gives its place back");
}

/// `--allow-clients`: another address gets 403 with `Proxy-Status` before anything it sent is
/// acted on; an allowed address is served.
#[tokio::test]
async fn only_allowed_clients_are_served() {
    let mut o = origin().await;
    let p = start_proxy(Config {
        access: Access {
            clients: Clients {
                allow: vec!["127.0.0.2/32".parse().unwrap()],
            },
            ..Access::default()
        },
        ..config()
    })
    .await;
    let request = format!("GET http://{}/hello HTTP/1.1\r\nHost: x\r\n\r\n", o.addr);
    let mut s = connect_from([127, 0, 0, 1], p.addr).await;
    s.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    let body = read_body(&mut s, &head).await;
    assert_error(&head, &body, 403, "http_request_denied").await;
    assert!(String::from_utf8_lossy(&body).contains("127.0.0.1 is not among the allowed clients"));
    assert_eq!(s.read(&mut [0; 1]).await.unwrap_or(0), 0, "closed after");
    assert!(o.seen.try_recv().is_err(), "the request was not acted on");

    let mut s = connect_from([127, 0, 0, 2], p.addr).await;
    s.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(head.status, 200);
}

fn deny_internal(allow: &[&str]) -> Access {
    Access {
        destinations: Destinations {
            deny_internal: true,
            allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
            ..Destinations::default()
        },
        ..Access::default()
    }
}

/// With internal destinations denied, loopback targets are refused in every spelling, and by
/// a name that resolves to one (checked on the address dialed, from one resolution); an
/// `allow` entry lets one through.
#[tokio::test]
async fn internal_destinations_are_refused_on_the_dialed_address() {
    let echo = echo_server().await;
    let port = echo.port();
    let resolver = TestResolver::default().with("inside.test", echo);
    let p = start_proxy_with(
        Config {
            access: deny_internal(&[]),
            ..config()
        },
        Arc::new(resolver.clone()),
    )
    .await;
    for target in [
        format!("127.0.0.1:{port}"),
        format!("127.1:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("inside.test:{port}"),
    ] {
        let (head, body) = connect_error(p.addr, &target).await;
        assert_error(&head, &body, 403, "destination_ip_prohibited").await;
        assert!(
            String::from_utf8_lossy(&body).contains("internal address"),
            "{target}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let (head, body) = send(
        p.addr,
        &format!("GET http://inside.test:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_error(&head, &body, 403, "destination_ip_prohibited").await;

    let allowed = start_proxy_with(
        Config {
            access: deny_internal(&["127.0.0.1/32"]),
            ..config()
        },
        Arc::new(resolver),
    )
    .await;
    let (mut s, head) = connect(allowed.addr, &format!("inside.test:{port}")).await;
    assert_eq!(head.status, 200);
    assert!(echoes(&mut s).await);
}

/// Through an upstream: an address literal is checked here (the upstream is never asked); a
/// name is the upstream's to resolve; a `socks5://` hop resolves here, so its answer is checked.
#[tokio::test]
async fn destination_policy_through_upstreams() {
    let echo = echo_server().await;
    let port = echo.port();
    let (up, mut heads) = fake_upstream(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
    let p = start_proxy(Config {
        router: via(&format!("http://{up}")),
        access: deny_internal(&[]),
        ..config()
    })
    .await;
    let (head, body) = connect_error(p.addr, &format!("127.0.0.1:{port}")).await;
    assert_error(&head, &body, 403, "destination_ip_prohibited").await;
    assert!(heads.try_recv().is_err(), "the upstream was not asked");
    let (_s, head) = connect(p.addr, "elsewhere.test:443").await;
    assert_eq!(head.status, 200);
    assert!(
        heads
            .recv()
            .await
            .unwrap()
            .starts_with("CONNECT elsewhere.test:443")
    );

    let (socks, _seen) = socks5_server(None, HashMap::new()).await;
    let resolver = TestResolver::default().with("inside.test", echo);
    let p = start_proxy_with(
        Config {
            router: via(&format!("socks5://{socks}")),
            access: deny_internal(&[]),
            ..config()
        },
        Arc::new(resolver),
    )
    .await;
    let (head, body) = connect_error(p.addr, &format!("inside.test:{port}")).await;
    assert_error(&head, &body, 403, "destination_ip_prohibited").await;
}

/// `deny` on a loopback proxy, `allow` winning over it, and `connect_ports`.
#[tokio::test]
async fn deny_allow_and_connect_ports() {
    let echo = echo_server().await;
    let port = echo.port();
    let p = start_proxy(Config {
        access: Access {
            destinations: Destinations {
                deny: vec!["127.0.0.0/8".parse().unwrap()],
                allow: vec!["127.0.0.1/32".parse().unwrap()],
                connect_ports: vec![port],
                deny_internal: false,
            },
            ..Access::default()
        },
        ..config()
    })
    .await;
    let (head, body) = connect_error(p.addr, &format!("127.0.0.2:{port}")).await;
    assert_error(&head, &body, 403, "destination_ip_prohibited").await;
    assert!(String::from_utf8_lossy(&body).contains("access policy denies"));
    let (mut s, head) = connect(p.addr, &format!("127.0.0.1:{port}")).await;
    assert_eq!(head.status, 200);
    assert!(echoes(&mut s).await);
    let other = free_addr().port();
    let (head, body) = connect_error(p.addr, &format!("127.0.0.1:{other}")).await;
    assert_error(&head, &body, 403, "http_request_denied").await;
    assert!(String::from_utf8_lossy(&body).contains("connect_ports"));
}

/// Safe defaults come from the listen addresses: a configuration listening on `0.0.0.0` denies
/// internal destinations (a name resolving to 127.0.0.1 is refused while the client still
/// talks to 127.0.0.1), and one with neither auth nor allowed clients is refused unless open.
#[tokio::test]
async fn safe_defaults_beyond_loopback() {
    use viaduct::RunFlags;
    use viaduct::config::runtime::merge;
    let echo = echo_server().await;
    let wide = RunFlags::parse_args(["--listen", "0.0.0.0:0"]).unwrap();
    let err = merge(None, &wide).unwrap_err().to_string();
    for needle in ["--auth-file", "--allow-clients", "--open", "0.0.0.0:0"] {
        assert!(err.contains(needle), "{err}");
    }
    let open = merge(
        None,
        &RunFlags::parse_args(["--listen", "0.0.0.0:0", "--open"]).unwrap(),
    )
    .unwrap();
    assert!(open.access.destinations.deny_internal);
    let local = merge(None, &RunFlags::default()).unwrap();
    assert!(!local.access.destinations.deny_internal);

    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let resolver = TestResolver::default().with("inside.test", echo);
    let p = start_proxy_on(
        listener,
        Config {
            settings: viaduct::Settings {
                connect_timeout: Duration::from_secs(2),
                ..open.settings
            },
            ..open
        },
        Arc::new(resolver),
    )
    .await;
    let (head, body) = connect_error(p.addr, &format!("inside.test:{}", echo.port())).await;
    assert_error(&head, &body, 403, "destination_ip_prohibited").await;
}

/// A pool's health probe goes where the operator said, even to an internal address under the
/// safe default: the policy is for clients' destinations.
#[tokio::test]
async fn health_probes_are_not_client_destinations() {
    let echo = echo_server().await;
    let (up, mut heads) = fake_upstream(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
    let text = format!(
        "[upstreams]\nm = \"http://{up}\"\n\
         [pools.p]\nmembers = [\"m\"]\nhealth = {{ interval = \"5s\", target = \"{echo}\" }}\n\
         [default]\nvia = \"p\"\n"
    );
    let _p = start_proxy(Config {
        router: viaduct::config::parse(&text, "t.toml").unwrap().router,
        access: deny_internal(&[]),
        ..config()
    })
    .await;
    let probe = tokio::time::timeout(Duration::from_secs(5), heads.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(probe.starts_with(&format!("CONNECT {echo} ")), "{probe}");
}

/// Hardening 2, findings 2 and 3 over real sockets: a 45 KB password is refused without
/// hashing (and counted), and 100 concurrent wrong passwords from one address are hashed at
/// most as often as the budget allows; the rest get 429 with `Retry-After`.
#[tokio::test]
async fn the_failure_budget_bounds_password_hashing() {
    let echo = echo_server().await;
    let p = start_proxy(Config {
        auth: Some(AuthSettings {
            max_failures: 10,
            ..users(&[("alice", "s3cret")])
        }),
        ..config()
    })
    .await;
    let auth = p.proxy.core().auth();
    let long = format!("alice:{}", "x".repeat(45_000));
    let (mut s, head) = connect_as(p.addr, &echo.to_string(), Some(&long)).await;
    let body = read_body(&mut s, &head).await;
    assert_error(&head, &body, 407, "http_request_denied").await;
    assert_eq!((auth.verifications(), auth.failures()), (0, 1));

    let tries = (0..100).map(|i| {
        let (addr, target) = (p.addr, echo.to_string());
        tokio::spawn(async move {
            let creds = format!("alice:guess-{i}");
            let (_s, head) = connect_as(addr, &target, Some(&creds)).await;
            (head.status, head.get("retry-after").is_some())
        })
    });
    let mut answers = HashMap::new();
    for t in tries {
        let (status, retry_after) = t.await.unwrap();
        assert!(status != 429 || retry_after, "429 without Retry-After");
        *answers.entry(status).or_insert(0) += 1;
    }
    assert!(
        auth.verifications() <= 10,
        "{} hashes for a budget of 10 ({answers:?})",
        auth.verifications()
    );
    assert!(answers.get(&429).copied().unwrap_or(0) >= 89, "{answers:?}");
    // The address stays locked out, even with the right password.
    let (_s, head) = connect_as(p.addr, &echo.to_string(), Some("alice:s3cret")).await;
    assert_eq!(head.status, 429);
}

/// Hardening 2, finding 14: a streaming plain-HTTP response of a user removed at a reload is
/// cut, as their tunnels are; another user's stream carries on.
#[tokio::test]
async fn reload_cuts_the_streaming_responses_of_removed_users() {
    let o = origin().await;
    let hash = |p: &str| bcrypt::hash(p, 4).unwrap();
    let (a, b) = (hash("a"), hash("b"));
    let file = |text: String| Config {
        auth: Some(AuthSettings::new(
            viaduct::auth::Users::parse(&text, "users").unwrap(),
        )),
        ..config()
    };
    let p = start_proxy(file(format!("alice:{a}\nbob:{b}\n"))).await;
    // `/echo` streams the request body back as it arrives: a response that lasts as long as
    // the client keeps sending.
    let stream = |creds: &'static str| {
        let (proxy, origin) = (p.addr, o.addr);
        async move {
            let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
            s.write_all(
                format!(
                    "POST http://{origin}/echo HTTP/1.1\r\nHost: x\r\n{}Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
                    proxy_auth(creds)
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let head = read_head(&mut s).await;
            assert_eq!(head.status, 200, "{creds}");
            let mut seen = Vec::new();
            while !String::from_utf8_lossy(&seen).contains("first") {
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the stream ended early");
                seen.extend_from_slice(&buf[..n]);
            }
            s
        }
    };
    let mut alice = stream("alice:a").await;
    let mut bob = stream("bob:b").await;
    p.proxy.reload(file(format!("bob:{b}\n")));
    let mut buf = [0u8; 256];
    let cut = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match alice.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert_eq!(cut, Ok(true), "alice's streaming response was not cut");
    bob.write_all(b"6\r\nsecond\r\n").await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("second") {
        let n = tokio::time::timeout(Duration::from_secs(2), bob.read(&mut buf))
            .await
            .expect("bob's stream carries on")
            .unwrap();
        assert!(n > 0, "bob's stream ended");
        seen.extend_from_slice(&buf[..n]);
    }
}
