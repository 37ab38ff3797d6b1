//! Rules and pools end to end: upstream viaducts in-process as pool members, routing from the
//! real config parser.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use viaduct::Config;
use viaduct::routing::Router;

use crate::support::*;

fn router(toml: &str) -> Router {
    viaduct::config::parse(toml, "test.toml").unwrap().router
}

/// The pool member that carried a request, from the `Via` the origin saw (`1.1 viaduct, 1.1 uN`).
async fn member_seen(o: &mut Origin) -> String {
    let seen = o.seen.recv().await.unwrap();
    let via: Vec<&str> = seen
        .headers
        .get_all("via")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    via.last().unwrap().trim_start_matches("1.1 ").to_owned()
}

fn get(origin: std::net::SocketAddr, auth: Option<&str>) -> String {
    let auth = auth
        .map(|a| {
            format!(
                "Proxy-Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        })
        .unwrap_or_default();
    format!("GET http://{origin}/hello HTTP/1.1\r\nHost: x\r\n{auth}\r\n")
}

async fn members(names: &[&str]) -> Vec<ProxyHandle> {
    let mut v = Vec::new();
    for n in names {
        v.push(
            start_proxy(Config {
                ..config_with(|s| s.via_name = (*n).into())
            })
            .await,
        );
    }
    v
}

/// Round-robin spreads evenly; a member killed mid-test costs no client request (failover),
/// and health marks it down within one interval; traffic then goes to the others only.
#[tokio::test]
async fn round_robin_failover_and_health() {
    let mut o = origin().await;
    let echo = echo_server().await;
    let mut ups = members(&["u1", "u2", "u3"]).await;
    let toml = format!(
        "[upstreams]\nu1 = \"http://{}\"\nu2 = \"http://{}\"\nu3 = \"http://{}\"\n\
         [pools.p]\nmembers = [\"u1\", \"u2\", \"u3\"]\nstrategy = \"round-robin\"\n\
         health = {{ interval = \"200ms\", target = \"{echo}\" }}\n[default]\nvia = \"p\"\n",
        ups[0].addr, ups[1].addr, ups[2].addr
    );
    let front = start_proxy(Config {
        router: router(&toml),
        ..config()
    })
    .await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..9 {
        let (head, _) = send(front.addr, &get(o.addr, None)).await;
        assert_eq!(head.status, 200);
        *counts.entry(member_seen(&mut o).await).or_default() += 1;
    }
    assert_eq!(
        counts,
        HashMap::from([("u1".into(), 3), ("u2".into(), 3), ("u3".into(), 3)])
    );

    ups.remove(1).shutdown().await;
    let killed = Instant::now();
    for i in 0..12 {
        if i % 2 == 0 {
            let (head, body) = send(front.addr, &get(o.addr, None)).await;
            assert_eq!(
                head.status,
                200,
                "request {i} failed: {}",
                String::from_utf8_lossy(&body)
            );
            assert_ne!(member_seen(&mut o).await, "u2");
        } else {
            let (mut s, head) = connect(front.addr, &echo.to_string()).await;
            assert_eq!(head.status, 200, "tunnel {i} failed");
            s.write_all(b"x").await.unwrap();
            let mut b = [0; 1];
            s.read_exact(&mut b).await.unwrap();
        }
    }
    let pool = front.proxy.router().pools()[0].clone();
    while pool.is_up(1) {
        assert!(
            killed.elapsed() < Duration::from_millis(1000),
            "still up after the health interval"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pool.is_up(0) && pool.is_up(2));
}

/// Sticky: a session (user name suffix `-session-ID`) stays on one member; sessions spread.
#[tokio::test]
async fn sticky_sessions() {
    let mut o = origin().await;
    let ups = members(&["s1", "s2", "s3"]).await;
    let toml = format!(
        "[upstreams]\ns1 = \"http://{}\"\ns2 = \"http://{}\"\ns3 = \"http://{}\"\n\
         [pools.p]\nmembers = [\"s1\", \"s2\", \"s3\"]\nstrategy = \"sticky\"\n[default]\nvia = \"p\"\n",
        ups[0].addr, ups[1].addr, ups[2].addr
    );
    let front = start_proxy(Config {
        router: router(&toml),
        ..config()
    })
    .await;
    let mut first = None;
    for _ in 0..6 {
        let (head, _) = send(front.addr, &get(o.addr, Some("alice-session-7:pw"))).await;
        assert_eq!(head.status, 200);
        let m = member_seen(&mut o).await;
        assert_eq!(first.get_or_insert(m.clone()), &m, "session 7 moved");
    }
    let mut seen = std::collections::HashSet::new();
    for i in 0..24 {
        send(
            front.addr,
            &get(o.addr, Some(&format!("alice-session-{i}:pw"))),
        )
        .await;
        seen.insert(member_seen(&mut o).await);
    }
    assert_eq!(seen.len(), 3, "sessions spread over every member: {seen:?}");
}

/// A member answering 407, 429 or 5xx is skipped for the next one; when every allowed member
/// fails, the client gets one error listing what each said.
#[tokio::test]
async fn failover_past_refusals_and_listing_failures() {
    let echo = echo_server().await;
    let (a, _) = fake_upstream(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
    let (b, _) = fake_upstream(b"HTTP/1.1 429 Too Many Requests\r\n\r\n").await;
    let (c, _) = fake_upstream(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
    let good = start_upstream("good").await;
    let toml = format!(
        "[upstreams]\na = \"http://{a}\"\nb = \"http://{b}\"\nc = \"http://{c}\"\ngood = \"http://{}\"\n\
         [pools.p]\nmembers = [\"a\", \"b\", \"c\", \"good\"]\nmax_attempts = 4\n\
         [pools.bad]\nmembers = [\"a\", \"b\", \"c\"]\n\
         [[rules]]\nmatch = {{ ports = [{}] }}\nvia = \"p\"\n[default]\nvia = \"bad\"\n",
        good.addr,
        echo.port()
    );
    let front = start_proxy(Config {
        router: router(&toml),
        ..config()
    })
    .await;
    let (mut s, head) = connect(front.addr, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    s.write_all(b"ok").await.unwrap();
    let mut buf = [0; 2];
    s.read_exact(&mut buf).await.unwrap();

    let (mut s, head) = connect(front.addr, "origin.test:443").await;
    let body = String::from_utf8(read_body(&mut s, &head).await).unwrap();
    assert_eq!(head.status, 502);
    assert!(
        head.get("proxy-status")
            .unwrap()
            .contains("received-status=503"),
        "{head:?}"
    );
    for (name, what) in [
        ("a", "answered 407"),
        ("b", "answered 429"),
        ("c", "answered 503"),
    ] {
        assert!(
            body.contains(&format!("{name}: http proxy")) && body.contains(what),
            "{name}: {body}"
        );
    }
    assert!(
        body.starts_with("502 Bad Gateway: pool bad: 3 member(s) failed"),
        "{body}"
    );
}

/// Health tells the upstream's fault from the origin's: a member reporting the target
/// unreachable (its 502) stays up; members refusing us are ejected, and once all are out the
/// pool fails fast, naming itself.
#[tokio::test]
async fn health_blames_the_right_party() {
    let (reports_502, _) = fake_upstream(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
    let toml = format!(
        "[upstreams]\nm = \"http://{reports_502}\"\n[pools.p]\nmembers = [\"m\"]\nfailures = 1\n[default]\nvia = \"p\"\n"
    );
    let front = start_proxy(Config {
        router: router(&toml),
        ..config()
    })
    .await;
    for _ in 0..3 {
        let (_s, head) = connect(front.addr, "origin.test:443").await;
        assert_eq!(head.status, 502);
    }
    assert!(
        front.proxy.router().pools()[0].is_up(0),
        "ejected for the origin's fault"
    );

    let (x, y) = (free_addr(), free_addr());
    let toml = format!(
        "[upstreams]\nx = \"http://{x}\"\ny = \"http://{y}\"\n[pools.gone]\nmembers = [\"x\", \"y\"]\nfailures = 1\n\
         ejection = \"1m\"\n[default]\nvia = \"gone\"\n"
    );
    let front = start_proxy(Config {
        router: router(&toml),
        ..config()
    })
    .await;
    let (mut s, head) = connect(front.addr, "origin.test:443").await;
    let body = String::from_utf8(read_body(&mut s, &head).await).unwrap();
    assert_error(&head, body.as_bytes(), 502, "connection_refused").await;
    let started = Instant::now();
    let (mut s, head) = connect(front.addr, "origin.test:443").await;
    let body = String::from_utf8(read_body(&mut s, &head).await).unwrap();
    assert_error(&head, body.as_bytes(), 502, "destination_unavailable").await;
    assert!(body.contains("pool gone has no healthy member"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Rules: block (403), bypass (direct), users (their own upstream), default.
#[tokio::test]
async fn rules_route_by_destination_and_user() {
    let mut o = origin().await;
    let bob_up = start_upstream("bobs").await;
    let def_up = start_upstream("def").await;
    let toml = format!(
        "bypass = \"127.0.0.2\"\n[upstreams]\nbob = \"http://{}\"\ncorp = \"http://{}\"\n\
         [[rules]]\nmatch = {{ domains = [\"*.ads.test\"] }}\nvia = \"block\"\n\
         [[rules]]\nmatch = {{ users = [\"bob\"] }}\nvia = \"bob\"\n[default]\nvia = \"corp\"\n",
        bob_up.addr, def_up.addr
    );
    let front = start_proxy(Config {
        router: router(&toml),
        auth: Some(users(&[("bob", "pw"), ("carol", "pw")])),
        ..config()
    })
    .await;

    let (head, body) = send(
        front.addr,
        "GET http://x.ads.test/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic Y2Fyb2w6cHc=\r\n\r\n",
    )
    .await;
    assert_error(&head, &body, 403, "http_request_denied").await;
    assert!(String::from_utf8_lossy(&body).contains("blocked by rule 1"));
    let (mut s, head) = connect_as(front.addr, "x.ads.test:443", Some("carol:pw")).await;
    assert_error(
        &head,
        &read_body(&mut s, &head).await,
        403,
        "http_request_denied",
    )
    .await;

    send(front.addr, &get(o.addr, Some("bob:pw"))).await;
    assert_eq!(member_seen(&mut o).await, "bobs");
    send(front.addr, &get(o.addr, Some("carol:pw"))).await;
    assert_eq!(member_seen(&mut o).await, "def");
    // The client's own Proxy-Authorization is never forwarded.
    send(front.addr, &get(o.addr, Some("bob:pw"))).await;
    let seen = o.seen.recv().await.unwrap();
    assert!(!seen.headers.contains_key("proxy-authorization"));

    // Bypass: 127.0.0.2 goes direct (nothing listens there; the refusal names the target).
    let (head, body) = send(
        front.addr,
        "GET http://127.0.0.2:9/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic Y2Fyb2w6cHc=\r\n\r\n",
    )
    .await;
    assert_error(&head, &body, 502, "connection_refused").await;
    assert!(String::from_utf8_lossy(&body).contains("target 127.0.0.2:9"));
}
