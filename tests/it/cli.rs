//! The `viaduct` binary: flags, signals, exit codes and what it logs.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::support::*;

fn free_port() -> u16 {
    free_addr().port()
}

/// Sends SIGHUP to a running viaduct.
/// The next systemd notification on `sock` (waits at most 10 s).
async fn notification(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
        .await
        .expect("a notification")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn sighup(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
}

fn local(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// Through an upstream with credentials, at debug level: the tunnel works, SIGTERM shuts the
/// binary down cleanly (exit 0), and neither the password nor its Basic encoding is logged.
#[tokio::test]
async fn binary_tunnels_logs_no_secrets_and_stops_on_sigterm() {
    let (up, mut heads) = basic_upstream(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
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
    wait_listening(local(port)).await;

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

    // Not a URL at all (issue 15, item 10): neither the password nor the user is echoed.
    let out = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["--upstream", "alice:s3cretPW@127.0.0.1:1"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("s3cretPW") && !err.contains("alice"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["--via-name", "two words"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("via name"));
}

/// `viaduct check` accepts the shipped example and refuses a broken file with
/// file:line:column: field and exit 64; `viaduct route` says which way a URL goes.
#[tokio::test]
async fn check_and_route_subcommands() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/viaduct.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["check", "--config", example])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok (5 rules, 1 pools"));

    let broken = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        broken.path(),
        "[upstreams]\na = \"http://127.0.0.1:1\"\n[pools.p]\nmembers = [\"a\", \"nope\"]\n",
    )
    .unwrap();
    let path = broken.path().to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["check", "--config", path])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{path}:4:17: pools.p.members: \"nope\" is not a defined upstream"
        )),
        "{err}"
    );
    // Running with it fails the same way, before binding anything.
    let out = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["--config", path])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));

    let out = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args([
            "route",
            "https://www.shop.example/cart",
            "--config",
            example,
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("target:  www.shop.example:443"), "{text}");
    assert!(
        text.contains("matched: rule 5")
            && text.contains("via:     pool residential (round-robin: res-1, res-2)"),
        "{text}"
    );
}

/// SIGHUP re-reads the file: a broken file is rejected and the running config keeps serving;
/// a valid one applies to new requests while an open tunnel carries on untouched.
#[tokio::test]
async fn sighup_reload() {
    let echo = echo_server().await;
    let port = free_port();
    let file = tempfile::NamedTempFile::new().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let direct = format!("listen = [\"127.0.0.1:{port}\"]\n[default]\nvia = \"direct\"\n");
    std::fs::write(file.path(), &direct).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["--config", file.path().to_str().unwrap()])
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(local(port)).await;
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (mut tunnel, head) = connect(proxy, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    let hup = || sighup(&child);

    std::fs::write(
        file.path(),
        format!("{direct}[[rules]]\nmatch = {{ ports = [\"x\"] }}\nvia = \"block\"\n"),
    )
    .unwrap();
    hup();
    let logged = |needle: &'static str| {
        let path = log.path().to_owned();
        async move {
            for _ in 0..200 {
                if std::fs::read_to_string(&path).unwrap().contains(needle) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!(
                "never logged {needle:?}: {}",
                std::fs::read_to_string(&path).unwrap()
            );
        }
    };
    logged("reload rejected").await;
    assert!(
        std::fs::read_to_string(log.path()).unwrap().contains(":5:"),
        "error names the line"
    );
    let (_s, head) = connect(proxy, &echo.to_string()).await;
    assert_eq!(head.status, 200, "old config still serving");

    let block = format!(
        "{direct}[[rules]]\nmatch = {{ ports = [{}] }}\nvia = \"block\"\n",
        echo.port()
    );
    std::fs::write(file.path(), block).unwrap();
    hup();
    logged("configuration reloaded").await;
    let (_s, head) = connect(proxy, &echo.to_string()).await;
    assert_eq!(head.status, 403, "new rules apply to new requests");

    tunnel.write_all(b"still here").await.unwrap();
    let mut buf = [0; 10];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here", "the open tunnel was untouched");
    child.kill().await.unwrap();
}

/// Without a file: repeated --upstream makes a pool (failing over past a dead member), and
/// --bypass sends matching hosts direct.
#[tokio::test]
async fn cli_pool_and_bypass() {
    let echo = echo_server().await;
    let good = start_upstream("good").await;
    let dead = free_addr();
    let port = free_port();
    let _pool = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--strategy",
            "round-robin",
        ])
        .args([
            "--upstream",
            &format!("http://{dead}"),
            "--upstream",
            &format!("http://{}", good.addr),
        ])
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let bypass_port = free_port();
    let _bypass = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args([
            "--listen",
            &format!("127.0.0.1:{bypass_port}"),
            "--upstream",
            &format!("http://{dead}"),
        ])
        .args(["--bypass", "localhost,127.0.0.0/8"])
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(local(port)).await;
    wait_listening(local(bypass_port)).await;
    for p in [port, port, port, port, bypass_port] {
        let (mut s, head) =
            connect(format!("127.0.0.1:{p}").parse().unwrap(), &echo.to_string()).await;
        assert_eq!(head.status, 200, "through {p}");
        s.write_all(b"hi").await.unwrap();
        let mut buf = [0; 2];
        s.read_exact(&mut buf).await.unwrap();
    }
}

/// Issue 15, item 11: SIGHUP with the config turned into a FIFO, a device or an empty file is
/// rejected while requests keep being served (the read happens off the runtime, and only
/// regular files of at most 1 MiB are read).
#[tokio::test]
async fn reload_refuses_fifos_devices_and_empty_files() {
    let echo = echo_server().await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.toml");
    let link = dir.path().join("viaduct.toml");
    let log = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(&real, format!("listen = [\"127.0.0.1:{port}\"]\n")).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["--config", link.to_str().unwrap()])
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let proxy = local(port);
    wait_listening(proxy).await;
    let pid = child.id().unwrap().to_string();
    let hup = || {
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        )
    };
    let rejections = |n: usize| {
        let path = log.path().to_owned();
        async move {
            for _ in 0..200 {
                let text = std::fs::read_to_string(&path).unwrap();
                if text.matches("reload rejected").count() >= n {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("{}", std::fs::read_to_string(&path).unwrap());
        }
    };
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for (i, target) in [fifo.as_path(), std::path::Path::new("/dev/zero")]
        .into_iter()
        .enumerate()
    {
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(target, &link).unwrap();
        hup();
        let text = rejections(i + 1).await;
        assert!(text.contains("not a regular file"), "{text}");
        let started = std::time::Instant::now();
        let (_s, head) = connect(proxy, &echo.to_string()).await;
        assert_eq!(head.status, 200, "still serving");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    std::fs::remove_file(&link).unwrap();
    std::fs::write(&real, "\n# truncated\n").unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    hup();
    let text = rejections(3).await;
    assert!(text.contains("empty"), "{text}");
    let (_s, head) = connect(proxy, &echo.to_string()).await;
    assert_eq!(head.status, 200);
    child.kill().await.unwrap();
}

/// Item 3: at start the soft descriptor limit is raised to the hard one, and the log says how
/// many tunnels fit.
#[tokio::test]
async fn descriptor_limit_is_raised_and_reported() {
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!(
                "ulimit -Sn 256 && exec {} --listen 127.0.0.1:{port}",
                env!("CARGO_BIN_EXE_viaduct")
            ),
        ])
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(local(port)).await;
    let text = std::fs::read_to_string(log.path()).unwrap();
    // The running process's own limits: soft raised to hard.
    let pid = child.id().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    let (soft, hard) = (files[3], files[4]);
    assert_eq!(soft, hard, "{limits}");
    assert_ne!(soft, "256", "the soft limit was raised from 256: {limits}");
    assert!(text.contains(&format!("from=256 to={hard}")), "{text}");
    assert!(text.contains("fits_tunnels="), "{text}");
    child.kill().await.unwrap();
}

/// Refused before binding, exit 64, one sentence: a listener beyond loopback with neither
/// auth nor allowed clients; a users file with a bad line (named, never quoted); `users`
/// rules without `[auth]`.
#[tokio::test]
async fn unsafe_or_broken_access_setups_exit_64() {
    let run = |args: Vec<String>| async move {
        let out = Command::new(env!("CARGO_BIN_EXE_viaduct"))
            .args(&args)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let port = free_port();
    let err = run(vec!["--listen".into(), format!("0.0.0.0:{port}")]).await;
    for needle in ["--auth-file", "--allow-clients", "--open", "open proxy"] {
        assert!(err.contains(needle), "{err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.htpasswd");
    std::fs::write(
        &users,
        "alice:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\nbob:Sup3rS3cret\n",
    )
    .unwrap();
    let err = run(vec![
        "--auth-file".into(),
        users.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
    ])
    .await;
    assert!(
        err.contains(&format!("{}:2:", users.display())) && !err.contains("Sup3rS3cret"),
        "{err}"
    );

    let config = dir.path().join("viaduct.toml");
    std::fs::write(
        &config,
        "[upstreams]\na = \"http://127.0.0.1:1\"\n[[rules]]\nmatch = { users = [\"bob\"] }\nvia = \"a\"\n",
    )
    .unwrap();
    let err = run(vec![
        "check".into(),
        "--config".into(),
        config.display().to_string(),
    ])
    .await;
    assert!(err.contains("no [auth]"), "{err}");
}

/// `--auth-file` without a config file: SIGHUP still re-reads the users file; a removed user
/// gets 407 at once and loses the open tunnel. `VIADUCT_UPSTREAM` carries `--upstream`.
#[tokio::test]
async fn auth_file_reload_and_upstream_from_the_environment() {
    let echo = echo_server().await;
    let (up, mut heads) = basic_upstream(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.htpasswd");
    let alice = format!("alice:{}\n", bcrypt::hash("pw", 4).unwrap());
    let bob = format!("bob:{}\n", bcrypt::hash("pw", 4).unwrap());
    std::fs::write(&users, format!("{alice}{bob}")).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--auth-file", users.to_str().unwrap()])
        .env("VIADUCT_UPSTREAM", format!("http://carol:upw@{up}"))
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(local(port)).await;
    let proxy = local(port);
    let (mut tunnel, head) = connect_as(proxy, &echo.to_string(), Some("alice:pw")).await;
    assert_eq!(head.status, 200);
    let seen = heads.recv().await.unwrap();
    // carol:upw — the upstream gets its own credentials, never the client's.
    assert!(
        seen.contains("Proxy-Authorization: Basic Y2Fyb2w6dXB3\r\n"),
        "{seen}"
    );

    std::fs::write(&users, &bob).unwrap();
    sighup(&child);
    let mut buf = [0; 8];
    let closed = tokio::time::timeout(Duration::from_secs(2), tunnel.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    let (_s, head) = connect_as(proxy, &echo.to_string(), Some("alice:pw")).await;
    assert_eq!(head.status, 407);
    let (_s, head) = connect_as(proxy, &echo.to_string(), Some("bob:pw")).await;
    assert_eq!(head.status, 200);
    child.kill().await.unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("configuration reloaded"), "{text}");
    assert!(
        !text.contains("upw") && !text.contains("Y2Fyb2w6dXB3"),
        "{text}"
    );

    // --help shows the variable's name, not its value.
    let out = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .arg("--help")
        .env("VIADUCT_UPSTREAM", "http://carol:upw@127.0.0.1:1")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("VIADUCT_UPSTREAM") && !help.contains("upw"),
        "{help}"
    );
}

/// `viaduct probe` walks a two-hop chain and names the hop that failed, in Proxy-Status words;
/// through a working route it prints each step and the GET's status, and exits 0.
#[tokio::test]
async fn probe_names_the_failing_hop() {
    let o = origin().await;
    let hop1 = start_upstream("hop1").await;
    let dead = free_addr();
    let out = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["probe", &format!("http://{}/hello", o.addr)])
        .args(["--upstream", &format!("http://{},http://{dead}", hop1.addr)])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "hop 1 (http proxy {}): connect to {dead}",
            hop1.addr
        )) && text.contains("answered 502"),
        "{text}"
    );
    assert!(
        text.contains("FAILED  502 error=destination_unavailable"),
        "{text}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["probe", &format!("http://{}/hello", o.addr)])
        .args(["--upstream", &format!("http://{}", hop1.addr)])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("GET http://") && text.contains("200 OK") && text.trim_end().ends_with("ok"),
        "{text}"
    );
}

/// systemd's notify protocol over a real datagram socket: READY=1 once listening,
/// RELOADING=1 (with MONOTONIC_USEC) then READY=1 around SIGHUP, STOPPING=1 on SIGTERM.
#[tokio::test]
async fn systemd_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let config = dir.path().join("viaduct.toml");
    let port = free_port();
    std::fs::write(&config, format!("listen = [\"127.0.0.1:{port}\"]\n")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let next = || notification(&sock);
    assert_eq!(next().await.trim(), "READY=1");
    // Ready means listening.
    tokio::net::TcpStream::connect(local(port)).await.unwrap();
    sighup(&child);
    let reloading = next().await;
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next().await.trim(), "READY=1");
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert_eq!(next().await.trim(), "STOPPING=1");
}

/// Signals are installed before readiness: a SIGHUP sent the instant READY=1 arrives (what
/// `systemctl reload` right after start does) is a reload, never the default action that ends
/// the process, 200 times over, and without any file to re-read (SIGHUP is always handled).
#[tokio::test]
async fn sighup_the_instant_ready_arrives_is_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    for round in 0..200 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_viaduct"))
            .args(["--listen", "127.0.0.1:0"])
            .env("NOTIFY_SOCKET", &sock_path)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let next = || notification(&sock);
        assert_eq!(next().await.trim(), "READY=1", "round {round}");
        sighup(&child);
        assert!(next().await.contains("RELOADING=1"), "round {round}");
        assert_eq!(next().await.trim(), "READY=1", "round {round}");
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(0), "round {round}");
        // STOPPING=1, before the next round's READY=1.
        assert_eq!(next().await.trim(), "STOPPING=1", "round {round}");
    }
}

/// Log rotation: a process started with only flags reopens its access log file on SIGHUP
/// (rename, SIGHUP, and the next record lands in a new file), and keeps serving.
#[tokio::test]
async fn sighup_reopens_the_access_log_without_a_config() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--access-log",
            "json",
            "--access-log-file",
            log.to_str().unwrap(),
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let next = || notification(&sock);
    assert_eq!(next().await.trim(), "READY=1");
    let tunnel = |tag: &'static [u8]| async move {
        let (mut s, head) = connect(local(port), &echo.to_string()).await;
        assert_eq!(head.status, 200);
        s.write_all(tag).await.unwrap();
        let mut back = vec![0; tag.len()];
        s.read_exact(&mut back).await.unwrap();
    };
    tunnel(b"before").await;
    let rotated = dir.path().join("access.json.1");
    let logged = |path: std::path::PathBuf| async move {
        eventually(&format!("one record in {}", path.display()), || async {
            std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() == 1)
        })
        .await;
    };
    logged(log.clone()).await;
    std::fs::rename(&log, &rotated).unwrap();
    sighup(&child);
    assert!(next().await.contains("RELOADING=1"));
    assert_eq!(next().await.trim(), "READY=1");
    tunnel(b"after").await;
    logged(log.clone()).await;
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().lines().count(),
        1,
        "the rotated file got only the record from before"
    );
}

/// The https:// listener re-reads its certificate on SIGHUP: a new pair serves new
/// connections; a broken pair is rejected and the old one keeps serving.
#[tokio::test]
async fn tls_listener_certificate_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let write = |name: &str| {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        c.cert.der().clone()
    };
    let first = write("localhost");
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["--listen", &format!("https://127.0.0.1:{port}")])
        .args([
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(local(port)).await;
    // The certificate the listener presents now.
    // viaduct's own `--upstream-insecure` connector: it accepts any certificate, and the test
    // looks at which one was presented.
    let insecure = viaduct::upstream::tls::connector(&viaduct::upstream::TlsOptions {
        ca_files: Vec::new(),
        insecure: true,
    })
    .unwrap();
    let presented = || async {
        let tcp = tokio::net::TcpStream::connect(local(port)).await.unwrap();
        let tls = insecure
            .clone()
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    assert_eq!(presented().await, first);
    let second = write("localhost");
    sighup(&child);
    let mut now = presented().await;
    for _ in 0..100 {
        if now == second {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = presented().await;
    }
    assert_eq!(now, second, "the new pair serves new connections");
    std::fs::write(&key, "not a key").unwrap();
    sighup(&child);
    for _ in 0..100 {
        if std::fs::read_to_string(log.path())
            .unwrap()
            .contains("reload rejected")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        std::fs::read_to_string(log.path())
            .unwrap()
            .contains("reload rejected")
    );
    assert_eq!(
        presented().await,
        second,
        "a broken pair leaves the old one serving"
    );
}

/// Hardening 2, finding 9: a `${NAME}` secret in an upstream URL's userinfo is taken as the raw
/// password it is (`p@ss:w/rd%41` reaches the upstream unchanged), and a bad value elsewhere
/// in the URL is an error naming the variable, never its value.
#[tokio::test]
async fn secrets_from_the_environment_are_taken_raw() {
    use base64::Engine;
    let echo = echo_server().await;
    let (up, mut heads) = basic_upstream(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("v.toml");
    std::fs::write(
        &conf,
        format!(
            "[upstreams]\ncorp = \"http://carol:${{CORP_PW}}@{up}\"\n[default]\nvia = \"corp\"\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--config", conf.to_str().unwrap()])
        .env("CORP_PW", "p@ss:w/rd%41")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(local(port)).await;
    let (_t, head) = connect_as(local(port), &echo.to_string(), None).await;
    assert_eq!(head.status, 200);
    let seen = heads.recv().await.unwrap();
    let expected = base64::engine::general_purpose::STANDARD.encode("carol:p@ss:w/rd%41");
    assert!(
        seen.contains(&format!("Proxy-Authorization: Basic {expected}\r\n")),
        "{seen}"
    );
    child.kill().await.unwrap();

    std::fs::write(
        &conf,
        "[upstreams]\ncorp = \"http://carol:${CORP_PW}@proxy.test:${CORP_PORT}\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(["check", "--config", conf.to_str().unwrap()])
        .env("CORP_PW", "Zq9-raw-secret")
        .env("CORP_PORT", "80x80")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("${CORP_PORT}"), "{err}");
    assert!(
        !err.contains("Zq9-raw-secret") && !err.contains("80x80"),
        "{err}"
    );
}
