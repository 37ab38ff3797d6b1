//! Hostile and broken clients and peers: limits, slowloris, connection caps, faults mid-stream.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use viaduct::{Config, Limits};

use crate::support::*;

async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// An oversized head or too many header fields: 431, then the connection is closed.
#[tokio::test]
async fn oversized_heads_are_431_and_closed() {
    let o = origin().await;
    let limits = Limits {
        max_header_bytes: 16 * 1024,
        max_headers: 20,
        ..Limits::default()
    };
    let p = start_proxy(Config { limits, ..config() }).await;
    let big = format!(
        "GET http://{}/hello HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        o.addr,
        "a".repeat(20_000)
    );
    let many: String = (0..30).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!(
        "GET http://{}/hello HTTP/1.1\r\nHost: x\r\n{many}\r\n",
        o.addr
    );
    for req in [big, many] {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        let _ = s.write_all(req.as_bytes()).await;
        let text = read_all(&mut s).await;
        assert!(
            text.starts_with("HTTP/1.1 431"),
            "{}",
            &text[..text.len().min(200)]
        );
    }
    // And a normal request still works.
    let (head, _) = get_hello(p.addr, o.addr).await;
    assert_eq!(head.status, 200);
}

/// Slowloris: 1,000 clients dribbling their heads do not delay a well-behaved one, and each
/// gets 408 with Proxy-Status when the header-read timeout passes.
#[tokio::test]
async fn slowloris_clients_get_408_and_do_not_delay_others() {
    let o = origin().await;
    let limits = Limits {
        header_read_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let p = start_proxy(Config { limits, ..config() }).await;
    let mut slow = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"GET http://example.test/ HTTP/1.1\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    let (head, body) = get_hello(p.addr, o.addr).await;
    assert_eq!((head.status, body.as_slice()), (200, b"hello\n".as_slice()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served while the slow heads were still pending"
    );
    for s in slow.iter_mut().step_by(50) {
        let _ = s.write_all(b"a").await;
    }
    for s in slow.iter_mut().step_by(25) {
        let text = read_all(s).await;
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text}"
        );
        assert!(text.contains("Proxy-Status: viaduct; error=http_request_error; details=\"no request head within 2s\""), "{text}");
    }
}

/// Past the connection caps, new connections get 503 connection_limit_reached and are closed;
/// closing one makes room again.
#[tokio::test]
async fn connection_caps() {
    let o = origin().await;
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let p = start_proxy(Config { limits, ..config() }).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(p.addr).await.unwrap());
    }
    // The accept loop takes connections in order: the held ones count before this one.
    let mut extra = TcpStream::connect(p.addr).await.unwrap();
    let text = read_all(&mut extra).await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains(
            "error=connection_limit_reached; details=\"connection limit reached (max_connections)\""
        ),
        "{text}"
    );
    drop(held.pop());
    let origin = o.addr;
    eventually("a closed connection frees its place", || async move {
        get_hello(p.addr, origin).await.0.status == 200
    })
    .await;

    let limits = Limits {
        max_connections_per_ip: 2,
        ..Limits::default()
    };
    let p = start_proxy(Config { limits, ..config() }).await;
    let _a = TcpStream::connect(p.addr).await.unwrap();
    let _b = TcpStream::connect(p.addr).await.unwrap();
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    let text = read_all(&mut c).await;
    assert!(
        text.contains("details=\"connection limit reached (max_connections_per_ip)\""),
        "{text}"
    );
}

/// The client resets mid-download: the origin's connection is closed promptly and no tunnel
/// or task is left behind.
#[tokio::test]
async fn client_reset_mid_download_closes_the_origin_side() {
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let origin = serve_tcp(move |mut s| {
        let closed_tx = closed_tx.clone();
        async move {
            let chunk = vec![b'x'; 64 * 1024];
            // Stream until the proxy side goes away.
            while s.write_all(&chunk).await.is_ok() {}
            let _ = closed_tx.send(());
        }
    })
    .await;
    let p = start_proxy(config()).await;
    let (mut s, head) = connect(p.addr, &origin.to_string()).await;
    assert_eq!(head.status, 200);
    let mut buf = vec![0; 256 * 1024];
    s.read_exact(&mut buf).await.unwrap();
    #[allow(deprecated)] // SO_LINGER 0 is exactly what makes drop send a reset
    s.set_linger(Some(Duration::ZERO)).unwrap();
    drop(s); // RST
    tokio::time::timeout(Duration::from_secs(5), closed_rx.recv())
        .await
        .expect("origin side closed")
        .unwrap();
    crate::connect::assert_no_tunnels(&p).await;
}

/// An upstream that sends a never-ending response head: 502, never a hang.
#[tokio::test]
async fn never_ending_upstream_head_is_502() {
    let up = serve_tcp(|mut s| async move {
        let mut buf = [0; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let line =
            b"X-Endless: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        while s.write_all(line).await.is_ok() {}
    })
    .await;
    let p = start_proxy(Config {
        router: via(&format!("http://{up}")),
        ..config()
    })
    .await;
    let (head, body) = connect_error(p.addr, "origin.test:443").await;
    assert_error(&head, &body, 502, "http_response_header_section_size").await;
}

/// The upstream resets a tunnel mid-stream: the client sees the bytes sent before, then its
/// connection closes; nothing is left behind.
#[tokio::test]
async fn upstream_reset_mid_tunnel_closes_the_client() {
    let up = serve_tcp(|mut s| async move {
        let mut buf = [0; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\npartial")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        #[allow(deprecated)] // SO_LINGER 0 is exactly what makes drop send a reset
        let _ = s.set_linger(Some(Duration::ZERO));
    })
    .await;
    let p = start_proxy(Config {
        router: via(&format!("http://{up}")),
        ..config()
    })
    .await;
    let (mut s, head) = connect(p.addr, "origin.test:443").await;
    assert_eq!(head.status, 200);
    let text = read_all(&mut s).await;
    assert_eq!(text, "partial");
    crate::connect::assert_no_tunnels(&p).await;
}

/// The client resets in the middle of an upload: the origin's connection is closed promptly.
#[tokio::test]
async fn client_reset_mid_upload_closes_the_origin_side() {
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let origin = serve_tcp(move |mut s| {
        let closed_tx = closed_tx.clone();
        async move {
            let mut buf = vec![0; 64 * 1024];
            // Read the never-complete upload until the proxy side goes away.
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            let _ = closed_tx.send(());
        }
    })
    .await;
    let p = start_proxy(config()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let head =
        format!("POST http://{origin}/up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'u'; 1 << 20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    #[allow(deprecated)] // SO_LINGER 0 is exactly what makes drop send a reset
    s.set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
    tokio::time::timeout(Duration::from_secs(5), closed_rx.recv())
        .await
        .expect("origin side closed")
        .unwrap();
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Out of descriptors (EMFILE, in a child whose RLIMIT_NOFILE is 40): the listener neither
/// dies nor spins a core, logs the failure, and serves again once descriptors are free.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn descriptor_exhaustion_backs_off_and_recovers() {
    let o = origin().await;
    let proxy = free_addr();
    let log = tempfile::NamedTempFile::new().unwrap();
    let cmd = format!(
        "ulimit -n 40 && exec {} --listen {proxy}",
        env!("CARGO_BIN_EXE_viaduct")
    );
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &cmd])
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(proxy).await;
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(proxy).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().unwrap();
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 100,
        "{used} clock ticks of CPU in 2 s while out of descriptors: spinning"
    );
    assert!(
        std::fs::read_to_string(log.path())
            .unwrap()
            .contains("accept failed")
    );
    drop(held);
    let origin = o.addr;
    eventually("accepting again once descriptors are free", || async move {
        matches!(
            tokio::time::timeout(Duration::from_secs(2), get_hello(proxy, origin)).await,
            Ok((head, body)) if head.status == 200 && body == b"hello\n"
        )
    })
    .await;
    child.kill().await.unwrap();
}

/// An origin (or upstream) answering a plain request with garbage, or with a head that never
/// ends: 502, never a hang.
#[tokio::test]
async fn malformed_and_endless_response_heads_are_502() {
    let garbage = serve_tcp(|mut s| async move {
        let mut buf = [0; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
    })
    .await;
    let endless = serve_tcp(|mut s| async move {
        let mut buf = [0; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let line = b"X-Endless: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        while s.write_all(line).await.is_ok() {}
    })
    .await;
    let p = start_proxy(config()).await;
    let (head, body) = send(
        p.addr,
        &format!("GET http://{garbage}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_error(&head, &body, 502, "http_protocol_error").await;
    let (head, body) = send(
        p.addr,
        &format!("GET http://{endless}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_error(&head, &body, 502, "http_response_header_section_size").await;
}

/// Tunnels count toward the connection limit for their whole life, not only until the
/// CONNECT is answered.
#[tokio::test]
async fn tunnels_count_toward_the_connection_limit() {
    let echo = echo_server().await;
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let p = start_proxy(Config { limits, ..config() }).await;
    let (_a, head) = connect(p.addr, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    let (_b, head) = connect(p.addr, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    let text = read_all(&mut c).await;
    assert!(text.contains("error=connection_limit_reached"), "{text}");
    drop(_a);
    crate::connect::assert_no_tunnels_below(&p, 2).await;
    let (_c, head) = connect(p.addr, &echo.to_string()).await;
    assert_eq!(head.status, 200, "room again once a tunnel closed");
}

/// An origin that takes the request and never answers: 504 http_response_timeout after the
/// response timeout, never a hang, and the connection to the origin is closed, not left behind.
#[tokio::test]
async fn silent_origin_is_504() {
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let silent = serve_tcp(move |mut s| {
        let closed_tx = closed_tx.clone();
        async move {
            let _ = s.read_to_end(&mut Vec::new()).await;
            let _ = closed_tx.send(());
        }
    })
    .await;
    let p = start_proxy(Config {
        ..config_with(|s| s.response_timeout = Duration::from_millis(300))
    })
    .await;
    let (head, body) = send(
        p.addr,
        &format!("GET http://{silent}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_error(&head, &body, 504, "http_response_timeout").await;
    assert!(String::from_utf8_lossy(&body).contains(&format!(
        "target {silent} sent no response head within 300ms"
    )));
    tokio::time::timeout(Duration::from_secs(5), closed_rx.recv())
        .await
        .expect("origin connection closed after the timeout")
        .unwrap();
}
