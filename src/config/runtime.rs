//! The runtime configuration ([`Config`]) and the one place where defaults, the file and the
//! command line (or environment) are merged ([`load`], [`merge`]). The plain settings come
//! whole from `settings` (defaults, overwritten by the file's keys, then by the flags); this
//! module builds what needs more than one setting (routing from `--upstream`, the admin
//! listener, PAC, the TLS listener) and refuses combinations that would be unsafe.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::settings::{Limits, Settings};
use super::{ConfigError, FileAuth, FileConfig, RunFlags, parse_cidr};
use crate::access::{Access, Clients, Destinations};
use crate::auth::{AuthSettings, Users};
use crate::pool::{Pool, PoolSettings, Strategy};
use crate::routing::{Action, Router, parse_no_proxy};
use crate::server::{Listen, ProxyProtocol};
use crate::upstream::{Route, TlsOptions, redact};

/// Everything viaduct needs to run. `Config::default()` is the safe default: loopback, direct.
#[derive(Debug)]
pub struct Config {
    /// Where to accept clients and what each address speaks. Default `127.0.0.1:8083`, HTTP
    /// and SOCKS on one port (loopback: nothing else can reach it).
    pub listen: Vec<Listen>,
    /// The plain settings (timeouts, names, logs): see `config::settings`.
    pub settings: Settings,
    /// `[limits]`: what one client may cost.
    pub limits: Limits,
    /// How to reach targets: bypass list, rules, pools, default. Default: everything direct.
    pub router: Router,
    /// How HTTPS upstreams are trusted. Default: webpki roots, verification on.
    pub tls: TlsOptions,
    /// `[auth]`: clients must authenticate. Default: not asked (and then only loopback
    /// listeners start without `--allow-clients` or `--open`).
    pub auth: Option<AuthSettings>,
    /// Who may connect and where they may go. Default: anyone, anywhere (loopback only);
    /// internal destinations are denied when a listener is not on loopback.
    pub access: Access,
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
    /// `/proxy.pac` without the token.
    pub pac_public: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![Listen::from(SocketAddr::from(([127, 0, 0, 1], 8083)))],
            settings: Settings::default(),
            limits: Limits::default(),
            router: Router::direct(),
            tls: TlsOptions::default(),
            auth: None,
            access: Access::default(),
            admin: None,
            config_file: None,
            pac: None,
            proxy_protocol: None,
            tls_listener: None,
        }
    }
}

/// Why a configuration was not loaded; its message names the file and line, or the flag,
/// and never a credential.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file: located (file, line, column, field).
    #[error(transparent)]
    File(#[from] ConfigError),
    /// A flag's value.
    #[error("invalid value for --{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    /// Settings that need another, or that would be unsafe together (an open proxy, an admin
    /// listener open to anyone).
    #[error("{0}")]
    Refused(String),
    /// A file the configuration names (users, certificates, a PAC script) does not load.
    #[error("{0}")]
    Named(String),
}

impl LoadError {
    fn flag(flag: &'static str, message: impl Into<String>) -> Self {
        Self::Flag {
            flag,
            message: message.into(),
        }
    }
}

/// Reads the file (when given) and merges: defaults, then the file, then `flags`.
/// `reloading`: an empty file is refused (it would quietly turn every rule off). Blocking I/O:
/// call it off the async runtime.
///
/// # Errors
/// A one-line message naming the file, line and field, or the flag; never a credential.
pub fn load(path: Option<&Path>, flags: &RunFlags, reloading: bool) -> Result<Config, LoadError> {
    let file = path.map(super::load).transpose()?;
    if reloading
        && let (Some(path), Some(f)) = (path, &file)
        && f.empty
    {
        return Err(LoadError::Named(format!(
            "{}: the file is empty (truncated while being written?)",
            path.display()
        )));
    }
    let mut config = merge(file, flags)?;
    config.config_file = path.map(|p| p.display().to_string());
    Ok(config)
}

/// Defaults, then `file`, then the flags `f`: the one place settings are merged.
///
/// # Errors
/// An invalid flag value, named, without echoing credentials; settings refused together.
pub fn merge(file: Option<FileConfig>, f: &RunFlags) -> Result<Config, LoadError> {
    let file = file.unwrap_or_default();
    let mut settings = file.settings;
    f.settings.apply(&mut settings);
    let mut limits = file.limits;
    f.limits.apply(&mut limits);
    let tls = TlsOptions {
        ca_files: settings.upstream_ca.clone(),
        insecure: settings.upstream_insecure,
    };
    let router = router(file.router, f)?;
    let pac = pac(&settings, file.pac_credentials, &tls)?;
    let listen = if !f.listen.is_empty() {
        f.listen.clone()
    } else if !file.listen.is_empty() {
        file.listen
    } else {
        Config::default().listen
    };
    let auth = auth_settings(file.auth, f)?;
    let addrs: Vec<SocketAddr> = listen.iter().map(|l| l.addr).collect();
    let admin = admin_settings(&settings, file.admin_token, &addrs)?;
    let tls_listener = match (
        f.tls_cert.clone().or(file.tls_cert),
        f.tls_key.clone().or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => Some(
            crate::server::tls::server_config(&cert, &key).map_err(LoadError::Named)?,
        ),
        (None, None) => None,
        _ => return Err(LoadError::Refused("a TLS listener needs both a certificate chain and a key (--tls-cert and --tls-key, or [tls] cert and key)".into())),
    };
    if tls_listener.is_none()
        && let Some(l) = listen
            .iter()
            .find(|l| l.kind == crate::server::ListenKind::Https)
    {
        return Err(LoadError::Refused(format!(
            "{l} needs a certificate: --tls-cert FILE --tls-key FILE (config [tls] cert, key)"
        )));
    }
    let proxy_protocol = settings.proxy_protocol.then(|| ProxyProtocol {
        from: settings.proxy_protocol_from.clone(),
        timeout: limits.header_read_timeout,
    });
    let access = access(file.access, &addrs, f)?;
    refuse_unsafe(&router, &auth, &access, &settings, &limits, &listen)?;
    Ok(Config {
        listen,
        settings,
        limits,
        router,
        tls,
        auth,
        access,
        admin,
        config_file: None,
        pac,
        proxy_protocol,
        tls_listener,
    })
}

/// The file's routing, or `--upstream`'s; `--bypass` and `--bind` over either.
fn router(file: Router, f: &RunFlags) -> Result<Router, LoadError> {
    let bypass = f
        .bypass
        .as_deref()
        .map(parse_no_proxy)
        .transpose()
        .map_err(|entry| {
            LoadError::flag("bypass", format!("not a host, domain or CIDR: \"{entry}\""))
        })?;
    let mut router = if f.upstream.is_empty() {
        file
    } else {
        let auth = f
            .upstream_auth
            .as_deref()
            .map(str::parse::<crate::upstream::proxy_auth::AuthPolicy>)
            .transpose()
            .map_err(|e| LoadError::flag("upstream-auth", e.to_string()))?
            .unwrap_or_default();
        upstream_router(
            &f.upstream,
            f.strategy.as_deref().unwrap_or("failover"),
            auth,
        )?
    };
    if let Some(bypass) = bypass {
        router.bypass = bypass;
    }
    if let Some(b) = &f.bind {
        let net = crate::upstream::bind::parse(b).map_err(|m| LoadError::flag("bind", m))?;
        let mode = match f.bind_mode.as_deref() {
            None => crate::upstream::BindMode::default(),
            Some(m) => crate::upstream::BindMode::parse(m)
                .ok_or_else(|| LoadError::flag("bind-mode", format!("\"{m}\" (sticky, random)")))?,
        };
        let bind = Arc::new(crate::upstream::Bind::new(
            net,
            mode,
            super::DEFAULT_BIND_TTL,
        ));
        let default = std::mem::replace(&mut router.default, Action::Block);
        router.default =
            super::bind_action(default, bind).map_err(|m| LoadError::flag("bind", m))?;
    } else if f.bind_mode.is_some() {
        return Err(LoadError::Refused("--bind-mode needs --bind".into()));
    }
    Ok(router)
}

/// The PAC script, read here (a file, or fetched), so that one that does not load is a
/// configuration error at start and a rejected reload later.
fn pac(
    settings: &Settings,
    credentials: std::collections::HashMap<String, String>,
    tls: &TlsOptions,
) -> Result<Option<crate::routing::autoconfig::PacSource>, LoadError> {
    use crate::routing::autoconfig::{PacSource, fetch, system_source};
    let Some(source) = settings.pac.clone() else {
        return Ok(None);
    };
    let source = if source == "system" {
        system_source(&|k| std::env::var(k).ok()).map_err(LoadError::Named)?
    } else {
        source
    };
    let mut pac = PacSource {
        source,
        credentials,
        refresh: settings.pac_refresh,
        tls: tls.clone(),
        wpad_port: 80,
        ..Default::default()
    };
    let fetched = if pac.is_auto() {
        // WPAD needs the proxy's resolver: discovered once the proxy runs.
        Err(PacSource::auto().fetch_error.unwrap_or_default())
    } else {
        fetch(&pac.source, Duration::from_secs(10), tls)
    };
    match fetched {
        Ok(script) => pac.script = Some(script),
        // An unreachable URL (off the VPN, server down) does not stop the start: the proxy
        // fetches it again until it loads.
        Err(e) if pac.is_url() => pac.fetch_error = Some(e),
        Err(e) => return Err(LoadError::Named(e)),
    }
    Ok(Some(pac))
}

/// Combinations refused at start (and at a reload): each says what to add.
fn refuse_unsafe(
    router: &Router,
    auth: &Option<AuthSettings>,
    access: &Access,
    settings: &Settings,
    limits: &Limits,
    listen: &[Listen],
) -> Result<(), LoadError> {
    if let Some(n) = router.matches_users()
        && auth.is_none()
    {
        return Err(LoadError::Refused(format!(
            "rules[{n}] matches users, but there is no [auth]: without it a user name is whatever a client claims. Add [auth] file = \"users.htpasswd\" (or --auth-file FILE)"
        )));
    }
    if (limits.bandwidth_per_user.is_some() || !limits.user_bandwidth.is_empty()) && auth.is_none()
    {
        return Err(LoadError::Refused("[limits] bandwidth_per_user applies to authenticated users, but there is no [auth]: add [auth] file = \"users.htpasswd\" (or --auth-file FILE), or limit per client address with bandwidth_per_ip".into()));
    }
    let addrs: Vec<SocketAddr> = listen.iter().map(|l| l.addr).collect();
    if !crate::access::loopback_only(&addrs)
        && auth.is_none()
        && access.clients.allow.is_empty()
        && !settings.open
    {
        let addrs: Vec<String> = listen.iter().map(ToString::to_string).collect();
        return Err(LoadError::Refused(format!(
            "listening on {} (beyond loopback) with neither [auth] nor allowed clients would run an open proxy: add --auth-file FILE or --allow-clients CIDR, or --open (config: open = true) if an open proxy is meant",
            addrs.join(", ")
        )));
    }
    Ok(())
}

/// The admin listener: off unless an address is given; beyond loopback only with a token or
/// an allow list.
fn admin_settings(
    settings: &Settings,
    token: Option<String>,
    listen: &[SocketAddr],
) -> Result<Option<AdminSettings>, LoadError> {
    let Some(addr) = settings.admin else {
        return Ok(None);
    };
    let token = token.filter(|t| !t.is_empty());
    if !crate::access::loopback_only(&[addr]) && token.is_none() && settings.admin_allow.is_empty()
    {
        return Err(LoadError::Refused(format!(
            "the admin listener on {addr} (beyond loopback) would be open to anyone: set admin_token = \"${{ADMIN_TOKEN}}\" or admin_allow = [CIDR...], or listen on loopback"
        )));
    }
    Ok(Some(AdminSettings {
        listen: addr,
        token,
        allow: settings.admin_allow.clone(),
        pac_public: settings.pac_public,
        pac_proxy: settings
            .pac_proxy
            .clone()
            .or_else(|| listen.first().map(ToString::to_string)),
    }))
}

/// `[auth]` with `--auth-file` over its `file`; the users file is read here (blocking I/O).
fn auth_settings(file: Option<FileAuth>, f: &RunFlags) -> Result<Option<AuthSettings>, LoadError> {
    let file = file.unwrap_or_default();
    let Some(path) = f.auth_file.clone().or(file.file) else {
        return match (file.realm, file.max_connections_per_user) {
            (None, None) => Ok(None),
            _ => Err(LoadError::Refused(
                "[auth] needs a users file: file = \"users.htpasswd\" (or --auth-file FILE)".into(),
            )),
        };
    };
    let users = Users::load(&path).map_err(|e| LoadError::Named(e.to_string()))?;
    if users.is_empty() {
        return Err(LoadError::Named(format!(
            "{}: no users in the file",
            path.display()
        )));
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
fn access(
    file: super::FileAccess,
    listen: &[SocketAddr],
    f: &RunFlags,
) -> Result<Access, LoadError> {
    let clients = match &f.allow_clients {
        Some(list) => list
            .split(',')
            .filter(|c| !c.trim().is_empty())
            .map(|c| parse_cidr(c).map_err(|e| LoadError::flag("allow-clients", e)))
            .collect::<Result<Vec<_>, _>>()?,
        None => file.clients.unwrap_or_default(),
    };
    Ok(Access {
        clients: Clients { allow: clients },
        destinations: Destinations {
            deny: file.deny,
            allow: file.allow,
            connect_ports: file.connect_ports,
            deny_internal: !crate::access::loopback_only(listen),
        },
    })
}

/// Routing from upstream URLs given on the command line: one is used for everything; several
/// form a pool named `upstreams` with `strategy`.
fn upstream_router(
    urls: &[String],
    strategy: &str,
    auth: crate::upstream::proxy_auth::AuthPolicy,
) -> Result<Router, LoadError> {
    let routes = urls
        .iter()
        .map(|u| {
            Route::parse(u)
                .map(|r| r.with_auth(auth, None))
                .map_err(|e| LoadError::flag("upstream", redact(&e.to_string())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let [route] = routes.as_slice() {
        return Ok(Router::single(route.clone()));
    }
    let strategy = Strategy::parse(strategy).ok_or_else(|| {
        LoadError::flag(
            "strategy",
            format!("\"{strategy}\" (failover, round-robin, random, least-connections, sticky)"),
        )
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
    use crate::session::access_log::Format;

    fn flags(args: &[&str]) -> RunFlags {
        RunFlags::parse_args(args).unwrap()
    }

    fn refused(file: Option<FileConfig>, args: &[&str]) -> String {
        merge(file, &flags(args)).unwrap_err().to_string()
    }

    /// Flags beat the file, the file beats the defaults; a flag left out leaves the file's.
    #[test]
    fn flags_then_file_then_defaults() {
        let file = super::super::parse(
            "listen = [\"127.0.0.1:9000\"]\nidle_timeout = \"1m\"\nconnect_timeout = \"3s\"\n[limits]\nmax_headers = 50\nrequest_body_min_rate = 0\n",
            "t.toml",
        )
        .unwrap();
        let c = merge(
            Some(file),
            &flags(&["--connect-timeout", "7s", "--max-connections", "12"]),
        )
        .unwrap();
        assert_eq!(c.listen, ["127.0.0.1:9000".parse::<Listen>().unwrap()]);
        assert_eq!(c.settings.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.settings.connect_timeout, Duration::from_secs(7));
        assert_eq!(c.limits.max_headers, 50);
        assert_eq!(c.limits.max_connections, 12);
        assert_eq!(c.limits.request_body_min_rate(), None);
        assert_eq!(
            c.settings.response_timeout,
            Settings::default().response_timeout
        );
        let d = merge(None, &RunFlags::default()).unwrap();
        assert_eq!(d.listen, Config::default().listen);
        assert_eq!(
            d.limits.request_body_min_rate(),
            Some((Duration::from_secs(20), 500))
        );
        // A boolean flag takes no value; `=false` turns off what the file turned on.
        let file = super::super::parse("proxy_protocol = true\n", "t.toml").unwrap();
        let off = merge(Some(file), &flags(&["--proxy-protocol=false"])).unwrap();
        assert!(off.proxy_protocol.is_none());
        let on = merge(None, &flags(&["--proxy-protocol"])).unwrap();
        assert_eq!(on.proxy_protocol.map(|p| p.from.len()), Some(2));
    }

    /// A flag's bad value is clap's error, naming the flag and what it takes.
    #[test]
    fn bad_flag_values_are_named() {
        let e = RunFlags::parse_args(["--idle-timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--idle-timeout") && e.contains("soon"), "{e}");
        let e = RunFlags::parse_args(["--bandwidth-per-ip", "fast"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("10MB/s"), "{e}");
        let f = flags(&["--user-bandwidth", "bob=unlimited,carol=1MB/s"]);
        let c = merge(None, &f);
        // Per-user rates need [auth]: refused in words, not silently ignored.
        assert!(
            c.unwrap_err().to_string().contains("bandwidth_per_user"),
            "per-user rates without [auth]"
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
        let e = refused(Some(file), &[]);
        assert!(e.contains("rules[1]") && e.contains("no [auth]"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        std::fs::write(
            &users,
            "alice:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\nbob:hunter2\n",
        )
        .unwrap();
        let path = users.display().to_string();
        let e = refused(None, &["--auth-file", &path]);
        assert!(
            e.starts_with(&format!("{}:2: user \"bob\"", users.display())),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        std::fs::write(&users, "alice:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\n").unwrap();
        let c = merge(None, &flags(&["--auth-file", &path])).unwrap();
        assert_eq!(c.auth.map(|a| a.users.len()), Some(1));
        let e = refused(None, &["--allow-clients", "10.0.0.0/8,nonsense"]);
        assert!(
            e.contains("--allow-clients") && e.contains("nonsense"),
            "{e}"
        );
    }

    /// The admin listener beyond loopback needs a token or an allow list.
    #[test]
    fn admin_beyond_loopback_needs_a_token_or_allow_list() {
        let e = refused(None, &["--admin", "0.0.0.0:9383"]);
        assert!(
            e.contains("admin_token") && e.contains("admin_allow"),
            "{e}"
        );
        let file = super::super::parse("admin_allow = [\"10.0.0.0/8\"]\n", "t.toml").unwrap();
        let c = merge(Some(file), &flags(&["--admin", "0.0.0.0:9383"])).unwrap();
        assert_eq!(c.admin.unwrap().allow.len(), 1);
        let local = merge(
            None,
            &flags(&["--admin", "127.0.0.1:9383", "--access-log", "json"]),
        )
        .unwrap();
        assert_eq!(
            local.admin.unwrap().pac_proxy.as_deref(),
            Some("127.0.0.1:8083")
        );
        assert_eq!(local.settings.access_log, Format::Json);
        let e = RunFlags::parse_args(["--access-log", "xml"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--access-log") && e.contains("xml"), "{e}");
    }

    /// Several upstreams make a pool with the strategy asked for; a bad URL or strategy is a
    /// named error that never shows the credentials.
    #[test]
    fn upstream_flags_make_routes_and_pools() {
        let c = merge(
            None,
            &flags(&[
                "--upstream",
                "http://a:1",
                "--upstream",
                "socks5h://u:p@b:2",
                "--strategy",
                "round-robin",
            ]),
        )
        .unwrap();
        let pools = c.router.pools();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].members.len(), 2);
        assert_eq!(pools[0].settings.strategy, Strategy::RoundRobin);
        let e = refused(None, &["--upstream", "alice:s3cret@h:1"]);
        assert!(
            e.starts_with("invalid value for --upstream") && !e.contains("s3cret"),
            "{e}"
        );
        let e = refused(
            None,
            &[
                "--upstream",
                "http://a:1",
                "--upstream",
                "http://b:1",
                "--strategy",
                "fastest",
            ],
        );
        assert!(e.contains("--strategy"), "{e}");
    }
}
