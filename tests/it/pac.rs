//! Proxy auto-config consumed: a PAC script (ES2015+) decides what no rule matches, over real
//! sockets: DIRECT, an HTTP upstream, failover past a dead entry, rules winning over the PAC,
//! DNS helpers on viaduct's (injected) resolver, and hostile scripts cut off while other
//! requests are served.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use viaduct::Config;
use viaduct::routing::autoconfig::PacSource;

use crate::support::*;

fn pac(script: String) -> Option<PacSource> {
    Some(PacSource::script("test.pac", &script))
}

/// Echoes through a tunnel opened by CONNECT to `target`.
async fn tunnel_echoes(proxy: std::net::SocketAddr, target: &str) -> u16 {
    let (mut s, head) = connect(proxy, target).await;
    if head.status == 200 {
        s.write_all(b"ping").await.unwrap();
        let mut b = [0; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
    }
    head.status
}

/// The script's answers route tunnels and plain requests: names under `.direct.test` go
/// DIRECT (resolved by viaduct), `via.test` through an HTTP upstream (a viaduct that sees
/// the request), `failover.test` past a dead proxy to the live one; `dnsResolve` and `isInNet`
/// use viaduct's resolver; a local rule wins over the script.
#[tokio::test]
async fn the_script_routes_what_no_rule_matches() {
    let echo = echo_server().await;
    // An HTTP upstream that records each CONNECT, answers 200 and then echoes.
    let (up, mut up_heads) = fake_upstream(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
    let dead = free_addr();
    let script = format!(
        r#"
        const up = "PROXY {up}";
        let directs = [".direct.test"];
        function FindProxyForURL(url, host) {{
            if (directs.some((d) => dnsDomainIs(host, d))) return "DIRECT";
            if (host === "via.test") return `${{up}}; DIRECT`;
            if (host === "failover.test") return "PROXY {dead}; " + up;
            if (isInNet(dnsResolve(host) || "0.0.0.0", "127.0.0.0", "255.0.0.0")) return "DIRECT";
            return "PROXY {dead}";
        }}"#,
        up = up,
        dead = dead
    );
    let resolver = TestResolver::default()
        .with("a.direct.test", echo)
        .with("via.test", echo)
        .with("failover.test", echo)
        .with("resolves.test", echo)
        .with("elsewhere.test", echo);
    let p = start_proxy_with(
        Config {
            pac: pac(script),
            router: viaduct::config::parse(
                "[[rules]]\nmatch = { domains = [\"elsewhere.test\"] }\nvia = \"direct\"\n",
                "test.toml",
            )
            .unwrap()
            .router,
            ..config()
        },
        Arc::new(resolver),
    )
    .await;
    let port = echo.port();
    assert_eq!(
        tunnel_echoes(p.addr, &format!("a.direct.test:{port}")).await,
        200
    );
    assert_eq!(
        tunnel_echoes(p.addr, &format!("via.test:{port}")).await,
        200
    );
    assert_eq!(
        tunnel_echoes(p.addr, &format!("failover.test:{port}")).await,
        200
    );
    // dnsResolve through the injected resolver (the name exists nowhere else).
    assert_eq!(
        tunnel_echoes(p.addr, &format!("resolves.test:{port}")).await,
        200
    );
    // The local rule wins: the script would send it to a dead proxy.
    assert_eq!(
        tunnel_echoes(p.addr, &format!("elsewhere.test:{port}")).await,
        200
    );
    // A name the script sends only to the dead proxy: refused, named.
    let (head, body) = send(
        p.addr,
        "CONNECT nowhere.test:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(head.status, 502, "{}", String::from_utf8_lossy(&body));
    // The upstream saw the tunnels the script sent its way, and only those.
    let first = up_heads.recv().await.unwrap();
    let second = up_heads.recv().await.unwrap();
    assert!(
        first.starts_with(&format!("CONNECT via.test:{port} ")),
        "{first}"
    );
    assert!(
        second.starts_with(&format!("CONNECT failover.test:{port} ")),
        "{second}"
    );
    assert!(up_heads.try_recv().is_err());

    // A plain request through the PAC-chosen upstream goes in absolute-form; the script sees
    // `http://` URLs for plain requests.
    let (plain_up, mut plain_heads) =
        fake_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n").await;
    let plain = format!(
        "function FindProxyForURL(url, host) {{ return url.startsWith('http://') ? 'PROXY {plain_up}' : 'DIRECT'; }}"
    );
    let p2 = start_proxy(Config {
        pac: pac(plain),
        ..config()
    })
    .await;
    let (head, body) = send(
        p2.addr,
        "GET http://plain.test:8080/x HTTP/1.1\r\nHost: plain.test:8080\r\n\r\n",
    )
    .await;
    assert_eq!((head.status, body.as_slice()), (200, b"ok\n".as_slice()));
    let seen = plain_heads.recv().await.unwrap();
    assert!(
        seen.starts_with("GET http://plain.test:8080/x HTTP/1.1"),
        "{seen}"
    );
}

/// Hostile scripts: a loop and a huge allocation for some hosts are cut off (502,
/// `proxy_internal_error`, the URL and the limit in words) while every other request is
/// answered at once.
#[tokio::test]
async fn hostile_scripts_are_cut_off_and_others_served() {
    let echo = echo_server().await;
    let script = r#"
        function FindProxyForURL(url, host) {
            if (host === "loop.test") { while (true) {} }
            if (host === "hog.test") { return "x".repeat(64 * 1024 * 1024); }
            if (host === "throws.test") { throw new Error("nope"); }
            if (host === "garbage.test") { return "WHATEVER"; }
            return "DIRECT";
        }"#;
    let p = start_proxy_with(
        Config {
            pac: pac(script.into()),
            ..config()
        },
        Arc::new(TestResolver::default().with("ok.test", echo)),
    )
    .await;
    // A runaway allocation alone: the memory limit stops it.
    let (head, _) = send(p.addr, "CONNECT hog.test:443 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let ps = head.get("proxy-status").unwrap();
    assert!(
        head.status == 502 && ps.contains("threw out of memory"),
        "{ps}"
    );
    let cases = [
        ("loop.test", "did not return within 100 ms"),
        ("throws.test", "threw nope"),
        ("garbage.test", "names no usable entry"),
        ("loop.test", "did not return within 100 ms"),
    ];
    // Two loops at once hold both engine instances for at most their deadline; the good
    // request behind them still completes.
    let mut tasks = Vec::new();
    for (host, _) in cases {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            send(
                addr,
                &format!("CONNECT {host}:443 HTTP/1.1\r\nHost: x\r\n\r\n"),
            )
            .await
        }));
    }
    let status = tunnel_echoes(p.addr, &format!("ok.test:{}", echo.port())).await;
    assert_eq!(status, 200);
    for (task, (host, words)) in tasks.into_iter().zip(cases) {
        let (head, _) = task.await.unwrap();
        assert_eq!(head.status, 502, "{host}");
        let ps = head.get("proxy-status").unwrap();
        assert!(
            ps.starts_with("viaduct; error=proxy_internal_error; details=\"PAC FindProxyForURL(")
                && ps.contains(&format!("https://{host}/"))
                && ps.contains(words),
            "{host}: {ps}"
        );
    }
    // The engine still answers after all that.
    assert_eq!(
        tunnel_echoes(p.addr, &format!("ok.test:{}", echo.port())).await,
        200
    );
}

/// A PAC file that does not load (missing, a syntax error, throwing at load, no
/// FindProxyForURL) stops the start with exit 64 and a message naming it; a config file's
/// relative `pac` path is taken from the file's directory.
#[tokio::test]
async fn a_broken_pac_is_a_configuration_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("missing.pac", None, "No such file"),
        ("syntax.pac", Some("var x = ;"), "does not load"),
        ("throws.pac", Some("throw new Error('boom');"), "boom"),
        (
            "nofn.pac",
            Some("var FindProxy = 1;"),
            "defines no FindProxyForURL",
        ),
    ];
    for (name, body, words) in cases {
        let path = dir.path().join(name);
        if let Some(b) = body {
            std::fs::write(&path, b).unwrap();
        }
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_viaduct"))
            .args(["--listen", "127.0.0.1:0", "--pac", path.to_str().unwrap()])
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {err}");
        assert!(err.contains(name) && err.contains(words), "{name}: {err}");
    }
    // From a config file: `pac` relative to the file's directory; `viaduct route` uses it.
    std::fs::write(
        dir.path().join("corp.pac"),
        "function FindProxyForURL(u, h) { return h === 'x.test' ? 'PROXY 127.0.0.1:9; DIRECT' : 'DIRECT'; }",
    )
    .unwrap();
    let config = dir.path().join("viaduct.toml");
    std::fs::write(&config, "pac = \"corp.pac\"\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args([
            "route",
            "https://x.test/",
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("pac:     PROXY 127.0.0.1:9; DIRECT -> pool pac (failover: http proxy 127.0.0.1:9, direct)"),
        "{text}"
    );
}

/// A PAC URL that cannot be fetched at start does not stop the start: requests that need it
/// get 502 naming it; it is fetched again with backoff and, once it loads, routes requests;
/// a refresh picks up a changed script, and a broken one keeps the script in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pac_url_loads_when_it_can_and_refreshes() {
    let echo = echo_server().await;
    let served = Arc::new(std::sync::Mutex::new(String::from(
        "function FindProxyForURL(u, h) { return 'DIRECT'; }",
    )));
    let addr = free_addr();
    let url = format!("http://{addr}/corp.pac");
    let fetch_error = viaduct::routing::autoconfig::fetch(
        &url,
        std::time::Duration::from_secs(1),
        &Default::default(),
    )
    .unwrap_err();
    let source = PacSource {
        fetch_error: Some(fetch_error),
        refresh: std::time::Duration::from_millis(300),
        ..PacSource::script(&url, "")
    };
    let p = start_proxy_with(
        Config {
            pac: Some(PacSource {
                script: None,
                ..source
            }),
            ..config()
        },
        Arc::new(TestResolver::default().with("ok.test", echo)),
    )
    .await;
    let target = format!("ok.test:{}", echo.port());
    let (head, _) = send(
        p.addr,
        &format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_eq!(head.status, 502);
    let ps = head.get("proxy-status").unwrap();
    assert!(
        ps.contains(&format!("PAC {url} is not loaded: ")) && ps.contains("(retrying)"),
        "{ps}"
    );
    // The server comes up: the script loads on a later attempt and routes the request.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let body = Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let text = body.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut buf = [0; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.0 200 OK\r\n\r\n{text}").as_bytes())
                    .await;
            });
        }
    });
    eventually("the PAC loads and routes", || async {
        tunnel_echoes(p.addr, &target).await == 200
    })
    .await;
    // A changed script is picked up by the refresh: the host now goes to a dead proxy.
    let dead = free_addr();
    *served.lock().unwrap() =
        format!("function FindProxyForURL(u, h) {{ return 'PROXY {dead}'; }}");
    // (connect, not send: an open tunnel has no end to read to)
    eventually("the refreshed PAC is used", || async {
        connect(p.addr, &target).await.1.status == 502
    })
    .await;
    // A broken script at the next refresh: the one in force stays. Wait for that refresh to
    // have failed (its counter), not for a fixed time.
    let handle = p.proxy.router().pac.clone().unwrap();
    let failures = |h: &viaduct::routing::autoconfig::PacHandle| {
        h.stats
            .load_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = failures(&handle);
    *served.lock().unwrap() = "this is not javascript (".into();
    eventually("the broken script is fetched and refused", || async {
        failures(&handle) > before
    })
    .await;
    assert!(handle.loaded());
    let (_, head) = connect(p.addr, &target).await;
    // Still the last good script: its dead proxy (refused, or ejected by now), not a PAC error.
    assert_eq!(head.status, 502);
    let ps = head.get("proxy-status").unwrap();
    assert!(
        !ps.contains("proxy_internal_error")
            && (ps.contains("connection_refused") || ps.contains("pool pac has no healthy member")),
        "{ps}"
    );
}

/// `/metrics` counts PAC evaluations, cache hits and failures; `/status.json` and `/status`
/// show the script's source and age.
#[tokio::test]
async fn metrics_and_status_show_the_pac() {
    let echo = echo_server().await;
    let script =
        "function FindProxyForURL(u, h) { if (h === 'bad.test') throw 1; return 'DIRECT'; }";
    let p = start_proxy_with(
        Config {
            pac: pac(script.into()),
            admin: Some(viaduct::config::runtime::AdminSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                token: None,
                allow: Vec::new(),
                pac_proxy: None,
                pac_public: false,
            }),
            ..config()
        },
        Arc::new(TestResolver::default().with("ok.test", echo)),
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    assert!(p.proxy.spawn_admin(listener));
    let target = format!("ok.test:{}", echo.port());
    assert_eq!(tunnel_echoes(p.addr, &target).await, 200);
    assert_eq!(tunnel_echoes(p.addr, &target).await, 200);
    let (_, head) = connect(p.addr, "bad.test:443").await;
    assert_eq!(head.status, 502);
    let get = |path: &'static str| async move {
        let (_, body) = send(
            admin,
            &format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        )
        .await;
        String::from_utf8(body).unwrap()
    };
    let metrics = get("/metrics").await;
    for line in [
        "viaduct_pac_loaded 1",
        "viaduct_pac_evaluations_total 2",
        "viaduct_pac_evaluation_failures_total 1",
        "viaduct_pac_cache_hits_total 1",
        "viaduct_pac_load_failures_total 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }
    let status: serde_json::Value = serde_json::from_str(&get("/status.json").await).unwrap();
    assert_eq!(status["pac"]["source"], "test.pac");
    assert_eq!(status["pac"]["loaded"], true);
    assert!(status["pac"]["age_seconds"].as_u64().is_some());
    assert!(
        get("/status")
            .await
            .contains("<h2>PAC</h2><p>test.pac &mdash; loaded")
    );
}

/// A PAC over `https://` (the server's certificate checked as an upstream's: trusted here
/// through `--upstream-ca`, refused in words otherwise), and `--pac system` taking the
/// desktop's `auto_proxy`.
#[tokio::test]
async fn pac_over_https_and_from_the_desktop() {
    use viaduct::routing::autoconfig::fetch;
    use viaduct::upstream::TlsOptions;
    let body = "function FindProxyForURL(u, h) { return 'PROXY 127.0.0.1:9; DIRECT'; }";
    let plain = serve_tcp(move |mut s| async move {
        let mut buf = [0; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(format!("HTTP/1.0 200 OK\r\n\r\n{body}").as_bytes())
            .await;
        let _ = s.shutdown().await;
    })
    .await;
    let cert = test_cert("localhost");
    let front = tls_front(&cert, plain).await;
    let url = format!("https://localhost:{}/corp.pac", front.port());
    let trusted = TlsOptions {
        ca_files: vec![cert.pem_file.path().to_path_buf()],
        insecure: false,
    };
    let wait = std::time::Duration::from_secs(5);
    let (u, t) = (url.clone(), trusted.clone());
    let script = tokio::task::spawn_blocking(move || fetch(&u, wait, &t))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(script, body);
    let u = url.clone();
    let err = tokio::task::spawn_blocking(move || fetch(&u, wait, &TlsOptions::default()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.starts_with(&format!("PAC {url}: "))
            && err.contains("certificate is not signed by a trusted CA"),
        "{err}"
    );

    // --pac system: the desktop's auto_proxy.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("desktop.pac");
    std::fs::write(&file, body).unwrap();
    let route = |auto: Option<&std::path::Path>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_viaduct"));
        cmd.args(["route", "https://x.test/", "--pac", "system"])
            .env_remove("auto_proxy")
            .env_remove("AUTO_PROXY");
        if let Some(a) = auto {
            cmd.env("auto_proxy", a);
        }
        async move { cmd.output().await.unwrap() }
    };
    let out = route(Some(&file)).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("pac:     PROXY 127.0.0.1:9; DIRECT"),
        "{text}"
    );
    assert!(
        text.contains(&format!("matched: pac ({})", file.display())),
        "{text}"
    );
}

/// `--pac auto`: WPAD finds `wpad.<domain>` for a search domain (walking up), through
/// viaduct's (injected) resolver, fetches `/wpad.dat` and routes by it; `/status` names what it
/// found. No real DNS is asked: the resolver knows only `wpad.corp.test`.
#[tokio::test]
async fn wpad_discovers_the_script() {
    let echo = echo_server().await;
    let body = "function FindProxyForURL(u, h) { return h === 'ok.test' ? 'DIRECT' : 'PROXY 127.0.0.1:9'; }";
    let wpad = serve_tcp(move |mut s| async move {
        let mut buf = [0; 1024];
        let n = s.read(&mut buf).await.unwrap_or(0);
        let asked = String::from_utf8_lossy(&buf[..n]).into_owned();
        let reply = if asked.starts_with("GET /wpad.dat HTTP/1.0\r\nHost: wpad.corp.test:") {
            format!("HTTP/1.0 200 OK\r\n\r\n{body}")
        } else {
            "HTTP/1.0 404 Not Found\r\n\r\n".to_owned()
        };
        let _ = s.write_all(reply.as_bytes()).await;
    })
    .await;
    let source = PacSource {
        search: Some(vec!["eng.corp.test".into()]),
        wpad_port: wpad.port(),
        ..PacSource::auto()
    };
    let p = start_proxy_with(
        Config {
            pac: Some(source),
            ..config()
        },
        Arc::new(
            TestResolver::default()
                .with("ok.test", echo)
                .with("wpad.corp.test", wpad),
        ),
    )
    .await;
    let target = format!("ok.test:{}", echo.port());
    eventually("WPAD finds the script", || async {
        tunnel_echoes(p.addr, &target).await == 200
    })
    .await;
    let pac = p.proxy.router().pac.clone().unwrap();
    assert_eq!(
        pac.origin(),
        format!("auto (http://wpad.corp.test:{}/wpad.dat)", wpad.port())
    );
}
