//! Observability over real sockets: the admin listener's metrics move by exactly the requests
//! made, pool health shows, no credential appears in any page or log, the PAC file and status
//! pages say what the routing is, and the JSON access log carries one record per request.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use viaduct::Config;
use viaduct::config::runtime::AdminSettings;
use viaduct::session::access_log::Format;

use crate::support::*;

fn admin(token: Option<&str>) -> Option<AdminSettings> {
    Some(AdminSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: token.map(str::to_owned),
        allow: Vec::new(),
        pac_proxy: Some("proxy.test:8083".into()),
        pac_public: false,
    })
}

/// Starts the proxy and its admin listener; returns both addresses.
async fn start(config: Config) -> (ProxyHandle, std::net::SocketAddr) {
    let p = start_proxy(config).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    assert!(p.proxy.spawn_admin(listener));
    (p, addr)
}

async fn page(admin: std::net::SocketAddr, path: &str, extra: &str) -> (Head, String) {
    let (head, body) = send(
        admin,
        &format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{extra}Connection: close\r\n\r\n"),
    )
    .await;
    (head, String::from_utf8(body).unwrap())
}

/// The value of one series in the classic text exposition.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Requests, errors and tunnel bytes are counted exactly; the page is the classic text format
/// unless the scraper asks for OpenMetrics.
#[tokio::test]
async fn counters_move_by_exactly_the_requests_made() {
    let o = origin().await;
    let echo = echo_server().await;
    let (p, admin) = start(Config {
        admin: admin(None),
        ..config()
    })
    .await;
    for _ in 0..3 {
        let (head, _) = get_hello(p.addr, o.addr).await;
        assert_eq!(head.status, 200);
    }
    let refused = free_addr();
    let (head, _) = send(
        p.addr,
        &format!("GET http://{refused}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_eq!(head.status, 502);
    let (mut t, head) = connect(p.addr, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    t.write_all(&[7u8; 1000]).await.unwrap();
    let mut back = [0u8; 1000];
    t.read_exact(&mut back).await.unwrap();
    drop(t);

    let mut m = String::new();
    for _ in 0..50 {
        m = page(admin, "/metrics", "").await.1;
        if value(&m, "viaduct_bytes_total{direction=\"up\",route=\"direct\"}").unwrap_or(0.0)
            >= 1000.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let series = |s: &str| value(&m, s);
    assert_eq!(
        series(
            "viaduct_requests_total{protocol=\"http\",class=\"2xx\",code=\"200\",route=\"direct\"}"
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        series(
            "viaduct_requests_total{protocol=\"http\",class=\"5xx\",code=\"502\",route=\"direct\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            "viaduct_requests_total{protocol=\"connect\",class=\"2xx\",code=\"200\",route=\"direct\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        series("viaduct_errors_total{error=\"connection_refused\"}"),
        Some(1.0)
    );
    // The tunnel's 1000 bytes each way, plus the plain requests' heads and bodies.
    assert!(series("viaduct_bytes_total{direction=\"up\",route=\"direct\"}").unwrap() >= 1000.0);
    assert!(
        series("viaduct_bytes_total{direction=\"down\",route=\"direct\"}").unwrap()
            >= 1000.0 + 3.0 * 6.0
    );
    // Dials that opened something: the plain requests share one kept-alive connection, the
    // refused one opened nothing, the tunnel is the second.
    assert_eq!(series("viaduct_dial_seconds_count"), Some(2.0), "{m}");
    assert_eq!(series("viaduct_tunnels_open"), Some(0.0));
    assert!(m.contains("# TYPE viaduct_requests_total counter") && !m.contains("# EOF"));
    let (head, om) = page(
        admin,
        "/metrics",
        "Accept: application/openmetrics-text; version=1.0.0\r\n",
    )
    .await;
    assert!(
        head.get("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(om.trim_end().ends_with("# EOF") && om.contains("# TYPE viaduct_requests counter"));
}

/// A pool member that refuses is ejected and shows `viaduct_pool_member_up 0`; with every
/// member out, `/readyz` says which pool; the status pages name the pool and its members.
#[tokio::test]
async fn pool_health_in_metrics_readiness_and_status() {
    let o = origin().await;
    let good = start_upstream("good").await;
    let dead = free_addr();
    let text = format!(
        "[upstreams]\ndead = \"http://{dead}\"\nlive = \"http://{}\"\n\
         [pools.p]\nmembers = [\"dead\", \"live\"]\nstrategy = \"failover\"\nfailures = 1\n\
         [default]\nvia = \"p\"\n",
        good.addr
    );
    let (p, admin) = start(Config {
        router: viaduct::config::parse(&text, "t.toml").unwrap().router,
        admin: admin(None),
        ..config()
    })
    .await;
    assert_eq!(page(admin, "/readyz", "").await.0.status, 200);
    let (head, _) = get_hello(p.addr, o.addr).await;
    assert_eq!(head.status, 200, "failed over to the live member");
    let m = page(admin, "/metrics", "").await.1;
    assert_eq!(
        value(&m, "viaduct_pool_member_up{pool=\"p\",member=\"dead\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        value(&m, "viaduct_pool_member_up{pool=\"p\",member=\"live\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "viaduct_pool_ejections_total{pool=\"p\",member=\"dead\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "viaduct_pool_failovers_total{pool=\"p\"}"),
        Some(1.0)
    );
    let (_, html) = page(admin, "/status", "").await;
    assert!(
        html.contains("pool p")
            && html.contains(">dead<")
            && html.contains(">live<")
            && html.contains("ejected for"),
        "{html}"
    );
    let (head, json) = page(admin, "/status.json", "").await;
    assert_eq!(head.get("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["pools"][0]["members"][0]["name"], "dead");
    assert_eq!(v["pools"][0]["members"][0]["up"], false);
    assert!(
        v["pools"][0]["members"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("refused")
    );

    // Now the live member goes too: nothing healthy is left.
    good.shutdown().await;
    let (head, _) = get_hello(p.addr, o.addr).await;
    assert_eq!(head.status, 502);
    let (head, body) = page(admin, "/readyz", "").await;
    assert_eq!(head.status, 503);
    assert!(body.contains("pool p has no healthy member"), "{body}");
    assert_eq!(page(admin, "/healthz", "").await.0.status, 200);
}

/// An upstream with an unusual password: it appears in no admin page and no log line.
#[tokio::test]
async fn no_credential_in_pages_or_logs() {
    let (up, _heads) =
        fake_upstream(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let secret = "Zq9-unusual-Pw";
    let (p, admin) = start(Config {
        router: via(&format!("http://carol:{secret}@{up}")),
        admin: admin(None),
        ..config_with(|s| {
            s.access_log = Format::Json;
            s.access_log_file = Some(log.clone());
        })
    })
    .await;
    let (head, _) = connect_error(p.addr, "origin.test:443").await;
    assert_eq!(head.status, 502);
    let (head, _) = send(
        p.addr,
        "GET http://origin.test/ HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(head.status, 502);
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("carol:{secret}"))
    };
    eventually("both requests recorded", || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() >= 2)
    })
    .await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged.lines().count(), 2, "{logged}");
    for path in ["/metrics", "/status", "/status.json", "/proxy.pac"] {
        let (_, body) = page(admin, path, "").await;
        assert!(
            !body.contains(secret) && !body.contains(&b64),
            "{path}: {body}"
        );
    }
    assert!(
        !logged.contains(secret) && !logged.contains(&b64),
        "{logged}"
    );
    let (_, status) = page(admin, "/status.json", "").await;
    assert!(
        status.contains("http_request_denied"),
        "recent errors listed: {status}"
    );
}

/// JSON access records: one object per request with the fields operators filter on; the file
/// is reopened after a rotation (SIGHUP calls the same reopen).
#[tokio::test]
async fn json_access_log_and_reopen() {
    let o = origin().await;
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let p = start_proxy(Config {
        ..config_with(|s| {
            s.access_log = Format::Json;
            s.access_log_file = Some(log.clone());
        })
    })
    .await;
    let (head, _) = send(
        p.addr,
        &format!(
            "POST http://{}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            o.addr
        ),
    )
    .await;
    assert_eq!(head.status, 200);
    let (t, head) = connect(p.addr, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    drop(t);
    let read = |path: std::path::PathBuf, n: usize| async move {
        for _ in 0..100 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() >= n {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {n} lines in {}", path.display());
    };
    let text = read(log.clone(), 2).await;
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let post = recs.iter().find(|r| r["method"] == "POST").unwrap();
    for field in [
        "ts",
        "client",
        "user",
        "protocol",
        "method",
        "target",
        "route",
        "member",
        "status",
        "error",
        "bytes_up",
        "bytes_down",
        "duration_ms",
        "dial_ms",
        "hops",
        "resolved",
    ] {
        assert!(post.get(field).is_some(), "{field} missing: {post}");
    }
    assert_eq!(
        (
            post["status"].as_u64(),
            post["bytes_up"].as_u64(),
            post["route"].as_str()
        ),
        (Some(200), Some(5), Some("direct"))
    );
    assert_eq!(post["bytes_down"].as_u64(), Some(5));
    let tunnel = recs.iter().find(|r| r["protocol"] == "connect").unwrap();
    assert!(tunnel["dial_ms"].as_f64().is_some(), "{tunnel}");

    std::fs::rename(&log, dir.path().join("access.json.1")).unwrap();
    // The reopen happens within the call: no wait needed before the next request.
    p.proxy.reload_rejected("rotation test");
    let (head, _) = get_hello(p.addr, o.addr).await;
    assert_eq!(head.status, 200);
    let fresh = read(log, 1).await;
    assert!(fresh.contains("\"method\":\"GET\""), "{fresh}");
}

/// The PAC file: bypass and direct rules answer DIRECT, the rest goes to `pac_proxy`; an admin
/// token keeps the pages closed to anyone without it.
#[tokio::test]
async fn pac_file_and_admin_token() {
    let text = "bypass = \"localhost\"\n[upstreams]\ncorp = \"http://127.0.0.1:9\"\n\
                [[rules]]\nmatch = { domains = [\"*.internal\"] }\nvia = \"direct\"\n[default]\nvia = \"corp\"\n";
    let (_p, admin) = start(Config {
        router: viaduct::config::parse(text, "t.toml").unwrap().router,
        admin: admin(Some("s3cr3t-token")),
        ..config()
    })
    .await;
    let (head, _) = page(admin, "/proxy.pac", "").await;
    assert_eq!(head.status, 401);
    assert!(head.get("www-authenticate").is_some());
    let (head, pac) = page(
        admin,
        "/proxy.pac",
        "Authorization: Bearer s3cr3t-token\r\n",
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.get("content-type"),
        Some("application/x-ns-proxy-autoconfig")
    );
    assert!(
        pac.contains("var proxy = \"PROXY proxy.test:8083\";"),
        "{pac}"
    );
    assert!(
        pac.contains("dnsDomainIs(host, \".internal\"))) return \"DIRECT\"; // rule 1"),
        "{pac}"
    );
    assert!(pac.contains("return proxy; // default"), "{pac}");

    // Hardening 2, finding 12: `pac_public` serves the PAC to browsers (which cannot send a
    // token), and nothing else.
    let (_p, public) = start(Config {
        admin: self::admin(Some("s3cr3t-token")).map(|a| AdminSettings {
            pac_public: true,
            ..a
        }),
        ..config()
    })
    .await;
    let admin = public;
    let (head, pac) = page(admin, "/proxy.pac", "").await;
    assert_eq!(head.status, 200);
    assert!(pac.contains("FindProxyForURL"), "{pac}");
    for path in ["/status", "/status.json", "/metrics"] {
        let (head, _) = page(admin, path, "").await;
        assert_eq!(head.status, 401, "{path}");
    }
}

/// Hardening 2, findings 12, 15 and 16: a URL's userinfo and secret query values reach no
/// access record and no status page; an origin inventing status codes does not create a
/// series per code; a 10 KB URI is logged cut to a bounded size.
#[tokio::test]
async fn records_and_series_are_bounded_and_free_of_url_secrets() {
    // An origin that answers the status its path names: `/s/799`.
    let origin = serve_tcp(|mut s| async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut got = 0;
        while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf[got..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
        let head = String::from_utf8_lossy(&buf[..got]);
        let code = head
            .split_once("/s/")
            .and_then(|(_, rest)| rest.get(..3))
            .unwrap_or("200")
            .to_owned();
        let _ = s
            .write_all(
                format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let (p, admin) = start(Config {
        admin: admin(None),
        ..config_with(|s| {
            s.access_log = Format::Json;
            s.access_log_file = Some(log.clone());
        })
    })
    .await;
    let secret = "Zq9-url-secret";
    // Userinfo in a request target is refused (400), and recorded without it.
    for (target, status) in [
        (format!("http://bob:{secret}@{origin}/s/200"), 400),
        (format!("http://{origin}/s/200?token={secret}&q=1"), 200),
    ] {
        let (head, _) = send(p.addr, &format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert_eq!(head.status, status, "{target}");
    }
    for code in 600..800 {
        let (head, _) = send(
            p.addr,
            &format!("GET http://{origin}/s/{code} HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
        .await;
        assert_eq!(head.status, code);
    }
    let long = "a".repeat(10_000);
    let (head, _) = send(
        p.addr,
        &format!("GET http://{origin}/s/200/{long} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_eq!(head.status, 200);
    eventually("every request recorded", || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() >= 203)
    })
    .await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains(secret), "{logged}");
    assert!(
        logged.contains("token=***") && logged.contains("***@"),
        "{logged}"
    );
    for line in logged.lines() {
        assert!(line.len() < 3 * 1024, "a record of {} bytes", line.len());
    }
    for path in ["/status", "/status.json"] {
        let (_, body) = page(admin, path, "").await;
        assert!(!body.contains(secret), "{path}: {body}");
    }
    let (_, m) = page(admin, "/metrics", "").await;
    let series = m
        .lines()
        .filter(|l| l.starts_with("viaduct_requests_total{"))
        .count();
    assert!(series <= 4, "{series} request series:\n{m}");
    assert!(
        m.contains("viaduct_requests_total{protocol=\"http\",class=\"other\",code=\"other\",route=\"direct\"} 200"),
        "{m}"
    );
}
