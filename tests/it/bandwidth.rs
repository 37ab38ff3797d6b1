//! Bandwidth and connection-rate limits over real sockets. Durations are asserted only as
//! lower bounds where a limit must hold (a slow machine only makes them longer) and as loose
//! upper bounds where a limit must *not* apply (many times the limited duration).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use viaduct::Config;
use viaduct::config::value::{Bandwidth, PerPeriod};

use crate::support::*;

const MB: u64 = 1_000_000;

/// Writes `n` bytes to every connection, then closes.
async fn source(n: usize) -> SocketAddr {
    serve_tcp(move |mut s| async move {
        let chunk = vec![7u8; 64 * 1024];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len());
            if s.write_all(&chunk[..k]).await.is_err() {
                return;
            }
            left -= k;
        }
        let _ = s.shutdown().await;
    })
    .await
}

/// Reads everything, then answers how many bytes it got.
async fn sink() -> SocketAddr {
    serve_tcp(|mut s| async move {
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        let _ = s.write_all(got.to_string().as_bytes()).await;
    })
    .await
}

/// Downloads everything `source` sends through a tunnel as `creds`; returns the time taken.
async fn download(
    proxy: SocketAddr,
    origin: SocketAddr,
    creds: Option<&str>,
    n: usize,
) -> Duration {
    let (mut s, head) = connect_as(proxy, &origin.to_string(), creds).await;
    assert_eq!(head.status, 200, "{head:?}");
    let started = Instant::now();
    let mut got = Vec::with_capacity(n);
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), n);
    started.elapsed()
}

fn limited(per_user: Option<u64>, per_ip: Option<u64>) -> Config {
    let mut cfg = config();
    cfg.auth = Some(users(&[("alice", "a"), ("bob", "b")]));
    cfg.limits.bandwidth_per_user = per_user.map(Bandwidth);
    cfg.limits.bandwidth_per_ip = per_ip.map(Bandwidth);
    cfg
}

/// 1 MB/s per user: a 2 MB download and a 2 MB upload each take at least ~1.5 s (the burst
/// allows 250 KB), every byte arrives, and a user with no cap of its own is not slowed.
#[tokio::test]
async fn a_user_gets_its_rate_each_way_and_an_unlimited_user_does_not_wait() {
    let mut cfg = limited(Some(MB), None);
    cfg.limits.user_bandwidth = HashMap::from([("bob".to_owned(), None)]);
    let proxy = start_proxy(cfg).await;
    let (src, dst) = (source(2_000_000).await, sink().await);

    let down = download(proxy.addr, src, Some("alice:a"), 2_000_000).await;
    assert!(
        down >= Duration::from_millis(1300),
        "download took {down:?}"
    );

    let (mut s, head) = connect_as(proxy.addr, &dst.to_string(), Some("alice:a")).await;
    assert_eq!(head.status, 200);
    let started = Instant::now();
    s.write_all(&vec![1u8; 2_000_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "2000000");
    let up = started.elapsed();
    assert!(up >= Duration::from_millis(1300), "upload took {up:?}");

    // Bob while alice saturates her cap: 8 MB would take 8 s at her rate.
    let alice = tokio::spawn(download(proxy.addr, src, Some("alice:a"), 2_000_000));
    let big = source(8_000_000).await;
    let bob = download(proxy.addr, big, Some("bob:b"), 8_000_000).await;
    assert!(bob < Duration::from_secs(4), "bob took {bob:?}");
    alice.await.unwrap();
    // Limited or not, TCP-to-TCP tunnels stay on splice(2) (counted as each one closes).
    eventually("four zero-copy tunnels", || async {
        proxy.proxy.zero_copy_tunnels() == 4
    })
    .await;
    assert_eq!(proxy.proxy.zero_copy_tunnels(), 4);
}

/// Two tunnels of one user share its rate, fairly: together they take as long as one transfer
/// of both sizes, and neither finishes far ahead of the other.
#[tokio::test]
async fn a_users_tunnels_share_its_rate_fairly() {
    let proxy = start_proxy(limited(Some(MB), None)).await;
    let src = source(1_000_000).await;
    let started = Instant::now();
    let a = tokio::spawn(download(proxy.addr, src, Some("alice:a"), 1_000_000));
    let b = tokio::spawn(download(proxy.addr, src, Some("alice:a"), 1_000_000));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let total = started.elapsed();
    assert!(
        total >= Duration::from_millis(1300),
        "2 MB at 1 MB/s took {total:?}"
    );
    let (fast, slow) = if a < b { (a, b) } else { (b, a) };
    assert!(
        fast.as_secs_f64() >= 0.7 * slow.as_secs_f64(),
        "unfair: {fast:?} vs {slow:?}"
    );
}

/// Per client address, without `[auth]`: plain HTTP bodies are limited too, and each
/// address has its own rate: two addresses downloading at once each get theirs.
#[tokio::test]
async fn per_ip_limits_cover_plain_requests_and_each_address_has_its_own() {
    let mut cfg = config();
    cfg.limits.bandwidth_per_ip = Some(Bandwidth(MB));
    let proxy = start_proxy(cfg).await;
    let origin = origin().await;
    let get = move |from: [u8; 4]| async move {
        let mut s = connect_from(from, proxy.addr).await;
        let started = Instant::now();
        let request = format!(
            "GET http://{}/big/2000000 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            origin.addr, origin.addr
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        let body = read_body(&mut s, &head).await;
        assert_eq!((head.status, body.len()), (200, 2_000_000));
        started.elapsed()
    };
    let (a, b) = tokio::join!(get([127, 0, 0, 1]), get([127, 0, 0, 2]));
    for took in [a, b] {
        // Own rate: ~1.75 s each; one shared rate would take ~3.75 s for both.
        assert!(took >= Duration::from_millis(1300), "took {took:?}");
        assert!(took < Duration::from_millis(3200), "took {took:?}");
    }
}

/// `new_connections_per_ip = "5/s"`: the burst passes, the next connection gets 429 with
/// `Retry-After` and `Proxy-Status`, another address is unaffected, and after the wait the
/// first address gets in again.
#[tokio::test]
async fn new_connections_past_the_rate_get_429_with_retry_after() {
    let mut cfg = config();
    cfg.limits.new_connections_per_ip = Some(PerPeriod {
        count: 5,
        per: Duration::from_secs(1),
    });
    let proxy = start_proxy(cfg).await;
    let echo = echo_server().await;
    let mut open = Vec::new();
    for _ in 0..5 {
        let (s, head) = connect(proxy.addr, &echo.to_string()).await;
        assert_eq!(head.status, 200);
        open.push(s);
    }
    let (head, body) = connect_error(proxy.addr, &echo.to_string()).await;
    assert_error(&head, &body, 429, "connection_limit_reached").await;
    assert_eq!(head.get("retry-after"), Some("1"), "{head:?}");
    let mut other = connect_from([127, 0, 0, 2], proxy.addr).await;
    other
        .write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_head(&mut other).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_s, head) = connect(proxy.addr, &echo.to_string()).await;
    assert_eq!(head.status, 200, "refilled after Retry-After");
}

/// The file: bandwidths and rates parse with units, bad ones name the field, and a per-user
/// limit without `[auth]` is refused with the reason.
#[test]
fn limits_in_the_file() {
    let text = "[limits]\nbandwidth_per_ip = \"10MB/s\"\nnew_connections_per_ip = \"50/s\"\n[limits.user_bandwidth]\nbob = \"unlimited\"\ncarol = \"100Mbit/s\"\n";
    let file = viaduct::config::parse(text, "t.toml").unwrap();
    assert_eq!(file.limits.bandwidth_per_ip, Some(Bandwidth(10 * MB)));
    assert_eq!(
        file.limits.new_connections_per_ip,
        Some(PerPeriod {
            count: 50,
            per: Duration::from_secs(1)
        })
    );
    assert_eq!(file.limits.user_bandwidth["bob"], None);
    assert_eq!(
        file.limits.user_bandwidth["carol"],
        Some(Bandwidth(12_500_000))
    );
    for (bad, field) in [
        (
            "[limits]\nbandwidth_per_ip = \"fast\"\n",
            "limits.bandwidth_per_ip",
        ),
        (
            "[limits]\nnew_connections_per_ip = \"0/s\"\n",
            "limits.new_connections_per_ip",
        ),
        (
            "[limits.user_bandwidth]\nbob = \"lots\"\n",
            "limits.user_bandwidth.bob",
        ),
    ] {
        let e = viaduct::config::parse(bad, "t.toml").unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.toml");
    std::fs::write(&path, "[limits]\nbandwidth_per_user = \"1MB/s\"\n").unwrap();
    let e = viaduct::config::runtime::load(Some(&path), &viaduct::RunFlags::default(), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bandwidth_per_user") && e.contains("[auth]"),
        "{e}"
    );
}
