//! The `viaduct` command line: its grammar ([`Cli`]: run flags and the `check`, `route`,
//! `probe` subcommands) and the subcommands' bodies. Running the proxy (signals, readiness,
//! reload) is the binary's own (`main.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{self, RunFlags, runtime};
use crate::upstream::DnsResolver;

/// Exit code for a usage or configuration error (sysexits' EX_USAGE).
pub const EX_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "viaduct", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunFlags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a configuration file and exit (0: valid, 64: not, with file:line:col: field).
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print which rule matches URL and which way it would go, without connecting.
    Route {
        /// `https://host/...`, `http://host:port/...` or `host:port`.
        url: String,
        #[arg(long)]
        config: Option<PathBuf>,
        /// The client's user name, for rules that match users.
        #[arg(long)]
        user: Option<String>,
        /// A PAC script (PATH or http://URL) consulted for what no rule matches.
        #[arg(long, value_name = "PATH|URL")]
        pac: Option<String>,
    },
    /// Walk the real route to URL step by step with timings (routing, DNS, TCP, each hop's
    /// handshake, the origin's TLS, a GET); exit 0 when the GET succeeds, else name the
    /// failing step in Proxy-Status words.
    Probe {
        /// `https://host/path` or `http://host/path`.
        url: String,
        /// Route through these upstreams instead of the file's routing (as --upstream).
        #[arg(long)]
        upstream: Vec<String>,
        /// Extra CA certificates (PEM) to trust for the origin's TLS. Repeatable.
        #[arg(long, value_name = "FILE")]
        cacert: Vec<PathBuf>,
    },
}

impl Cli {
    /// The grammar, with every setting's default shown in `--help`.
    pub fn full_command() -> clap::Command {
        RunFlags::annotate(Self::command())
    }

    /// Parses the process's arguments; prints help or the error and exits as clap does.
    pub fn parse_env() -> Self {
        let matches = Self::full_command().get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// Prints a usage or configuration error; the exit code for it.
pub fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("viaduct: {e}");
    ExitCode::from(EX_USAGE)
}

/// A started proxy with its listeners bound, not yet serving.
pub struct Started {
    pub proxy: Arc<crate::Proxy>,
    pub listeners: Vec<(tokio::net::TcpListener, crate::server::ListenKind)>,
}

/// Builds the proxy from `config` and binds every listener (and the admin listener): what
/// must succeed before `READY=1`. The error is the exit code with its message printed.
pub async fn start(config: crate::Config) -> Result<Started, ExitCode> {
    let listen = config.listen.clone();
    let admin_addr = config.admin.as_ref().map(|a| a.listen);
    crate::server::raise_descriptor_limit(config.limits.max_connections);
    let summary = config.router.default.to_string();
    let rules = config.router.rules.len();
    let users = config.auth.as_ref().map_or(0, |a| a.users.len());
    let deny_internal = config.access.destinations.deny_internal;
    let proxy = crate::Proxy::new(config).map_err(usage_error)?;
    let mut listeners = Vec::new();
    for l in &listen {
        match tokio::net::TcpListener::bind(l.addr).await {
            Ok(bound) => listeners.push((bound, l.kind)),
            Err(e) => {
                eprintln!("viaduct: cannot listen on {l}: {e}");
                return Err(ExitCode::FAILURE);
            }
        }
    }
    if let Some(addr) = admin_addr {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                proxy.spawn_admin(l);
                tracing::info!(%addr, "admin listening: /metrics /healthz /readyz /status /proxy.pac");
            }
            Err(e) => {
                eprintln!("viaduct: cannot listen on {addr} (admin): {e}");
                return Err(ExitCode::FAILURE);
            }
        }
    }
    let listen: Vec<String> = listen.iter().map(ToString::to_string).collect();
    tracing::info!(listen = ?listen, default = %summary, rules, users, deny_internal, "viaduct listening");
    Ok(Started { proxy, listeners })
}

/// A reload (SIGHUP): re-reads the file (off the runtime: blocking I/O) and the files it
/// names with `flags` over them, and puts the result in force; a configuration that fails
/// validation is logged and counted, and the running one stays.
pub async fn reload(proxy: &crate::Proxy, flags: &Arc<RunFlags>) {
    let read = Arc::clone(flags);
    let built = tokio::task::spawn_blocking(move || {
        runtime::load(read.config.as_deref(), &read, true).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
    match built {
        Ok(config) => {
            let rules = config.router.rules.len();
            let users = config.auth.as_ref().map_or(0, |a| a.users.len());
            proxy.reload(config);
            tracing::info!(rules, users, "configuration reloaded");
        }
        Err(e) => {
            proxy.reload_rejected(&e);
            tracing::error!(error = %e, "reload rejected; keeping the running configuration")
        }
    }
}

/// `viaduct check --config FILE`.
pub fn check(path: &Path) -> ExitCode {
    match runtime::load(Some(path), &RunFlags::default(), false) {
        Ok(cfg) => {
            println!(
                "{}: ok ({} rules, {} pools, default: {})",
                path.display(),
                cfg.router.rules.len(),
                cfg.router.pools().len(),
                cfg.router.default
            );
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(e),
    }
}

/// `viaduct route URL`: the rule (or PAC answer) and the way, connecting nowhere.
pub async fn route(
    url: &str,
    config: Option<&Path>,
    user: Option<&str>,
    pac: Option<String>,
) -> ExitCode {
    let mut flags = RunFlags::default();
    flags.settings.pac = pac.map(Some);
    let config = match runtime::load(config, &flags, false) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let target = match config::target_of_url(url) {
        Ok(t) => t,
        Err(e) => return usage_error(e),
    };
    let resolver = DnsResolver::system_or_fallback();
    let decision = config.router.decide(&target, user, &*resolver).await;
    println!("target:  {target}");
    if let (crate::routing::Reason::Default, Some(src)) = (decision.reason, &config.pac) {
        let natives = crate::routing::autoconfig::engine::Natives::system(
            Arc::clone(&resolver),
            tokio::runtime::Handle::current(),
        );
        let pac = match crate::routing::autoconfig::PacHandle::new(src.clone(), natives) {
            Ok(p) => p,
            Err(e) => return usage_error(e),
        };
        // A tunnel unless the URL says plain http.
        let tunnel = !url.starts_with("http://");
        println!("matched: pac ({})", src.source);
        return match pac.decide(&target, tunnel).await {
            Ok(d) => {
                println!("pac:     {} -> {}", d.raw, d.action);
                println!("via:     {}", d.action);
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("error:   {e}");
                ExitCode::FAILURE
            }
        };
    }
    println!("matched: {}", decision.reason);
    println!("via:     {}", decision.action);
    ExitCode::SUCCESS
}

/// `viaduct probe URL`: the real route walked step by step.
pub async fn probe(
    config: Option<PathBuf>,
    upstream: Vec<String>,
    url: &str,
    cacert: Vec<PathBuf>,
) -> ExitCode {
    let flags = RunFlags {
        upstream,
        ..RunFlags::default()
    };
    let config = match runtime::load(config.as_deref(), &flags, false) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    println!("probe {url}");
    let mut out = std::io::stdout();
    let ok = crate::probe::run(
        config,
        DnsResolver::system_or_fallback(),
        url,
        cacert,
        &mut out,
    )
    .await;
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
