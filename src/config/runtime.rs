//! The runtime configuration: what a running viaduct uses ([`Config`], [`Limits`]), and the one
//! place where defaults, the file and the command line (or environment) are merged
//! ([`Overrides`], [`load`]). Adding a setting means: a field here, its place in the file model
//! (`config::mod`) and in [`Overrides`], and the code that uses it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{FileAuth, FileConfig, Settings, parse_cidr};
use crate::access::{Access, Clients, Destinations};
use crate::auth::{AuthSettings, Users};
use crate::pool::{Pool, PoolSettings, Strategy};
use crate::routing::{Action, Router, parse_no_proxy};
use crate::server::{Listen, ProxyProtocol};
use crate::session::access_log::Format;
use crate::upstream::{Route, TlsOptions, redact};

/// Everything viaduct needs to run. `Config::default()` is the safe default: loopback, direct.
#[derive(Debug)]
pub struct Config {
    /// Where to accept clients and what each address speaks. Default `127.0.0.1:8083`, HTTP
    /// and SOCKS on one port (loopback: nothing else can reach it).
    pub listen: Vec<Listen>,
    /// How to reach targets: bypass list, rules, pools, default. Default: everything direct.
    pub router: Router,
    /// Bound on a whole dial (DNS, TCP, every upstream handshake). Default 10 s.
    pub connect_timeout: Duration,
    /// A tunnel with no bytes either way for this long is closed. Default 10 min.
    pub idle_timeout: Duration,
    /// A forwarded plain request whose response head does not arrive within this gets 504.
    /// Default 60 s (nginx's proxy_read_timeout).
    pub response_timeout: Duration,
    /// Our name in `Via` and `Proxy-Status`, and how loops are recognised. Default `viaduct`.
    pub via_name: String,
    /// On SIGINT/SIGTERM, how long open work may finish before it is cut. Default 5 s.
    pub shutdown_grace: Duration,
    /// How HTTPS upstreams are trusted. Default: webpki roots, verification on.
    pub tls: TlsOptions,
    /// Client-side limits.
    pub limits: Limits,
    /// `[auth]`: clients must authenticate. Default: not asked (and then only loopback
    /// listeners start without `--allow-clients` or `--open`).
    pub auth: Option<AuthSettings>,
    /// Who may connect and where they may go. Default: anyone, anywhere (loopback only);
    /// internal destinations are denied when a listener is not on loopback.
    pub access: Access,
    /// Access records: `text` (default), `json`, `off`.
    pub access_log: Format,
    /// Where JSON access records go (default stdout); reopened on SIGHUP.
    pub access_log_file: Option<PathBuf>,
    /// The admin listener (metrics, status, PAC); off by default.
    pub admin: Option<AdminSettings>,
    /// The configuration file this came from, for the status page.
    pub config_file: Option<String>,
    /// `--pac` / `pac = "..."`: the PAC script consulted for what no rule matches.
    pub pac: Option<crate::routing::autoconfig::PacSource>,
    /// Listeners expect a PROXY protocol header from these balancers; off by default.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// The `https://` listeners' TLS (certificate chain and key, loaded).
    pub tls_listener: Option<Arc<rustls::ServerConfig>>,
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz`, `/status`, `/proxy.pac`.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// `Authorization: Bearer TOKEN` required when set.
    pub token: Option<String>,
    /// Client addresses that may use it (empty: any that reaches it).
    pub allow: Vec<ipnet::IpNet>,
    /// `host:port` the PAC file tells clients to use (default: the first listener).
    pub pac_proxy: Option<String>,
}

/// What one client may cost us. Defaults suit a proxy on a workstation or a small server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head accepted; past it: 431 and the connection is closed. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Most header fields in a request head; past it: 431. Default 100.
    pub max_headers: usize,
    /// A request head must arrive within this (slowloris); else 408 and close. It also closes
    /// idle keep-alive connections. Default 10 s.
    pub header_read_timeout: Duration,
    /// Open client connections at most; more are answered 503 and closed. Default 10,000.
    pub max_connections: usize,
    /// Open client connections per client IP at most (0: no limit). Default 0.
    pub max_connections_per_ip: usize,
    /// A forwarded request body that sends nothing for this long gets the client 408 and frees
    /// the origin connection. Default 30 s.
    pub request_body_timeout: Duration,
    /// `(grace, bytes per second)`: after the grace period a request body must average at least
    /// this rate, else 408 (Apache mod_reqtimeout's defaults: 20 s, then 500 bytes/s).
    /// `None`: no rate bound.
    pub request_body_min_rate: Option<(Duration, u64)>,
    /// Kept-alive upstream connections held idle in all, at most (the oldest are closed
    /// first). Default 256; 0 keeps none.
    pub max_idle_upstream: usize,
    /// An idle kept-alive upstream connection is closed after this. Default 90 s.
    pub upstream_idle_timeout: Duration,
    /// HTTP/2: streams (requests and tunnels) open at once on one client connection. 100.
    pub max_concurrent_streams: u32,
    /// Bytes per second each way, shared by all flows of one authenticated user. Reloadable.
    pub bandwidth_per_user: Option<u64>,
    /// Bytes per second each way, shared by all flows from one client address. Reloadable.
    pub bandwidth_per_ip: Option<u64>,
    /// `[limits.user_bandwidth]`: users with their own rate (`None`: unlimited).
    pub user_bandwidth: std::collections::HashMap<String, Option<u64>>,
    /// New connections per client address: (count, per period), with a burst of `count`;
    /// past it, 429 with `Retry-After`.
    pub new_connections_per_ip: Option<(u64, Duration)>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_ip: 0,
            request_body_timeout: Duration::from_secs(30),
            request_body_min_rate: Some((Duration::from_secs(20), 500)),
            max_idle_upstream: 256,
            upstream_idle_timeout: Duration::from_secs(90),
            max_concurrent_streams: 100,
            bandwidth_per_user: None,
            bandwidth_per_ip: None,
            user_bandwidth: std::collections::HashMap::new(),
            new_connections_per_ip: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![Listen::from(SocketAddr::from(([127, 0, 0, 1], 8083)))],
            router: Router::direct(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            response_timeout: Duration::from_secs(60),
            via_name: "viaduct".to_owned(),
            shutdown_grace: Duration::from_secs(5),
            tls: TlsOptions::default(),
            limits: Limits::default(),
            auth: None,
            access: Access::default(),
            access_log: Format::Text,
            access_log_file: None,
            admin: None,
            config_file: None,
            pac: None,
            proxy_protocol: None,
            tls_listener: None,
        }
    }
}

/// What the command line (or the environment) sets; each `None` / empty: not given, the file
/// or the default applies.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Vec<Listen>,
    /// Upstream URLs (each one hop or a comma chain); several make a pool.
    pub upstream: Vec<String>,
    /// The strategy of a pool made of several `upstream`s. Default `failover`.
    pub strategy: Option<String>,
    /// `--upstream-auth any|basic|ntlm|negotiate` for the `upstream`s. Default `any`.
    pub upstream_auth: Option<String>,
    /// `--pac PATH|http://URL`.
    pub pac: Option<String>,
    pub bypass: Option<String>,
    /// `--bind ADDR|CIDR`: where the default route's connections leave from.
    pub bind: Option<String>,
    /// `--bind-mode sticky|random`.
    pub bind_mode: Option<String>,
    pub upstream_ca: Vec<std::path::PathBuf>,
    pub upstream_insecure: bool,
    pub connect_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub response_timeout: Option<Duration>,
    pub via_name: Option<String>,
    pub shutdown_grace: Option<Duration>,
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub header_read_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub request_body_timeout: Option<Duration>,
    pub request_body_min_rate: Option<u64>,
    /// The users file (`--auth-file`); replaces the file's `[auth] file`.
    pub auth_file: Option<PathBuf>,
    /// Allowed client CIDRs, comma-separated (`--allow-clients`).
    pub allow_clients: Option<String>,
    /// `--open`: an open proxy beyond loopback is meant.
    pub open: bool,
    pub access_log: Option<String>,
    pub access_log_file: Option<PathBuf>,
    pub admin: Option<SocketAddr>,
    /// `--proxy-protocol`: listeners expect a PROXY header.
    pub proxy_protocol: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// Reads the file (when given) and merges: defaults, then the file, then `overrides`.
/// `reloading`: an empty file is refused (it would quietly turn every rule off). Blocking I/O:
/// call it off the async runtime.
///
/// # Errors
/// A one-line message naming the file, line and field, or the flag; never a credential.
pub fn load(path: Option<&Path>, overrides: &Overrides, reloading: bool) -> Result<Config, String> {
    let file = path
        .map(super::load)
        .transpose()
        .map_err(|e| e.to_string())?;
    if reloading
        && let (Some(path), Some(f)) = (path, &file)
        && f.empty
    {
        return Err(format!(
            "{}: the file is empty (truncated while being written?)",
            path.display()
        ));
    }
    let mut config = merge(file, overrides)?;
    config.config_file = path.map(|p| p.display().to_string());
    Ok(config)
}

/// Defaults, then `file`, then `o`: the one place settings are merged.
///
/// # Errors
/// An invalid flag value, named, without echoing credentials.
pub fn merge(file: Option<FileConfig>, o: &Overrides) -> Result<Config, String> {
    let defaults = Config::default();
    let (router, mut tls, settings, file_auth) = match file {
        Some(FileConfig {
            settings,
            tls,
            router,
            auth,
            ..
        }) => (Some(router), tls, settings, auth),
        None => (None, TlsOptions::default(), Default::default(), None),
    };
    tls.ca_files.extend(o.upstream_ca.iter().cloned());
    tls.insecure |= o.upstream_insecure;
    let bypass = o
        .bypass
        .as_deref()
        .map(parse_no_proxy)
        .transpose()
        .map_err(|entry| {
            format!("invalid value for --bypass: not a host, domain or CIDR: \"{entry}\"")
        })?;
    let mut router = if o.upstream.is_empty() {
        router.unwrap_or_else(Router::direct)
    } else {
        let auth = o
            .upstream_auth
            .as_deref()
            .map(str::parse::<crate::upstream::proxy_auth::AuthPolicy>)
            .transpose()
            .map_err(|e| format!("invalid value for --upstream-auth: {e}"))?
            .unwrap_or_default();
        upstream_router(
            &o.upstream,
            o.strategy.as_deref().unwrap_or("failover"),
            auth,
        )?
    };
    if let Some(bypass) = bypass {
        router.bypass = bypass;
    }
    if let Some(b) = &o.bind {
        let net = crate::upstream::bind::parse(b)
            .map_err(|m| format!("invalid value for --bind: {m}"))?;
        let mode = match o.bind_mode.as_deref() {
            None => crate::upstream::BindMode::default(),
            Some(m) => crate::upstream::BindMode::parse(m).ok_or_else(|| {
                format!("invalid value for --bind-mode: \"{m}\" (sticky, random)")
            })?,
        };
        let bind = Arc::new(crate::upstream::Bind::new(
            net,
            mode,
            super::DEFAULT_BIND_TTL,
        ));
        let default = std::mem::replace(&mut router.default, crate::routing::Action::Block);
        router.default = super::bind_action(default, bind)
            .map_err(|m| format!("invalid value for --bind: {m}"))?;
    } else if o.bind_mode.is_some() {
        return Err("--bind-mode needs --bind".into());
    }
    // The PAC script is read here (a file, or fetched), so that one that does not load is a
    // configuration error at start and a rejected reload later.
    let pac = match o.pac.clone().or_else(|| settings.pac.clone()) {
        Some(source) => {
            let source = if source == "system" {
                crate::routing::autoconfig::system_source(&|k| std::env::var(k).ok())?
            } else {
                source
            };
            let mut pac = crate::routing::autoconfig::PacSource {
                source,
                credentials: settings.pac_credentials.clone(),
                refresh: settings
                    .pac_refresh
                    .unwrap_or(crate::routing::autoconfig::DEFAULT_REFRESH),
                tls: tls.clone(),
                wpad_port: 80,
                ..Default::default()
            };
            let fetched = if pac.is_auto() {
                // WPAD needs the proxy's resolver: discovered once the proxy runs.
                Err(crate::routing::autoconfig::PacSource::auto()
                    .fetch_error
                    .unwrap_or_default())
            } else {
                crate::routing::autoconfig::fetch(&pac.source, Duration::from_secs(10), &tls)
            };
            match fetched {
                Ok(script) => pac.script = Some(script),
                // An unreachable URL (off the VPN, server down) does not stop the start: the
                // proxy fetches it again until it loads.
                Err(e) if pac.is_url() => pac.fetch_error = Some(e),
                Err(e) => return Err(e),
            }
            Some(pac)
        }
        None => None,
    };
    let listen = if !o.listen.is_empty() {
        o.listen.clone()
    } else if !settings.listen.is_empty() {
        settings.listen.clone()
    } else {
        defaults.listen
    };
    let auth = auth_settings(file_auth, o)?;
    let addrs: Vec<SocketAddr> = listen.iter().map(|l| l.addr).collect();
    let admin = admin_settings(&settings, o, &addrs)?;
    let tls_listener = match (
        o.tls_cert.clone().or(settings.tls_cert.clone()),
        o.tls_key.clone().or(settings.tls_key.clone()),
    ) {
        (Some(cert), Some(key)) => Some(crate::server::tls::server_config(&cert, &key)?),
        (None, None) => None,
        _ => return Err("a TLS listener needs both a certificate chain and a key (--tls-cert and --tls-key, or [tls] cert and key)".into()),
    };
    if tls_listener.is_none()
        && let Some(l) = listen
            .iter()
            .find(|l| l.kind == crate::server::ListenKind::Https)
    {
        return Err(format!(
            "{l} needs a certificate: --tls-cert FILE --tls-key FILE (config [tls] cert, key)"
        ));
    }
    let proxy_protocol = (o.proxy_protocol || settings.proxy_protocol).then(|| ProxyProtocol {
        from: if settings.proxy_protocol_from.is_empty() {
            // A balancer on this host: the usual sidecar.
            vec![
                "127.0.0.0/8"
                    .parse()
                    .unwrap_or_else(|_| ipnet::IpNet::default()),
                "::1/128"
                    .parse()
                    .unwrap_or_else(|_| ipnet::IpNet::default()),
            ]
        } else {
            settings.proxy_protocol_from.clone()
        },
        timeout: pick(
            o.header_read_timeout,
            settings.limits.header_read_timeout,
            defaults.limits.header_read_timeout,
        ),
    });
    let access_log = match &o.access_log {
        Some(f) => Format::parse(f)
            .ok_or_else(|| format!("invalid value for --access-log: \"{f}\" (text, json, off)"))?,
        None => settings.access_log.unwrap_or_default(),
    };
    let access = access(&settings, &addrs, o)?;
    if let Some(n) = router.matches_users()
        && auth.is_none()
    {
        return Err(format!(
            "rules[{n}] matches users, but there is no [auth]: without it a user name is whatever a client claims. Add [auth] file = \"users.htpasswd\" (or --auth-file FILE)"
        ));
    }
    if (settings.limits.bandwidth_per_user.is_some() || !settings.limits.user_bandwidth.is_empty())
        && auth.is_none()
    {
        return Err("[limits] bandwidth_per_user applies to authenticated users, but there is no [auth]: add [auth] file = \"users.htpasswd\" (or --auth-file FILE), or limit per client address with bandwidth_per_ip".into());
    }
    if !crate::access::loopback_only(&addrs)
        && auth.is_none()
        && access.clients.allow.is_empty()
        && !(o.open || settings.open)
    {
        let addrs: Vec<String> = listen.iter().map(ToString::to_string).collect();
        return Err(format!(
            "listening on {} (beyond loopback) with neither [auth] nor allowed clients would run an open proxy: add --auth-file FILE or --allow-clients CIDR, or --open (config: open = true) if an open proxy is meant",
            addrs.join(", ")
        ));
    }
    let (file, d) = (&settings.limits, &defaults.limits);
    let min_rate = {
        let default = d.request_body_min_rate.unwrap_or_default();
        let grace = file.request_body_grace.unwrap_or(default.0);
        match pick(
            o.request_body_min_rate,
            file.request_body_min_rate,
            default.1,
        ) {
            0 => None,
            rate => Some((grace, rate)),
        }
    };
    // Each setting: the flag, else the file, else the default.
    let limits = Limits {
        max_header_bytes: pick(
            o.max_header_bytes,
            file.max_header_bytes,
            d.max_header_bytes,
        ),
        max_headers: pick(o.max_headers, file.max_headers, d.max_headers),
        header_read_timeout: pick(
            o.header_read_timeout,
            file.header_read_timeout,
            d.header_read_timeout,
        ),
        max_connections: pick(o.max_connections, file.max_connections, d.max_connections),
        max_connections_per_ip: pick(
            o.max_connections_per_ip,
            file.max_connections_per_ip,
            d.max_connections_per_ip,
        ),
        request_body_timeout: pick(
            o.request_body_timeout,
            file.request_body_timeout,
            d.request_body_timeout,
        ),
        request_body_min_rate: min_rate,
        max_idle_upstream: pick(None, file.max_idle_upstream, d.max_idle_upstream),
        upstream_idle_timeout: pick(None, file.upstream_idle_timeout, d.upstream_idle_timeout),
        max_concurrent_streams: pick(None, file.max_concurrent_streams, d.max_concurrent_streams),
        bandwidth_per_user: file.bandwidth_per_user.or(d.bandwidth_per_user),
        bandwidth_per_ip: file.bandwidth_per_ip.or(d.bandwidth_per_ip),
        user_bandwidth: file.user_bandwidth.clone(),
        new_connections_per_ip: file.new_connections_per_ip.or(d.new_connections_per_ip),
    };
    Ok(Config {
        listen,
        router,
        connect_timeout: pick(
            o.connect_timeout,
            settings.connect_timeout,
            defaults.connect_timeout,
        ),
        idle_timeout: pick(o.idle_timeout, settings.idle_timeout, defaults.idle_timeout),
        response_timeout: pick(
            o.response_timeout,
            settings.response_timeout,
            defaults.response_timeout,
        ),
        via_name: pick(o.via_name.clone(), settings.via_name, defaults.via_name),
        shutdown_grace: pick(
            o.shutdown_grace,
            settings.shutdown_grace,
            defaults.shutdown_grace,
        ),
        tls,
        limits,
        auth,
        access,
        access_log,
        access_log_file: o
            .access_log_file
            .clone()
            .or(settings.access_log_file.clone()),
        admin,
        config_file: None,
        pac,
        proxy_protocol,
        tls_listener,
    })
}

/// The admin listener: off unless an address is given; beyond loopback only with a token or
/// an allow list.
fn admin_settings(
    settings: &Settings,
    o: &Overrides,
    listen: &[SocketAddr],
) -> Result<Option<AdminSettings>, String> {
    let Some(addr) = o.admin.or(settings.admin) else {
        return Ok(None);
    };
    let token = settings.admin_token.clone().filter(|t| !t.is_empty());
    if !crate::access::loopback_only(&[addr]) && token.is_none() && settings.admin_allow.is_empty()
    {
        return Err(format!(
            "the admin listener on {addr} (beyond loopback) would be open to anyone: set admin_token = \"${{ADMIN_TOKEN}}\" or admin_allow = [CIDR...], or listen on loopback"
        ));
    }
    Ok(Some(AdminSettings {
        listen: addr,
        token,
        allow: settings.admin_allow.clone(),
        pac_proxy: settings
            .pac_proxy
            .clone()
            .or_else(|| listen.first().map(ToString::to_string)),
    }))
}

/// `[auth]` with `--auth-file` over its `file`; the users file is read here (blocking I/O).
fn auth_settings(file: Option<FileAuth>, o: &Overrides) -> Result<Option<AuthSettings>, String> {
    let file = file.unwrap_or_default();
    let Some(path) = o.auth_file.clone().or(file.file) else {
        return match (file.realm, file.max_connections_per_user) {
            (None, None) => Ok(None),
            _ => Err(
                "[auth] needs a users file: file = \"users.htpasswd\" (or --auth-file FILE)".into(),
            ),
        };
    };
    let users = Users::load(&path).map_err(|e| e.to_string())?;
    if users.is_empty() {
        return Err(format!("{}: no users in the file", path.display()));
    }
    let d = AuthSettings::new(Users::default());
    Ok(Some(AuthSettings {
        users,
        realm: file.realm.unwrap_or(d.realm),
        max_per_user: file.max_connections_per_user.unwrap_or(d.max_per_user),
        max_failures: file.max_failures.unwrap_or(d.max_failures),
        lockout: file.lockout.unwrap_or(d.lockout),
    }))
}

/// `[access]` with `--allow-clients` over its `clients`; internal destinations denied when a
/// listener is not on loopback.
fn access(settings: &Settings, listen: &[SocketAddr], o: &Overrides) -> Result<Access, String> {
    let file = &settings.access;
    let clients = match &o.allow_clients {
        Some(list) => list
            .split(',')
            .filter(|c| !c.trim().is_empty())
            .map(|c| parse_cidr(c).map_err(|e| format!("invalid value for --allow-clients: {e}")))
            .collect::<Result<Vec<_>, _>>()?,
        None => file.clients.clone().unwrap_or_default(),
    };
    Ok(Access {
        clients: Clients { allow: clients },
        destinations: Destinations {
            deny: file.deny.clone(),
            allow: file.allow.clone(),
            connect_ports: file.connect_ports.clone(),
            deny_internal: !crate::access::loopback_only(listen),
        },
    })
}

/// The flag, else the file, else the default.
fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

/// Routing from upstream URLs given on the command line: one is used for everything; several
/// form a pool named `upstreams` with `strategy`.
fn upstream_router(
    urls: &[String],
    strategy: &str,
    auth: crate::upstream::proxy_auth::AuthPolicy,
) -> Result<Router, String> {
    let routes = urls
        .iter()
        .map(|u| {
            Route::parse(u)
                .map(|r| r.with_auth(auth, None))
                .map_err(|e| redact(&format!("invalid value for --upstream: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let [route] = routes.as_slice() {
        return Ok(Router::single(route.clone()));
    }
    let strategy = Strategy::parse(strategy).ok_or_else(|| {
        format!("invalid value for --strategy: \"{strategy}\" (failover, round-robin, random, least-connections, sticky)")
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
        pac: None,
        bypass: None,
        rules: Vec::new(),
        default: Action::Pool(Arc::new(pool)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags beat the file, the file beats the defaults; a flag left out leaves the file's.
    #[test]
    fn flags_then_file_then_defaults() {
        let file = super::super::parse(
            "listen = [\"127.0.0.1:9000\"]\nidle_timeout = \"1m\"\nconnect_timeout = \"3s\"\n[limits]\nmax_headers = 50\nrequest_body_min_rate = 0\n",
            "t.toml",
        )
        .unwrap();
        let o = Overrides {
            connect_timeout: Some(Duration::from_secs(7)),
            max_connections: Some(12),
            ..Overrides::default()
        };
        let c = merge(Some(file), &o).unwrap();
        assert_eq!(c.listen, ["127.0.0.1:9000".parse::<Listen>().unwrap()]);
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.connect_timeout, Duration::from_secs(7));
        assert_eq!(c.limits.max_headers, 50);
        assert_eq!(c.limits.max_connections, 12);
        assert_eq!(c.limits.request_body_min_rate, None);
        assert_eq!(c.response_timeout, Config::default().response_timeout);
        let d = merge(None, &Overrides::default()).unwrap();
        assert_eq!(d.listen, Config::default().listen);
        assert_eq!(
            d.limits.request_body_min_rate,
            Some((Duration::from_secs(20), 500))
        );
    }

    /// `users` rules need `[auth]`; an `[auth]` needs its users file, read and checked here
    /// with its line numbers.
    #[test]
    fn users_rules_need_auth_and_users_files_are_checked() {
        let file = super::super::parse(
            "[upstreams]\na = \"http://a:1\"\n[[rules]]\nmatch = { users = [\"bob\"] }\nvia = \"a\"\n",
            "t.toml",
        )
        .unwrap();
        let e = merge(Some(file), &Overrides::default()).unwrap_err();
        assert!(e.contains("rules[1]") && e.contains("no [auth]"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        std::fs::write(
            &users,
            "alice:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\nbob:hunter2\n",
        )
        .unwrap();
        let o = Overrides {
            auth_file: Some(users.clone()),
            ..Overrides::default()
        };
        let e = merge(None, &o).unwrap_err();
        assert!(
            e.starts_with(&format!("{}:2: user \"bob\"", users.display())),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        std::fs::write(&users, "alice:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\n").unwrap();
        let c = merge(None, &o).unwrap();
        assert_eq!(c.auth.map(|a| a.users.len()), Some(1));
        let e = merge(
            None,
            &Overrides {
                allow_clients: Some("10.0.0.0/8,nonsense".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert!(
            e.contains("--allow-clients") && e.contains("nonsense"),
            "{e}"
        );
    }

    /// The admin listener beyond loopback needs a token or an allow list; `${ADMIN_TOKEN}`
    /// comes from the environment.
    #[test]
    fn admin_beyond_loopback_needs_a_token_or_allow_list() {
        let o = Overrides {
            admin: Some("0.0.0.0:9383".parse().unwrap()),
            ..Overrides::default()
        };
        let e = merge(None, &o).unwrap_err();
        assert!(
            e.contains("admin_token") && e.contains("admin_allow"),
            "{e}"
        );
        let file = super::super::parse("admin_allow = [\"10.0.0.0/8\"]\n", "t.toml").unwrap();
        let c = merge(Some(file), &o).unwrap();
        assert_eq!(c.admin.unwrap().allow.len(), 1);
        let local = merge(
            None,
            &Overrides {
                admin: Some("127.0.0.1:9383".parse().unwrap()),
                access_log: Some("json".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(
            local.admin.unwrap().pac_proxy.as_deref(),
            Some("127.0.0.1:8083")
        );
        assert_eq!(local.access_log, Format::Json);
        let bad = Overrides {
            access_log: Some("xml".into()),
            ..Overrides::default()
        };
        assert!(merge(None, &bad).unwrap_err().contains("--access-log"));
    }

    /// Several upstreams make a pool with the strategy asked for; a bad URL or strategy is a
    /// named error that never shows the credentials.
    #[test]
    fn upstream_flags_make_routes_and_pools() {
        let o = Overrides {
            upstream: vec!["http://a:1".into(), "socks5h://u:p@b:2".into()],
            strategy: Some("round-robin".into()),
            ..Overrides::default()
        };
        let c = merge(None, &o).unwrap();
        let pools = c.router.pools();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].members.len(), 2);
        assert_eq!(pools[0].settings.strategy, Strategy::RoundRobin);
        let bad = Overrides {
            upstream: vec!["alice:s3cret@h:1".into()],
            ..Overrides::default()
        };
        let e = merge(None, &bad).unwrap_err();
        assert!(
            e.starts_with("invalid value for --upstream") && !e.contains("s3cret"),
            "{e}"
        );
        let bad = Overrides {
            upstream: vec!["http://a:1".into(), "http://b:1".into()],
            strategy: Some("fastest".into()),
            ..Overrides::default()
        };
        assert!(merge(None, &bad).unwrap_err().contains("--strategy"));
    }
}
