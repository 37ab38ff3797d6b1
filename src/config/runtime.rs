//! The runtime configuration: what a running viaduct uses ([`Config`], [`Limits`]), and the one
//! place where defaults, the file and the command line (or environment) are merged
//! ([`Overrides`], [`load`]). Adding a setting means: a field here, its place in the file model
//! (`config::mod`) and in [`Overrides`], and the code that uses it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::FileConfig;
use crate::pool::{Pool, PoolSettings, Strategy};
use crate::routing::{Action, Router, parse_no_proxy};
use crate::upstream::{Route, TlsOptions, redact};

/// Everything viaduct needs to run. `Config::default()` is the safe default: loopback, direct.
#[derive(Debug)]
pub struct Config {
    /// Where to accept clients. Default `127.0.0.1:8083` (loopback: nothing else can reach it).
    pub listen: Vec<SocketAddr>,
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
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8083))],
            router: Router::direct(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            response_timeout: Duration::from_secs(60),
            via_name: "viaduct".to_owned(),
            shutdown_grace: Duration::from_secs(5),
            tls: TlsOptions::default(),
            limits: Limits::default(),
        }
    }
}

/// What the command line (or the environment) sets; each `None` / empty: not given, the file
/// or the default applies.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Vec<SocketAddr>,
    /// Upstream URLs (each one hop or a comma chain); several make a pool.
    pub upstream: Vec<String>,
    /// The strategy of a pool made of several `upstream`s. Default `failover`.
    pub strategy: Option<String>,
    pub bypass: Option<String>,
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
    merge(file, overrides)
}

/// Defaults, then `file`, then `o`: the one place settings are merged.
///
/// # Errors
/// An invalid flag value, named, without echoing credentials.
pub fn merge(file: Option<FileConfig>, o: &Overrides) -> Result<Config, String> {
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
        upstream_router(&o.upstream, o.strategy.as_deref().unwrap_or("failover"))?
    };
    if let Some(bypass) = bypass {
        router.bypass = bypass;
    }
    let listen = if !o.listen.is_empty() {
        o.listen.clone()
    } else if !settings.listen.is_empty() {
        settings.listen
    } else {
        defaults.listen
    };
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
    })
}

/// The flag, else the file, else the default.
fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

/// Routing from upstream URLs given on the command line: one is used for everything; several
/// form a pool named `upstreams` with `strategy`.
fn upstream_router(urls: &[String], strategy: &str) -> Result<Router, String> {
    let routes = urls
        .iter()
        .map(|u| Route::parse(u).map_err(|e| redact(&format!("invalid value for --upstream: {e}"))))
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
        assert_eq!(c.listen, ["127.0.0.1:9000".parse::<SocketAddr>().unwrap()]);
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
