//! Graceful shutdown: stop accepting, let work finish within the grace period, then cut.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use viaduct::Config;

use crate::support::*;

/// After shutdown the listener is closed and an open tunnel is cut once the grace period ends.
#[tokio::test]
async fn shutdown_drains_then_cuts_tunnels() {
    let echo = echo_server().await;
    let p = start_proxy(Config {
        ..config_with(|s| s.shutdown_grace = Duration::from_millis(300))
    })
    .await;
    let addr = p.addr;
    let (mut s, head) = connect(addr, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), p.shutdown())
        .await
        .expect("serve returned");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "grace period honoured"
    );
    let mut buf = [0; 1];
    assert_eq!(s.read(&mut buf).await.unwrap(), 0, "tunnel closed");
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}
