//! The `viaduct` binary: command line, config file, logging, signals. Everything else lives in
//! the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use viaduct::config::{self, FileConfig, parse_target};
use viaduct::outbound::{Route, SystemResolver, TlsOptions};
use viaduct::pool::{Pool, PoolSettings, Strategy};
use viaduct::route::{Action, Router, parse_no_proxy};
use viaduct::{Config, Limits, Proxy};

/// Exit code for bad usage or configuration (EX_USAGE).
const EX_USAGE: u8 = 64;

/// A forward HTTP proxy: CONNECT tunnels and plain HTTP, direct or through upstream proxies.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// TOML configuration file (see examples/viaduct.toml). Flags override it. SIGHUP re-reads
    /// its routing (upstreams, pools, rules, default, bypass).
    #[arg(long, global = true)]
    config: Option<PathBuf>,

    /// Address to accept clients on; repeatable. Default 127.0.0.1:8083 (loopback: pass
    /// 0.0.0.0:PORT deliberately).
    #[arg(long, env = "VIADUCT_LISTEN")]
    listen: Vec<SocketAddr>,

    /// Send everything through this upstream proxy, or a chain of them separated by commas
    /// (first to last): http://, https://, socks5://, socks5h://, socks4a://, each
    /// [user:pass@]host[:port]. Percent-encode special characters (and commas) in credentials.
    /// Repeat it to make a pool of upstreams (see --strategy). Overrides the file's routing.
    // Parsed after clap, not by a value_parser: clap echoes a rejected value in its error, and
    // this one may carry a password.
    #[arg(long)]
    upstream: Vec<String>,

    /// How a pool made of repeated --upstream picks: failover, round-robin, random,
    /// least-connections, sticky.
    #[arg(long, default_value = "failover")]
    strategy: String,

    /// Hosts that always go direct, in NO_PROXY syntax: "localhost,.internal,10.0.0.0/8".
    #[arg(long)]
    bypass: Option<String>,

    /// Extra CA certificates (PEM) to trust for https:// upstreams, on top of the webpki
    /// roots. Repeatable.
    #[arg(long, value_name = "FILE")]
    upstream_ca: Vec<PathBuf>,

    /// Do not verify https:// upstreams' certificates. Only for throwaway test setups.
    #[arg(long)]
    upstream_insecure: bool,

    /// Bound on reaching a target: DNS, TCP and every upstream hop's handshake together
    /// (for a pool: all attempts together). Default 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,

    /// Close a tunnel after this long with no bytes in either direction. Default 10m.
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,

    /// A forwarded plain request whose response head does not arrive within this gets 504.
    /// Default 60s.
    #[arg(long, value_parser = humantime::parse_duration)]
    response_timeout: Option<Duration>,

    /// Our name in Via and Proxy-Status headers; a request whose Via already has it is a
    /// loop. Default viaduct.
    #[arg(long)]
    via_name: Option<String>,

    /// On SIGINT/SIGTERM, how long open requests and tunnels may finish before they are cut.
    /// Default 5s.
    #[arg(long, value_parser = humantime::parse_duration)]
    shutdown_grace: Option<Duration>,

    /// Largest request head accepted (bytes); past it: 431 and close. Default 65536.
    #[arg(long)]
    max_header_bytes: Option<usize>,

    /// Most header fields in a request head; past it: 431 and close. Default 100.
    #[arg(long)]
    max_headers: Option<usize>,

    /// A request head must arrive within this (slowloris); else 408 and close. Also closes
    /// idle keep-alive client connections. Default 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    header_read_timeout: Option<Duration>,

    /// Open client connections (and tunnels) at most; more are answered 503 and closed.
    /// Default 10000.
    #[arg(long)]
    max_connections: Option<usize>,

    /// Open client connections per client IP at most (0: no limit). Default 0.
    #[arg(long)]
    max_connections_per_ip: Option<usize>,

    /// A request body that sends nothing for this long: 408 (default 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    request_body_timeout: Option<Duration>,

    /// After 20 s a request body must average this many bytes/s, else 408 (default 500; 0: off).
    #[arg(long)]
    request_body_min_rate: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Some(Command::Check { config }) => check(&config),
        Some(Command::Route { url, config, user }) => {
            runtime.block_on(route(&url, config.as_deref(), user.as_deref()))
        }
        None => runtime.block_on(run(cli.run)),
    }
}

/// Loads the file (if any) and merges the flags over it: the one place where flags override.
fn build_config(args: &RunArgs) -> Result<Config, String> {
    build_config_from(args, false)
}

/// `reloading`: an empty file is refused (it would quietly turn every rule off).
fn build_config_from(args: &RunArgs, reloading: bool) -> Result<Config, String> {
    let file = args
        .config
        .as_deref()
        .map(config::load)
        .transpose()
        .map_err(|e| e.to_string())?;
    if reloading
        && let (Some(path), Some(f)) = (&args.config, &file)
        && f.empty
    {
        return Err(format!(
            "{}: the file is empty (truncated while being written?)",
            path.display()
        ));
    }
    let defaults = Config::default();
    let (router, mut tls, settings) = match file {
        Some(FileConfig {
            settings,
            tls,
            router,
            ..
        }) => (Some(router), tls, settings),
        None => (None, TlsOptions::default(), Default::default()),
    };
    tls.ca_files.extend(args.upstream_ca.iter().cloned());
    tls.insecure |= args.upstream_insecure;
    let bypass = args
        .bypass
        .as_deref()
        .map(parse_no_proxy)
        .transpose()
        .map_err(|entry| {
            format!("invalid value for --bypass: not a host, domain or CIDR: \"{entry}\"")
        })?;
    let mut router = if args.upstream.is_empty() {
        router.unwrap_or_else(Router::direct)
    } else {
        cli_router(args)?
    };
    if let Some(bypass) = bypass {
        router.bypass = bypass;
    }
    let listen = if args.listen.is_empty() {
        settings.listen
    } else {
        args.listen.clone()
    };
    Ok(Config {
        listen: if listen.is_empty() {
            defaults.listen
        } else {
            listen
        },
        router,
        connect_timeout: args
            .connect_timeout
            .or(settings.connect_timeout)
            .unwrap_or(defaults.connect_timeout),
        idle_timeout: args
            .idle_timeout
            .or(settings.idle_timeout)
            .unwrap_or(defaults.idle_timeout),
        response_timeout: args
            .response_timeout
            .or(settings.response_timeout)
            .unwrap_or(defaults.response_timeout),
        via_name: args
            .via_name
            .clone()
            .or(settings.via_name)
            .unwrap_or(defaults.via_name),
        shutdown_grace: args
            .shutdown_grace
            .or(settings.shutdown_grace)
            .unwrap_or(defaults.shutdown_grace),
        tls,
        limits: {
            let (file, d) = (&settings.limits, &defaults.limits);
            Limits {
                max_header_bytes: args
                    .max_header_bytes
                    .or(file.max_header_bytes)
                    .unwrap_or(d.max_header_bytes),
                max_headers: args
                    .max_headers
                    .or(file.max_headers)
                    .unwrap_or(d.max_headers),
                header_read_timeout: args
                    .header_read_timeout
                    .or(file.header_read_timeout)
                    .unwrap_or(d.header_read_timeout),
                max_connections: args
                    .max_connections
                    .or(file.max_connections)
                    .unwrap_or(d.max_connections),
                max_connections_per_ip: args
                    .max_connections_per_ip
                    .or(file.max_connections_per_ip)
                    .unwrap_or(d.max_connections_per_ip),
                request_body_timeout: args
                    .request_body_timeout
                    .or(file.request_body_timeout)
                    .unwrap_or(d.request_body_timeout),
                request_body_min_rate: {
                    let default = d.request_body_min_rate.unwrap_or_default();
                    let grace = file.request_body_grace.unwrap_or(default.0);
                    match args
                        .request_body_min_rate
                        .or(file.request_body_min_rate)
                        .unwrap_or(default.1)
                    {
                        0 => None,
                        rate => Some((grace, rate)),
                    }
                },
                max_idle_upstream: file.max_idle_upstream.unwrap_or(d.max_idle_upstream),
                upstream_idle_timeout: file
                    .upstream_idle_timeout
                    .unwrap_or(d.upstream_idle_timeout),
            }
        },
    })
}

/// Routing from repeated --upstream: one is used for everything; several form a pool.
fn cli_router(args: &RunArgs) -> Result<Router, String> {
    let routes = args
        .upstream
        .iter()
        .map(|u| {
            Route::parse(u).map_err(|e| {
                viaduct::outbound::redact(&format!("invalid value for --upstream: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let [route] = routes.as_slice() {
        return Ok(Router::single(route.clone()));
    }
    let strategy = Strategy::parse(&args.strategy).ok_or_else(|| {
        format!("invalid value for --strategy: \"{}\" (failover, round-robin, random, least-connections, sticky)", args.strategy)
    })?;
    let members = routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| (format!("upstream-{}", i + 1), r))
        .collect();
    let pool = Pool::new(
        "upstreams".into(),
        members,
        PoolSettings {
            strategy,
            ..PoolSettings::default()
        },
    );
    Ok(Router {
        bypass: None,
        rules: Vec::new(),
        default: Action::Pool(Arc::new(pool)),
    })
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
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
        Err(e) => {
            eprintln!("viaduct: {e}");
            ExitCode::from(EX_USAGE)
        }
    }
}

async fn route(url: &str, config: Option<&Path>, user: Option<&str>) -> ExitCode {
    let router = match config.map(config::load).transpose() {
        Ok(cfg) => cfg.map_or_else(Router::direct, |c| c.router),
        Err(e) => {
            eprintln!("viaduct: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let authority = match url.split_once("://") {
        Some((scheme, rest)) => {
            let host_port = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, hp)| hp);
            let default_port = if scheme.eq_ignore_ascii_case("https") {
                443
            } else {
                80
            };
            let has_port = host_port.rsplit_once(':').is_some_and(|(h, p)| {
                !h.ends_with(':')
                    && p.parse::<u16>().is_ok()
                    && (!h.starts_with('[') || h.ends_with(']'))
            });
            if has_port {
                host_port.to_owned()
            } else {
                format!("{host_port}:{default_port}")
            }
        }
        None => url.to_owned(),
    };
    let target = match parse_target(&authority) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("viaduct: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let decision = router.decide(&target, user, &SystemResolver).await;
    println!("target:  {target}");
    println!("matched: {}", decision.reason);
    println!("via:     {}", decision.action);
    ExitCode::SUCCESS
}

async fn run(args: RunArgs) -> ExitCode {
    let config = match build_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("viaduct: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let listen = config.listen.clone();
    viaduct::inbound::server::raise_descriptor_limit(config.limits.max_connections);
    let summary = config.router.default.to_string();
    let rules = config.router.rules.len();
    let proxy = match Proxy::new(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("viaduct: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let mut listeners = Vec::new();
    for addr in &listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("viaduct: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    tracing::info!(listen = ?listen, default = %summary, rules, "viaduct listening");
    #[cfg(unix)]
    if args.config.is_some() {
        spawn_reloader(Arc::clone(&proxy), args);
    }
    viaduct::serve_all(listeners, proxy, shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// On SIGHUP: re-read the file and swap in its routing; a file that fails validation is
/// logged and the running config stays.
#[cfg(unix)]
fn spawn_reloader(proxy: Arc<Proxy>, args: RunArgs) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload disabled");
            return;
        }
    };
    let args = Arc::new(args);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // Reading the file is blocking I/O: never on the runtime, which keeps serving (and
            // timing out slow clients) whatever the file turns out to be.
            let read = Arc::clone(&args);
            let built = tokio::task::spawn_blocking(move || build_config_from(&read, true))
                .await
                .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
            match built {
                Ok(config) => {
                    let rules = config.router.rules.len();
                    proxy.reload(config.router);
                    tracing::info!(rules, "configuration reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "reload rejected; keeping the running configuration")
                }
            }
        }
    });
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
