//! The configuration file: TOML, parsed into a raw model close to the file, then validated and
//! built into runtime objects ([`Router`] with its pools and matchers).
//!
//! Every error names the file, line, column and field (`viaduct.toml:14:12: pools.res.strategy:
//! unknown strategy "fastest"`), and is found before any port is bound. Names are checked:
//! rules and pools may only refer to upstreams and pools that exist, pool members must be
//! upstreams (so there are no cycles), and unknown fields are errors, not silently ignored.

pub mod runtime;

pub use self::runtime::{Config, Limits, Overrides};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::pool::{HealthCheck, Pool, PoolSettings, Strategy};
use crate::routing::{Action, DomainPattern, Matcher, Router, Rule, Upstream, parse_no_proxy};
use crate::server::Listen;
use crate::session::access_log::Format;
use crate::target::Target;
use crate::upstream::{Bind, BindMode, Route, TlsOptions, redact};

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// What a configuration file sets.
#[derive(Debug)]
pub struct FileConfig {
    /// The file held nothing but white space and comments. A reload refuses such a file: a
    /// truncated config must not fail open to "everything direct".
    pub empty: bool,
    /// `[auth]`: the users file is read when the configuration is put together (see
    /// `runtime::merge`), so that a flag can name another.
    pub auth: Option<FileAuth>,
    /// Plain settings; `None` / empty: not set in the file (defaults or flags apply).
    pub settings: Settings,
    pub tls: TlsOptions,
    pub router: Router,
}

/// The file's plain settings.
#[derive(Debug, Default)]
pub struct Settings {
    pub listen: Vec<Listen>,
    pub connect_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub response_timeout: Option<Duration>,
    pub shutdown_grace: Option<Duration>,
    pub via_name: Option<String>,
    pub limits: FileLimits,
    /// `open = true`: listening beyond loopback without `[auth]` or allowed clients is meant.
    pub open: bool,
    pub access: FileAccess,
    pub access_log: Option<Format>,
    pub access_log_file: Option<PathBuf>,
    pub admin: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub admin_allow: Vec<IpNet>,
    pub pac_proxy: Option<String>,
    /// `pac = "PATH|http://URL"`: a path relative to the file's directory.
    pub pac: Option<String>,
    /// `[pac_credentials] "host:port" = "user:pass"` (URL userinfo form, `${NAME}` expanded).
    pub pac_credentials: std::collections::HashMap<String, String>,
    /// `pac_refresh = "10m"`: how often a PAC URL is fetched again.
    pub pac_refresh: Option<Duration>,
    pub proxy_protocol: bool,
    pub proxy_protocol_from: Vec<IpNet>,
    /// `[tls] cert`, `key`: the `https://` listeners' certificate chain and key, relative
    /// paths taken from the config file's directory.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// The `[auth]` table.
#[derive(Debug, Default, Clone)]
pub struct FileAuth {
    /// The users file, relative paths taken from the configuration file's directory.
    pub file: Option<PathBuf>,
    pub realm: Option<String>,
    pub max_connections_per_user: Option<usize>,
    pub max_failures: Option<u32>,
    pub lockout: Option<Duration>,
}

/// The `[access]` table.
#[derive(Debug, Default, Clone)]
pub struct FileAccess {
    /// `None`: not set (a flag or "anyone" applies).
    pub clients: Option<Vec<IpNet>>,
    pub deny: Vec<IpNet>,
    pub allow: Vec<IpNet>,
    pub connect_ports: Vec<u16>,
}

/// The `[limits]` table; each field `None` when not set.
#[derive(Debug, Default)]
pub struct FileLimits {
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub header_read_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub request_body_timeout: Option<Duration>,
    pub request_body_grace: Option<Duration>,
    /// Bytes per second; 0 turns the rate bound off.
    pub request_body_min_rate: Option<u64>,
    pub max_idle_upstream: Option<usize>,
    pub upstream_idle_timeout: Option<Duration>,
    pub max_concurrent_streams: Option<u32>,
    /// Bytes per second.
    pub bandwidth_per_user: Option<u64>,
    pub bandwidth_per_ip: Option<u64>,
    pub user_bandwidth: std::collections::HashMap<String, Option<u64>>,
    pub new_connections_per_ip: Option<(u64, Duration)>,
}

// === raw model ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    response_timeout: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    via_name: Option<String>,
    #[serde(default)]
    upstream_ca: Vec<PathBuf>,
    #[serde(default)]
    upstream_insecure: bool,
    bypass: Option<Spanned<String>>,
    /// Each a URL (one hop or a comma chain), or a table `{ via, bind, bind_mode, sticky_ttl }`
    /// (`via = "direct"` with a `bind` makes a direct pool member).
    #[serde(default)]
    upstreams: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    pools: BTreeMap<String, RawPool>,
    #[serde(default)]
    rules: Vec<RawRule>,
    default: Option<RawDefault>,
    limits: Option<RawLimits>,
    #[serde(default)]
    open: bool,
    auth: Option<RawAuth>,
    access: Option<RawAccess>,
    access_log: Option<Spanned<String>>,
    access_log_file: Option<PathBuf>,
    admin: Option<Spanned<String>>,
    admin_token: Option<Spanned<String>>,
    #[serde(default)]
    admin_allow: Vec<Spanned<String>>,
    pac_proxy: Option<String>,
    pac: Option<Spanned<String>>,
    pac_refresh: Option<Spanned<String>>,
    #[serde(default)]
    pac_credentials: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default)]
    proxy_protocol_from: Vec<Spanned<String>>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    file: Option<Spanned<String>>,
    realm: Option<Spanned<String>>,
    max_connections_per_user: Option<usize>,
    max_failures: Option<Spanned<u32>>,
    lockout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    clients: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    connect_ports: Vec<Spanned<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    header_read_timeout: Option<Spanned<String>>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    request_body_timeout: Option<Spanned<String>>,
    request_body_grace: Option<Spanned<String>>,
    request_body_min_rate: Option<u64>,
    max_idle_upstream: Option<usize>,
    upstream_idle_timeout: Option<Spanned<String>>,
    max_concurrent_streams: Option<u32>,
    bandwidth_per_user: Option<Spanned<String>>,
    bandwidth_per_ip: Option<Spanned<String>>,
    /// User name -> bandwidth or "unlimited".
    #[serde(default)]
    user_bandwidth: BTreeMap<String, Spanned<String>>,
    new_connections_per_ip: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    members: Spanned<Vec<Spanned<String>>>,
    strategy: Option<Spanned<String>>,
    health: Option<RawHealth>,
    sticky_ttl: Option<Spanned<String>>,
    max_attempts: Option<Spanned<usize>>,
    failures: Option<Spanned<u32>>,
    ejection: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval: Spanned<String>,
    target: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "match")]
    matcher: RawMatch,
    via: Spanned<String>,
    #[serde(default)]
    resolve: bool,
    bind: Option<Spanned<String>>,
    bind_mode: Option<Spanned<String>>,
    sticky_ttl: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    domains: Vec<Spanned<String>>,
    #[serde(default)]
    cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    ports: Vec<u16>,
    #[serde(default)]
    users: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefault {
    via: Spanned<String>,
    bind: Option<Spanned<String>>,
    bind_mode: Option<Spanned<String>>,
    sticky_ttl: Option<Spanned<String>>,
}

// === loading ===

/// The largest configuration file read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads and validates `path`: a regular file (a FIFO or a device could block or never end) of
/// at most [`MAX_FILE_BYTES`]. Blocking I/O: call it off the async runtime.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    use std::io::Read;
    let file = path.display().to_string();
    let fail = |message: String| ConfigError {
        file: file.clone(),
        line: 0,
        column: 0,
        field: "-".into(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(fail(format!("larger than {} KiB", MAX_FILE_BYTES / 1024)));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(fail(format!("larger than {} KiB", MAX_FILE_BYTES / 1024)));
    }
    parse(&text, &file)
}

/// Validates `text` (named `file` in errors).
pub fn parse(text: &str, file: &str) -> Result<FileConfig, ConfigError> {
    let at = Locator { text, file };
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let field = field_at(text, span.start, e.message());
        at.error(span, &field, e.message().trim())
    })?;
    let empty = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    let mut cfg = build(raw, &at)?;
    cfg.empty = empty;
    Ok(cfg)
}

struct Locator<'a> {
    text: &'a str,
    file: &'a str,
}

impl Locator<'_> {
    fn error(&self, span: Range<usize>, field: &str, message: impl Into<String>) -> ConfigError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        // Messages quote the file (a key, a value, a whole line): never its credentials.
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            field: redact(field),
            message: redact(&message.into()),
        }
    }
}

/// The field a TOML error is about: the name in "unknown field `x`", else the key on the line.
fn field_at(text: &str, offset: usize, message: &str) -> String {
    if let Some((_, rest)) = message.split_once("unknown field `")
        && let Some((name, _)) = rest.split_once('`')
    {
        return name.to_owned();
    }
    let line_start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) => key.trim().to_owned(),
        None => line
            .trim()
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned(),
    }
}

fn duration(at: &Locator, field: &str, s: &Spanned<String>) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.get_ref()).map_err(|e| {
        at.error(
            s.span(),
            field,
            format!(
                "invalid duration \"{}\": {e} (write 500ms, 10s, 5m)",
                s.get_ref()
            ),
        )
    })
}

/// `bind`, `bind_mode` and `sticky_ttl` as written (with where), on a rule, `[default]` or
/// an upstream table.
#[derive(Default)]
struct BindSpec<'a> {
    bind: Option<(&'a str, Range<usize>)>,
    mode: Option<(&'a str, Range<usize>)>,
    ttl: Option<(&'a str, Range<usize>)>,
}

impl<'a> BindSpec<'a> {
    fn of(
        bind: &'a Option<Spanned<String>>,
        mode: &'a Option<Spanned<String>>,
        ttl: &'a Option<Spanned<String>>,
    ) -> Self {
        let f =
            |v: &'a Option<Spanned<String>>| v.as_ref().map(|v| (v.get_ref().as_str(), v.span()));
        Self {
            bind: f(bind),
            mode: f(mode),
            ttl: f(ttl),
        }
    }

    /// The bind, when one is set; `bind_mode` or `sticky_ttl` without it is an error.
    /// `field` is where `bind` sits (`rules[2]`, `upstreams.a`, `default`).
    fn build(&self, at: &Locator, field: &str) -> Result<Option<Arc<Bind>>, ConfigError> {
        let base = field.strip_suffix(".bind").unwrap_or(field);
        let Some((bind, span)) = &self.bind else {
            if let Some((_, span)) = self.mode.as_ref().or(self.ttl.as_ref()) {
                return Err(at.error(
                    span.clone(),
                    &format!("{base}.bind"),
                    "bind_mode and sticky_ttl need a bind = \"ADDR\" or \"CIDR\"",
                ));
            }
            return Ok(None);
        };
        let net = crate::upstream::bind::parse(bind)
            .map_err(|m| at.error(span.clone(), &format!("{base}.bind"), m))?;
        let mode = match &self.mode {
            Some((m, span)) => BindMode::parse(m).ok_or_else(|| {
                at.error(
                    span.clone(),
                    &format!("{base}.bind_mode"),
                    format!("unknown bind_mode \"{m}\" (sticky, random)"),
                )
            })?,
            None => BindMode::default(),
        };
        let ttl = match &self.ttl {
            Some((t, span)) => humantime::parse_duration(t).map_err(|e| {
                at.error(
                    span.clone(),
                    &format!("{base}.sticky_ttl"),
                    format!("invalid duration \"{t}\": {e} (write 30s, 10m, 1h)"),
                )
            })?,
            None => DEFAULT_BIND_TTL,
        };
        Ok(Some(Arc::new(Bind::new(net, mode, ttl))))
    }
}

/// How long a session keeps its source address by default (as pools' sticky pins).
pub const DEFAULT_BIND_TTL: Duration = Duration::from_secs(600);

/// `action` leaving from the addresses `spec` names (when it names some).
fn bound(at: &Locator, field: &str, action: Action, spec: BindSpec) -> Result<Action, ConfigError> {
    let Some(bind) = spec.build(at, field)? else {
        return Ok(action);
    };
    bind_action(action, bind).map_err(|m| {
        let span = spec.bind.map(|(_, s)| s).unwrap_or(0..0);
        at.error(span, field, m)
    })
}

/// `action` with its connections leaving from `bind`.
pub fn bind_action(action: Action, bind: Arc<Bind>) -> Result<Action, String> {
    match action {
        Action::Direct(r) => Ok(Action::Direct(r.with_bind(bind))),
        Action::Upstream(u) => Ok(Action::Upstream(Arc::new(Upstream {
            name: u.name.clone(),
            route: u.route.with_bind(bind),
        }))),
        Action::Pool(p) => Err(format!(
            "pool {} picks among its members: set bind on them (upstream tables with via and bind)",
            p.name
        )),
        Action::Block => Err("a block connects nowhere: bind has no meaning here".into()),
    }
}

fn build(raw: Raw, at: &Locator) -> Result<FileConfig, ConfigError> {
    let listen = raw
        .listen
        .iter()
        .map(|l| {
            l.get_ref()
                .parse()
                .map_err(|m: String| at.error(l.span(), "listen", m))
        })
        .collect::<Result<Vec<Listen>, _>>()?;
    let opt = |field: &str, d: &Option<Spanned<String>>| {
        d.as_ref().map(|d| duration(at, field, d)).transpose()
    };
    let bandwidth = |field: &str, b: &Option<Spanned<String>>| {
        b.as_ref()
            .map(|b| {
                crate::rate::parse_bandwidth(b.get_ref()).map_err(|m| at.error(b.span(), field, m))
            })
            .transpose()
    };

    let mut upstreams: BTreeMap<&str, Arc<Upstream>> = BTreeMap::new();
    for (name, value) in &raw.upstreams {
        let field = format!("upstreams.{name}");
        let span = value.span();
        check_name(at, &field, name, span.clone())?;
        let mut upstream_auth = (None, None);
        let (url, spec) = match value.get_ref() {
            toml::Value::String(url) => (url.as_str(), BindSpec::default()),
            toml::Value::Table(t) => {
                let text = |key: &str| -> Result<Option<(&str, Range<usize>)>, ConfigError> {
                    match t.get(key) {
                        None => Ok(None),
                        Some(toml::Value::String(v)) => Ok(Some((v.as_str(), span.clone()))),
                        Some(_) => Err(at.error(
                            span.clone(),
                            &format!("{field}.{key}"),
                            "must be a string",
                        )),
                    }
                };
                if let Some(unknown) = t.keys().find(|k| {
                    !["via", "bind", "bind_mode", "sticky_ttl", "auth", "spn"].contains(&k.as_str())
                }) {
                    return Err(at.error(
                        span.clone(),
                        &format!("{field}.{unknown}"),
                        format!(
                            "unknown field `{unknown}` (via, bind, bind_mode, sticky_ttl, auth, spn)"
                        ),
                    ));
                }
                let auth = match text("auth")? {
                    None => None,
                    Some((v, s)) => Some(
                        v.parse::<crate::upstream::proxy_auth::AuthPolicy>()
                            .map_err(|m| at.error(s, &format!("{field}.auth"), m))?,
                    ),
                };
                let spn = text("spn")?.map(|(v, _)| v.to_owned());
                upstream_auth = (auth, spn);
                let via = text("via")?.ok_or_else(|| {
                    at.error(
                        span.clone(),
                        &format!("{field}.via"),
                        "an upstream table needs via = \"URL\" or \"direct\"",
                    )
                })?;
                let spec = BindSpec {
                    bind: text("bind")?,
                    mode: text("bind_mode")?,
                    ttl: text("sticky_ttl")?,
                };
                (via.0, spec)
            }
            _ => {
                return Err(at.error(
                    span,
                    &field,
                    "an upstream is a URL or a table { via = ..., bind = ... }",
                ));
            }
        };
        let route = if url == "direct" {
            Route::direct()
        } else {
            let expanded = expand_env(url).map_err(|m| at.error(span.clone(), &field, m))?;
            let route = Route::parse(&expanded)
                .map_err(|e| at.error(span.clone(), &field, e.to_string()))?;
            match upstream_auth {
                (None, None) => route,
                (policy, spn) => route.with_auth(policy.unwrap_or_default(), spn),
            }
        };
        let route = match spec.build(at, &field)? {
            Some(bind) => route.with_bind(bind),
            None if url == "direct" => {
                return Err(at.error(
                    span,
                    &field,
                    "a direct upstream needs a bind (else use via = \"direct\" in the rule)",
                ));
            }
            None => route,
        };
        upstreams.insert(
            name,
            Arc::new(Upstream {
                name: name.clone(),
                route,
            }),
        );
    }

    let mut pools: BTreeMap<&str, Arc<Pool>> = BTreeMap::new();
    for (name, p) in &raw.pools {
        let field = |f: &str| format!("pools.{name}.{f}");
        check_name(at, &format!("pools.{name}"), name, p.members.span())?;
        if upstreams.contains_key(name.as_str()) {
            return Err(at.error(
                p.members.span(),
                &format!("pools.{name}"),
                "a pool and an upstream share this name",
            ));
        }
        if p.members.get_ref().is_empty() {
            return Err(at.error(
                p.members.span(),
                &field("members"),
                "a pool needs at least one member",
            ));
        }
        let mut members = Vec::new();
        for m in p.members.get_ref() {
            let up = upstreams.get(m.get_ref().as_str()).ok_or_else(|| {
                let why = if raw.pools.contains_key(m.get_ref()) {
                    "is a pool; members must be upstreams"
                } else {
                    "is not a defined upstream"
                };
                at.error(
                    m.span(),
                    &field("members"),
                    format!("\"{}\" {why}", m.get_ref()),
                )
            })?;
            members.push((up.name.clone(), up.route.clone()));
        }
        let mut settings = PoolSettings::default();
        if let Some(s) = &p.strategy {
            settings.strategy = Strategy::parse(s.get_ref()).ok_or_else(|| {
                at.error(s.span(), &field("strategy"), format!("unknown strategy \"{}\" (round-robin, random, failover, least-connections, sticky)", s.get_ref()))
            })?;
        }
        if let Some(h) = &p.health {
            let interval = duration(at, &field("health.interval"), &h.interval)?;
            if interval.is_zero() {
                return Err(at.error(
                    h.interval.span(),
                    &field("health.interval"),
                    "must be more than 0",
                ));
            }
            let target = h
                .target
                .as_ref()
                .map(|t| {
                    parse_target(t.get_ref())
                        .map_err(|m| at.error(t.span(), &field("health.target"), m))
                })
                .transpose()?;
            settings.health = Some(HealthCheck { interval, target });
        }
        if let Some(d) = opt(&field("sticky_ttl"), &p.sticky_ttl)? {
            settings.sticky_ttl = d;
        }
        if let Some(d) = opt(&field("ejection"), &p.ejection)? {
            settings.ejection = d;
        }
        if let Some(n) = &p.max_attempts {
            if *n.get_ref() == 0 {
                return Err(at.error(n.span(), &field("max_attempts"), "must be at least 1"));
            }
            settings.max_attempts = *n.get_ref();
        }
        if let Some(n) = &p.failures {
            if *n.get_ref() == 0 {
                return Err(at.error(n.span(), &field("failures"), "must be at least 1"));
            }
            settings.failures = *n.get_ref();
        }
        pools.insert(name, Arc::new(Pool::new(name.clone(), members, settings)));
    }

    let action = |field: &str, via: &Spanned<String>| -> Result<Action, ConfigError> {
        let v = via.get_ref().as_str();
        Ok(match v {
            "direct" => Action::direct(),
            "block" => Action::Block,
            _ if v.contains("://") => Action::Upstream(Arc::new(Upstream {
                name: "inline".into(),
                route: Route::parse(&expand_env(v).map_err(|m| at.error(via.span(), field, m))?)
                    .map_err(|e| at.error(via.span(), field, e.to_string()))?,
            })),
            _ => match (upstreams.get(v), pools.get(v)) {
                (Some(u), _) => Action::Upstream(Arc::clone(u)),
                (None, Some(p)) => Action::Pool(Arc::clone(p)),
                (None, None) => {
                    return Err(at.error(
                        via.span(),
                        field,
                        format!("\"{v}\" is not direct, block, an upstream or a pool"),
                    ));
                }
            },
        })
    };

    let mut rules = Vec::new();
    for (i, r) in raw.rules.iter().enumerate() {
        let field = |f: &str| format!("rules[{}].{f}", i + 1);
        let m = &r.matcher;
        let domains = m
            .domains
            .iter()
            .map(|d| {
                DomainPattern::parse(d.get_ref()).ok_or_else(|| {
                    at.error(
                        d.span(),
                        &field("match.domains"),
                        format!("not a domain pattern: \"{}\"", d.get_ref()),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let cidrs = m
            .cidrs
            .iter()
            .map(|c| {
                c.get_ref().parse().map_err(|_| {
                    at.error(
                        c.span(),
                        &field("match.cidrs"),
                        format!("not a CIDR: \"{}\"", c.get_ref()),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let matcher = Matcher {
            domains,
            cidrs,
            ports: m.ports.clone(),
            users: m.users.clone(),
        };
        let spec = BindSpec::of(&r.bind, &r.bind_mode, &r.sticky_ttl);
        let action = bound(at, &field("bind"), action(&field("via"), &r.via)?, spec)?;
        rules.push(Rule {
            matcher,
            resolve: r.resolve,
            action,
        });
    }
    let default = match &raw.default {
        Some(d) => {
            let spec = BindSpec::of(&d.bind, &d.bind_mode, &d.sticky_ttl);
            bound(at, "default.bind", action("default.via", &d.via)?, spec)?
        }
        None => Action::direct(),
    };
    let bypass = match &raw.bypass {
        Some(b) => parse_no_proxy(b.get_ref()).map_err(|entry| {
            at.error(
                b.span(),
                "bypass",
                format!("not a host, domain or CIDR: \"{entry}\""),
            )
        })?,
        None => None,
    };
    let cidrs = |field: &str, list: &[Spanned<String>]| -> Result<Vec<IpNet>, ConfigError> {
        list.iter()
            .map(|c| parse_cidr(c.get_ref()).map_err(|m| at.error(c.span(), field, m)))
            .collect()
    };
    let access = match &raw.access {
        Some(a) => FileAccess {
            clients: a
                .clients
                .as_deref()
                .map(|c| cidrs("access.clients", c))
                .transpose()?,
            deny: cidrs("access.deny", &a.deny)?,
            allow: cidrs("access.allow", &a.allow)?,
            connect_ports: a
                .connect_ports
                .iter()
                .map(|p| match *p.get_ref() {
                    0 => Err(at.error(p.span(), "access.connect_ports", "0 is not a port")),
                    port => Ok(port),
                })
                .collect::<Result<_, _>>()?,
        },
        None => FileAccess::default(),
    };
    let auth = match &raw.auth {
        Some(a) => Some(FileAuth {
            file: a
                .file
                .as_ref()
                .map(|f| beside(at.file, Path::new(f.get_ref()))),
            realm: a
                .realm
                .as_ref()
                .map(|r| {
                    let realm = r.get_ref();
                    if realm.is_empty()
                        || realm
                            .chars()
                            .any(|c| c == '"' || c == '\\' || !(' '..='~').contains(&c))
                    {
                        Err(at.error(
                            r.span(),
                            "auth.realm",
                            "a realm is printable ASCII without quotes or backslashes",
                        ))
                    } else {
                        Ok(realm.clone())
                    }
                })
                .transpose()?,
            max_connections_per_user: a.max_connections_per_user,
            max_failures: a
                .max_failures
                .as_ref()
                .map(|n| match *n.get_ref() {
                    0 => Err(at.error(n.span(), "auth.max_failures", "must be at least 1")),
                    n => Ok(n),
                })
                .transpose()?,
            lockout: opt("auth.lockout", &a.lockout)?,
        }),
        None => None,
    };
    Ok(FileConfig {
        empty: false,
        auth,
        settings: Settings {
            open: raw.open,
            access,
            access_log: raw
                .access_log
                .as_ref()
                .map(|f| {
                    Format::parse(f.get_ref())
                        .ok_or_else(|| at.error(f.span(), "access_log", "one of text, json, off"))
                })
                .transpose()?,
            access_log_file: raw.access_log_file.clone(),
            admin: raw
                .admin
                .as_ref()
                .map(|a| {
                    a.get_ref().parse().map_err(|_| {
                        at.error(
                            a.span(),
                            "admin",
                            format!("not an address:port: \"{}\"", a.get_ref()),
                        )
                    })
                })
                .transpose()?,
            admin_token: raw
                .admin_token
                .as_ref()
                .map(|t| expand_env(t.get_ref()).map_err(|m| at.error(t.span(), "admin_token", m)))
                .transpose()?,
            admin_allow: cidrs("admin_allow", &raw.admin_allow)?,
            pac_proxy: raw.pac_proxy.clone(),
            pac: raw.pac.as_ref().map(|p| {
                let v = p.get_ref();
                if v.starts_with("http://") || v.starts_with("https://") {
                    v.clone()
                } else {
                    beside(at.file, &PathBuf::from(v)).display().to_string()
                }
            }),
            pac_credentials: raw
                .pac_credentials
                .iter()
                .map(|(k, v)| {
                    expand_env(v.get_ref())
                        .map(|c| (k.clone(), c))
                        .map_err(|m| at.error(v.span(), &format!("pac_credentials.\"{k}\""), m))
                })
                .collect::<Result<_, _>>()?,
            pac_refresh: opt("pac_refresh", &raw.pac_refresh)?,
            proxy_protocol: raw.proxy_protocol,
            proxy_protocol_from: cidrs("proxy_protocol_from", &raw.proxy_protocol_from)?,
            tls_cert: raw.tls.as_ref().map(|t| beside(at.file, &t.cert)),
            tls_key: raw.tls.as_ref().map(|t| beside(at.file, &t.key)),
            listen,
            connect_timeout: opt("connect_timeout", &raw.connect_timeout)?,
            idle_timeout: opt("idle_timeout", &raw.idle_timeout)?,
            response_timeout: opt("response_timeout", &raw.response_timeout)?,
            shutdown_grace: opt("shutdown_grace", &raw.shutdown_grace)?,
            via_name: raw.via_name,
            limits: match &raw.limits {
                Some(l) => FileLimits {
                    max_header_bytes: l.max_header_bytes,
                    max_headers: l.max_headers,
                    header_read_timeout: opt("limits.header_read_timeout", &l.header_read_timeout)?,
                    max_connections: l.max_connections,
                    max_connections_per_ip: l.max_connections_per_ip,
                    request_body_timeout: opt(
                        "limits.request_body_timeout",
                        &l.request_body_timeout,
                    )?,
                    request_body_grace: opt("limits.request_body_grace", &l.request_body_grace)?,
                    request_body_min_rate: l.request_body_min_rate,
                    max_idle_upstream: l.max_idle_upstream,
                    upstream_idle_timeout: opt(
                        "limits.upstream_idle_timeout",
                        &l.upstream_idle_timeout,
                    )?,
                    max_concurrent_streams: l.max_concurrent_streams,
                    bandwidth_per_user: bandwidth(
                        "limits.bandwidth_per_user",
                        &l.bandwidth_per_user,
                    )?,
                    bandwidth_per_ip: bandwidth("limits.bandwidth_per_ip", &l.bandwidth_per_ip)?,
                    user_bandwidth: l
                        .user_bandwidth
                        .iter()
                        .map(|(user, b)| {
                            let field = format!("limits.user_bandwidth.{user}");
                            match b.get_ref().as_str() {
                                "unlimited" => Ok((user.clone(), None)),
                                _ => bandwidth(&field, &Some(b.clone()))
                                    .map(|rate| (user.clone(), rate)),
                            }
                        })
                        .collect::<Result<_, ConfigError>>()?,
                    new_connections_per_ip: l
                        .new_connections_per_ip
                        .as_ref()
                        .map(|r| {
                            crate::rate::parse_per_second(r.get_ref())
                                .map_err(|m| at.error(r.span(), "limits.new_connections_per_ip", m))
                        })
                        .transpose()?,
                },
                None => FileLimits::default(),
            },
        },
        tls: TlsOptions {
            ca_files: raw.upstream_ca,
            insecure: raw.upstream_insecure,
        },
        router: Router {
            pac: None,
            bypass,
            rules,
            default,
        },
    })
}

fn check_name(
    at: &Locator,
    field: &str,
    name: &str,
    span: Range<usize>,
) -> Result<(), ConfigError> {
    if matches!(name, "direct" | "block") {
        return Err(at.error(span, field, format!("\"{name}\" is reserved")));
    }
    Ok(())
}

/// `path` as written in `file`: relative paths are taken from the file's directory.
fn beside(file: &str, path: &Path) -> PathBuf {
    match Path::new(file).parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// Parses a CIDR; a bare address is its own /32 or /128.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.trim()
        .parse::<IpNet>()
        .or_else(|_| s.trim().parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("not a CIDR or an address: \"{s}\""))
}

/// Replaces each `${NAME}` in `s` with the environment variable `NAME`, so that secrets can
/// stay out of the file (and out of `ps`). A missing variable is an error naming it.
pub fn expand_env(s: &str) -> Result<String, String> {
    expand_with(s, |name| std::env::var(name).ok())
}

fn expand_with(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "\"${\" without a closing \"}\"".to_owned())?;
        let name = &after[..end];
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "\"${{{name}}}\" is not an environment variable name"
            ));
        }
        let value =
            lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The destination a URL (`http://h/p`, `https://h`, or a bare `host:port`) would be routed
/// to: the scheme's default port when none is written. For `viaduct route`.
pub fn target_of_url(url: &str) -> Result<Target, String> {
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
    parse_target(&authority)
}

/// Parses `host:port` (with `[v6]`).
pub fn parse_target(s: &str) -> Result<Target, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{s}\" is not host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("\"{s}\" has an invalid port"))?;
    Target::new(host, port).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
