//! The `viaduct` binary: command line, logging, signals. Everything else lives in the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use viaduct::outbound::{Route, TlsOptions};
use viaduct::{Config, Proxy};

/// A forward HTTP proxy: CONNECT tunnels and plain HTTP, direct or through an upstream proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to accept clients on. Loopback by default: pass 0.0.0.0:PORT deliberately.
    #[arg(long, default_value = "127.0.0.1:8083", env = "VIADUCT_LISTEN")]
    listen: SocketAddr,

    /// Send everything through this upstream proxy, or a chain of them separated by commas
    /// (first to last): http://, https://, socks5://, socks5h://, socks4a://, each
    /// [user:pass@]host[:port]. Percent-encode special characters (and commas) in credentials.
    // Parsed after clap, not by a value_parser: clap echoes a rejected value in its error, and
    // this one may carry a password.
    #[arg(long)]
    upstream: Option<String>,

    /// Extra CA certificates (PEM) to trust for https:// upstreams, on top of the webpki
    /// roots. Repeatable.
    #[arg(long, value_name = "FILE")]
    upstream_ca: Vec<std::path::PathBuf>,

    /// Do not verify https:// upstreams' certificates. Only for throwaway test setups.
    #[arg(long)]
    upstream_insecure: bool,

    /// Bound on reaching a target: DNS, TCP and every upstream hop's handshake together.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,

    /// Close a tunnel after this long with no bytes in either direction.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,

    /// Our name in Via and Proxy-Status headers; a request whose Via already has it is a loop.
    #[arg(long, default_value = "viaduct")]
    via_name: String,

    /// On SIGINT/SIGTERM, how long open requests and tunnels may finish before they are cut.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let route = match args.upstream.as_deref().map(Route::parse).transpose() {
        Ok(route) => route.unwrap_or_else(Route::direct),
        Err(e) => {
            eprintln!("viaduct: invalid value for --upstream: {e}");
            return ExitCode::from(64);
        }
    };
    let config = Config {
        listen: args.listen,
        route,
        connect_timeout: args.connect_timeout,
        idle_timeout: args.idle_timeout,
        via_name: args.via_name,
        shutdown_grace: args.shutdown_grace,
        tls: TlsOptions {
            ca_files: args.upstream_ca,
            insecure: args.upstream_insecure,
        },
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("viaduct: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let listen = config.listen;
    let route = config.route.to_string();
    let proxy = match Proxy::new(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("viaduct: {e}");
            return ExitCode::from(64);
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("viaduct: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(%listen, %route, "viaduct listening");
    viaduct::serve(listener, proxy, shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
