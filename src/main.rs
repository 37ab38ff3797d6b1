//! The `viaduct` binary: command line, logging, signals and exit codes. Everything else lives
//! in the library: the flags become [`viaduct::Overrides`], merged with the file and the
//! defaults by `viaduct::config::runtime`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use viaduct::config::{self, runtime};
use viaduct::server::Listen;
use viaduct::upstream::DnsResolver;
use viaduct::{Overrides, Proxy};

/// Exit code for a usage or configuration error (sysexits' EX_USAGE).
const EX_USAGE: u8 = 64;

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

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// TOML configuration file (see examples/viaduct.toml). Flags override it. SIGHUP re-reads
    /// its routing (upstreams, pools, rules, default, bypass).
    #[arg(long, global = true)]
    config: Option<PathBuf>,

    /// Address to accept clients on; repeatable. Default 127.0.0.1:8083 (loopback: pass
    /// 0.0.0.0:PORT deliberately).
    #[arg(long, env = "VIADUCT_LISTEN", value_parser = parse_listen)]
    listen: Vec<Listen>,

    /// Send everything through this upstream proxy, or a chain of them separated by commas
    /// (first to last): http://, https://, socks5://, socks5h://, socks4a://, each
    /// [user:pass@]host[:port]. Percent-encode special characters (and commas) in credentials.
    /// Repeat it to make a pool of upstreams (see --strategy). Overrides the file's routing.
    /// VIADUCT_UPSTREAM carries one such value (a hop or a chain), keeping passwords out of
    /// the process list.
    // Parsed after clap, not by a value_parser: clap echoes a rejected value in its error, and
    // this one may carry a password (hence also no env value in --help).
    #[arg(long, env = "VIADUCT_UPSTREAM", hide_env_values = true)]
    upstream: Vec<String>,

    /// Route what no rule matches by a proxy auto-config script (PATH, http(s)://URL,
    /// "system": the desktop's setting, auto_proxy or GNOME's autoconfig-url, or "auto":
    /// WPAD, wpad.<search domain>/wpad.dat):
    /// FindProxyForURL's answer (PROXY, HTTPS, SOCKS, SOCKS5, DIRECT; a list fails over in
    /// order). Re-read on SIGHUP.
    #[arg(long, value_name = "PATH|URL")]
    pac: Option<String>,

    /// How --upstream's HTTP proxies are authenticated to: any (the strongest the proxy
    /// offers: Negotiate, NTLM, Basic), or one of basic, ntlm, negotiate (a proxy that does not
    /// offer it is an error, never a downgrade). NTLM takes user:pass from the URL (write the
    /// domain as DOMAIN%5Cuser); Negotiate uses the Kerberos ticket cache (kinit).
    #[arg(long, value_name = "SCHEME", default_value = "any")]
    upstream_auth: String,

    /// How a pool made of repeated --upstream picks: failover, round-robin, random,
    /// least-connections, sticky.
    #[arg(long, default_value = "failover")]
    strategy: String,

    /// Hosts that always go direct, in NO_PROXY syntax: "localhost,.internal,10.0.0.0/8".
    #[arg(long)]
    bypass: Option<String>,

    /// Where direct connections (or those to the first upstream) of the default route leave
    /// from: an address, or a prefix (IPv4 or IPv6) to pick one from per session. The prefix
    /// need only be routed to this host (IP_FREEBIND).
    #[arg(long, value_name = "ADDR|CIDR")]
    bind: Option<String>,

    /// With a --bind prefix: `sticky` (one address per session, or per client without a
    /// -session-ID suffix) or `random` (a fresh address per connection unless the client
    /// names a session).
    #[arg(long, value_name = "MODE")]
    bind_mode: Option<String>,

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

    /// Users file (htpasswd: htpasswd -B / -m, openssl passwd -apr1 / -5 / -6): clients must
    /// send Proxy-Authorization: Basic with one of its users. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    auth_file: Option<PathBuf>,

    /// Only these client addresses may connect: CIDR[,CIDR...]; others get 403.
    #[arg(long, value_name = "CIDRS")]
    allow_clients: Option<String>,

    /// Listen beyond loopback with neither --auth-file nor --allow-clients: an open proxy,
    /// meant.
    #[arg(long)]
    open: bool,

    /// Admin listener: /metrics (Prometheus), /healthz, /readyz, /status, /status.json,
    /// /proxy.pac. Off unless set; beyond loopback it needs admin_token or admin_allow.
    #[arg(long, value_name = "HOST:PORT")]
    admin: Option<SocketAddr>,

    /// Access records: text (a log line on stderr), json (one object per line), off.
    #[arg(long, value_name = "FORMAT")]
    access_log: Option<String>,

    /// Write JSON access records to this file (reopened on SIGHUP) instead of stdout.
    #[arg(long, value_name = "PATH")]
    access_log_file: Option<PathBuf>,

    /// Listeners expect a PROXY protocol (v1/v2) header from a load balancer
    /// (proxy_protocol_from in the config; default: this host's loopback).
    #[arg(long)]
    proxy_protocol: bool,

    /// Certificate chain (PEM, leaf first) for https:// listeners; re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,

    /// Private key (PEM) for https:// listeners; re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            strategy: Some(self.strategy.clone()),
            upstream_auth: Some(self.upstream_auth.clone()),
            pac: self.pac.clone(),
            bypass: self.bypass.clone(),
            bind: self.bind.clone(),
            bind_mode: self.bind_mode.clone(),
            upstream_ca: self.upstream_ca.clone(),
            upstream_insecure: self.upstream_insecure,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            response_timeout: self.response_timeout,
            via_name: self.via_name.clone(),
            shutdown_grace: self.shutdown_grace,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            request_body_timeout: self.request_body_timeout,
            request_body_min_rate: self.request_body_min_rate,
            auth_file: self.auth_file.clone(),
            allow_clients: self.allow_clients.clone(),
            open: self.open,
            access_log: self.access_log.clone(),
            access_log_file: self.access_log_file.clone(),
            admin: self.admin,
            proxy_protocol: self.proxy_protocol,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    s.parse()
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
        Some(Command::Route {
            url,
            config,
            user,
            pac,
        }) => runtime.block_on(route(&url, config.as_deref(), user.as_deref(), pac)),
        Some(Command::Probe {
            url,
            upstream,
            cacert,
        }) => runtime.block_on(probe(cli.run.config.clone(), upstream, &url, cacert)),
        None => runtime.block_on(run(cli.run)),
    }
}

fn check(path: &Path) -> ExitCode {
    match runtime::load(Some(path), &Overrides::default(), false) {
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

async fn route(
    url: &str,
    config: Option<&Path>,
    user: Option<&str>,
    pac: Option<String>,
) -> ExitCode {
    let overrides = Overrides {
        pac,
        ..Overrides::default()
    };
    let config = match runtime::load(config, &overrides, false) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("viaduct: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let target = match config::target_of_url(url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("viaduct: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let resolver = DnsResolver::system_or_fallback();
    let decision = config.router.decide(&target, user, &*resolver).await;
    println!("target:  {target}");
    if let (viaduct::routing::Reason::Default, Some(src)) = (decision.reason, &config.pac) {
        let natives = viaduct::routing::autoconfig::engine::Natives::system(
            Arc::clone(&resolver),
            tokio::runtime::Handle::current(),
        );
        let pac = match viaduct::routing::autoconfig::PacHandle::new(src.clone(), natives) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("viaduct: {e}");
                return ExitCode::from(EX_USAGE);
            }
        };
        // A tunnel unless the URL says plain http.
        let tunnel = !url.starts_with("http://");
        match pac.decide(&target, tunnel).await {
            Ok(d) => {
                println!("matched: pac ({})", src.source);
                println!("pac:     {} -> {}", d.raw, d.action);
                println!("via:     {}", d.action);
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                println!("matched: pac ({})", src.source);
                println!("error:   {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("matched: {}", decision.reason);
    println!("via:     {}", decision.action);
    ExitCode::SUCCESS
}

async fn probe(
    config: Option<PathBuf>,
    upstream: Vec<String>,
    url: &str,
    cacert: Vec<PathBuf>,
) -> ExitCode {
    let overrides = Overrides {
        upstream,
        ..Overrides::default()
    };
    let config = match runtime::load(config.as_deref(), &overrides, false) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("viaduct: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    println!("probe {url}");
    let mut out = std::io::stdout();
    if viaduct::probe::run(
        config,
        DnsResolver::system_or_fallback(),
        url,
        cacert,
        &mut out,
    )
    .await
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let overrides = args.overrides();
    let config = match runtime::load(args.config.as_deref(), &overrides, false) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("viaduct: {e}");
            return ExitCode::from(EX_USAGE);
        }
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
    let listen = config.listen.clone();
    let admin_addr = config.admin.as_ref().map(|a| a.listen);
    viaduct::server::raise_descriptor_limit(config.limits.max_connections);
    let summary = config.router.default.to_string();
    let rules = config.router.rules.len();
    let users = config.auth.as_ref().map_or(0, |a| a.users.len());
    let deny_internal = config.access.destinations.deny_internal;
    let proxy = match Proxy::new(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("viaduct: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let mut listeners = Vec::new();
    for l in &listen {
        match tokio::net::TcpListener::bind(l.addr).await {
            Ok(bound) => listeners.push((bound, l.kind)),
            Err(e) => {
                eprintln!("viaduct: cannot listen on {l}: {e}");
                return ExitCode::FAILURE;
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
                return ExitCode::FAILURE;
            }
        }
    }
    let listen: Vec<String> = listen.iter().map(ToString::to_string).collect();
    tracing::info!(listen = ?listen, default = %summary, rules, users, deny_internal, "viaduct listening");
    // systemd (Type=notify): ready once every listener is bound. Without systemd, a no-op.
    notify(&[sd_notify::NotifyState::Ready]);
    #[cfg(unix)]
    let Signals { hup, term, int } = signals;
    // SIGHUP is always handled: with files it re-reads them; with none, it re-applies the
    // flags and reopens the access log file (logrotate sends it whatever the configuration).
    #[cfg(unix)]
    spawn_reloader(Arc::clone(&proxy), args.config.clone(), overrides, hup);
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

/// On SIGHUP: re-read the configuration file and the users file and put their routing, users
/// and access policy in force; a file that fails validation is logged and the running
/// configuration stays.
#[cfg(unix)]
fn spawn_reloader(
    proxy: Arc<Proxy>,
    path: Option<PathBuf>,
    overrides: Overrides,
    mut hup: tokio::signal::unix::Signal,
) {
    let inputs = Arc::new((path, overrides));
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            notify_reloading();
            // Reading the file is blocking I/O: never on the runtime, which keeps serving (and
            // timing out slow clients) whatever the file turns out to be.
            let read = Arc::clone(&inputs);
            let built = tokio::task::spawn_blocking(move || {
                runtime::load(read.0.as_deref(), &read.1, true)
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
