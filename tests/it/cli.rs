//! The `viaduct` binary: flags, signals, exit codes and what it logs.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("viaduct never listened on {port}");
}

/// Through an upstream with credentials, at debug level: the tunnel works, SIGTERM shuts the
/// binary down cleanly (exit 0), and neither the password nor its Basic encoding is logged.
#[tokio::test]
async fn binary_tunnels_logs_no_secrets_and_stops_on_sigterm() {
    let (up, mut heads) = fake_upstream(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--shutdown-grace",
            "200ms",
        ])
        .args(["--upstream", &format!("http://alice:s3cret@{up}")])
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(port).await;

    let (mut s, head) = connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "origin.test:443",
    )
    .await;
    assert_eq!(head.status, 200);
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // alice:s3cret
    assert!(
        heads
            .recv()
            .await
            .unwrap()
            .contains("Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n")
    );

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(
        log.contains("viaduct listening") && log.contains("shut down"),
        "{log}"
    );
    assert!(log.contains("tunnel closed"), "{log}");
    assert!(
        !log.contains("s3cret") && !log.contains("YWxpY2U6czNjcmV0"),
        "credential in log:\n{log}"
    );
}

/// A bad flag value is refused before binding, naming the problem but not the password.
#[tokio::test]
async fn bad_flags_are_refused_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["--upstream", "socks9://alice:s3cret@127.0.0.1:1080"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unsupported upstream scheme \"socks9\""),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["--via-name", "two words"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("via name"));
}
