//! The `viaduct` binary: parse, log, install the signal streams, bind, tell systemd we are
//! ready, serve, reload on SIGHUP. The grammar and the subcommands live in the library
//! ([`viaduct::cli`]); the flags are merged with the file and the defaults by
//! `viaduct::config::runtime`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use tracing_subscriber::EnvFilter;
use viaduct::cli::{self, Cli, Command, Started};
use viaduct::config::runtime;
use viaduct::{Proxy, RunFlags};

fn main() -> ExitCode {
    let cli = Cli::parse_env();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("viaduct: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Check { config }) => cli::check(&config),
        Some(Command::Route {
            url,
            config,
            user,
            pac,
        }) => runtime.block_on(cli::route(&url, config.as_deref(), user.as_deref(), pac)),
        Some(Command::Probe {
            url,
            upstream,
            cacert,
        }) => runtime.block_on(cli::probe(cli.run.config.clone(), upstream, &url, cacert)),
        None => runtime.block_on(run(cli.run)),
    }
}

async fn run(args: RunFlags) -> ExitCode {
    let config = match runtime::load(args.config.as_deref(), &args, false) {
        Ok(c) => c,
        Err(e) => return cli::usage_error(e),
    };
    // Signals first, before any listener and before READY=1: a SIGHUP (logrotate, `systemctl
    // reload` right after start) or SIGTERM that arrives the moment we are ready must find its
    // handler, never the default action, which ends the process.
    #[cfg(unix)]
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("viaduct: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Started { proxy, listeners } = match cli::start(config).await {
        Ok(started) => started,
        Err(code) => return code,
    };
    // systemd (Type=notify): ready once every listener is bound. Without systemd, a no-op.
    notify(&[sd_notify::NotifyState::Ready]);
    #[cfg(unix)]
    let Signals { hup, term, int } = signals;
    // SIGHUP is always handled: with files it re-reads them; with none, it re-applies the
    // flags and reopens the access log file (logrotate sends it whatever the configuration).
    #[cfg(unix)]
    spawn_reloader(Arc::clone(&proxy), args, hup);
    viaduct::serve_all(listeners, proxy, async move {
        #[cfg(unix)]
        shutdown_signal(term, int).await;
        #[cfg(not(unix))]
        shutdown_signal().await;
        notify(&[sd_notify::NotifyState::Stopping]);
    })
    .await;
    ExitCode::SUCCESS
}

/// The signal streams, created before anything can be ready.
#[cfg(unix)]
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// On SIGHUP: re-read the configuration file and the users file and put them in force (see
/// [`cli::reload`]), telling systemd while it happens.
#[cfg(unix)]
fn spawn_reloader(proxy: Arc<Proxy>, flags: RunFlags, mut hup: tokio::signal::unix::Signal) {
    let flags = Arc::new(flags);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            notify_reloading();
            cli::reload(&proxy, &flags).await;
            notify(&[sd_notify::NotifyState::Ready]);
        }
    });
}

/// Tells systemd (when it started us with `Type=notify`) what we are doing; otherwise nothing.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `RELOADING=1` with the monotonic time systemd (v253+) requires alongside it.
fn notify_reloading() {
    let mut states = vec![sd_notify::NotifyState::Reloading];
    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
}

/// Resolves on SIGINT or SIGTERM (their streams were created at start).
#[cfg(unix)]
async fn shutdown_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Resolves on ctrl-c.
#[cfg(not(unix))]
async fn shutdown_signal() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %e, "cannot listen for ctrl-c");
        std::future::pending::<()>().await;
    }
}
