//! The file's tables, each built by its own function: `[upstreams]`, `[pools]`, `[[rules]]`,
//! `[default]`, `bypass`, `[access]`, `[auth]`, `listen`. Every error is located (file, line,
//! column, field); names are checked (rules and pools refer only to what exists, pool members
//! are upstreams, so there are no cycles).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{
    ConfigError, FileAccess, FileAuth, Locator, beside, expand_env, parse_cidr, parse_target,
};
use crate::pool::{HealthCheck, Pool, PoolSettings, Strategy};
use crate::routing::{Action, DomainPattern, Matcher, Rule, Upstream, parse_no_proxy};
use crate::server::Listen;
use crate::upstream::{Bind, BindMode, Route};

// === the raw tables, as written ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    file: Option<Spanned<String>>,
    realm: Option<Spanned<String>>,
    max_connections_per_user: Option<usize>,
    max_failures: Option<Spanned<u32>>,
    lockout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    clients: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    connect_ports: Vec<Spanned<u16>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    members: Spanned<Vec<Spanned<String>>>,
    strategy: Option<Spanned<String>>,
    health: Option<RawHealth>,
    sticky_ttl: Option<Spanned<String>>,
    max_attempts: Option<Spanned<usize>>,
    failures: Option<Spanned<u32>>,
    ejection: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    interval: Spanned<String>,
    target: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(rename = "match")]
    matcher: RawMatch,
    via: Spanned<String>,
    #[serde(default)]
    resolve: bool,
    bind: Option<Spanned<String>>,
    bind_mode: Option<Spanned<String>>,
    sticky_ttl: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    domains: Vec<Spanned<String>>,
    #[serde(default)]
    cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    ports: Vec<u16>,
    #[serde(default)]
    users: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefault {
    via: Spanned<String>,
    bind: Option<Spanned<String>>,
    bind_mode: Option<Spanned<String>>,
    sticky_ttl: Option<Spanned<String>>,
}

// === helpers ===

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

// === one function per table ===

/// Named upstreams, by name.
pub type Upstreams<'a> = BTreeMap<&'a str, Arc<Upstream>>;
/// Named pools, by name.
pub type Pools<'a> = BTreeMap<&'a str, Arc<Pool>>;

/// `[upstreams]`: each a URL (one hop or a comma chain, `${NAME}` expanded) or a table
/// `{ via, bind, bind_mode, sticky_ttl, auth, spn }`.
pub fn upstreams<'a>(
    raw: &'a BTreeMap<String, Spanned<toml::Value>>,
    at: &Locator,
) -> Result<Upstreams<'a>, ConfigError> {
    let mut upstreams: Upstreams = BTreeMap::new();
    for (name, value) in raw {
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
            let route = super::expand_url(url, Route::parse)
                .map_err(|m| at.error(span.clone(), &field, m))?;
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
    Ok(upstreams)
}

/// `[pools.NAME]`: members must be upstreams (not pools), names unique across both.
pub fn pools<'a>(
    raw: &'a BTreeMap<String, RawPool>,
    upstreams: &Upstreams,
    at: &Locator,
) -> Result<Pools<'a>, ConfigError> {
    let opt = |field: &str, d: &Option<Spanned<String>>| {
        d.as_ref().map(|d| duration(at, field, d)).transpose()
    };
    let mut pools: Pools = BTreeMap::new();
    for (name, p) in raw {
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
                let why = if raw.contains_key(m.get_ref()) {
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
    Ok(pools)
}

/// Where a `via` leads: `direct`, `block`, an inline URL, or a named upstream or pool.
pub struct Vias<'a> {
    pub upstreams: Upstreams<'a>,
    pub pools: Pools<'a>,
}

impl Vias<'_> {
    pub fn action(
        &self,
        at: &Locator,
        field: &str,
        via: &Spanned<String>,
    ) -> Result<Action, ConfigError> {
        let v = via.get_ref().as_str();
        Ok(match v {
            "direct" => Action::direct(),
            "block" => Action::Block,
            _ if v.contains("://") => Action::Upstream(Arc::new(Upstream {
                name: "inline".into(),
                route: super::expand_url(v, Route::parse)
                    .map_err(|m| at.error(via.span(), field, m))?,
            })),
            _ => match (self.upstreams.get(v), self.pools.get(v)) {
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
    }
}

/// `[[rules]]`, in order; fields are named `rules[N]` counting from 1.
pub fn rules(raw: &[RawRule], vias: &Vias, at: &Locator) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::new();
    for (i, r) in raw.iter().enumerate() {
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
        let action = bound(
            at,
            &field("bind"),
            vias.action(at, &field("via"), &r.via)?,
            spec,
        )?;
        rules.push(Rule {
            matcher,
            resolve: r.resolve,
            action,
        });
    }
    Ok(rules)
}

/// `[default]`: where everything else goes (direct when absent).
pub fn default_action(
    raw: Option<&RawDefault>,
    vias: &Vias,
    at: &Locator,
) -> Result<Action, ConfigError> {
    match raw {
        Some(d) => {
            let spec = BindSpec::of(&d.bind, &d.bind_mode, &d.sticky_ttl);
            bound(
                at,
                "default.bind",
                vias.action(at, "default.via", &d.via)?,
                spec,
            )
        }
        None => Ok(Action::direct()),
    }
}

/// `bypass`: NO_PROXY syntax.
pub fn bypass(raw: Option<&Spanned<String>>, at: &Locator) -> Result<Option<Matcher>, ConfigError> {
    match raw {
        Some(b) => parse_no_proxy(b.get_ref()).map_err(|entry| {
            at.error(
                b.span(),
                "bypass",
                format!("not a host, domain or CIDR: \"{entry}\""),
            )
        }),
        None => Ok(None),
    }
}

/// `listen`: addresses, each with an optional kind (`http://`, `socks5://`, ...).
pub fn listen(raw: &[Spanned<String>], at: &Locator) -> Result<Vec<Listen>, ConfigError> {
    raw.iter()
        .map(|l| {
            l.get_ref()
                .parse()
                .map_err(|m: String| at.error(l.span(), "listen", m))
        })
        .collect()
}

fn cidrs(at: &Locator, field: &str, list: &[Spanned<String>]) -> Result<Vec<IpNet>, ConfigError> {
    list.iter()
        .map(|c| parse_cidr(c.get_ref()).map_err(|m| at.error(c.span(), field, m)))
        .collect()
}

/// `[access]`: who may connect, where they may go.
pub fn access(raw: Option<&RawAccess>, at: &Locator) -> Result<FileAccess, ConfigError> {
    let Some(a) = raw else {
        return Ok(FileAccess::default());
    };
    Ok(FileAccess {
        clients: a
            .clients
            .as_deref()
            .map(|c| cidrs(at, "access.clients", c))
            .transpose()?,
        deny: cidrs(at, "access.deny", &a.deny)?,
        allow: cidrs(at, "access.allow", &a.allow)?,
        connect_ports: a
            .connect_ports
            .iter()
            .map(|p| match *p.get_ref() {
                0 => Err(at.error(p.span(), "access.connect_ports", "0 is not a port")),
                port => Ok(port),
            })
            .collect::<Result<_, _>>()?,
    })
}

/// `[auth]`: the users file (read when the configuration is put together, so that
/// `--auth-file` can name another), realm and login limits.
pub fn auth(raw: Option<&RawAuth>, at: &Locator) -> Result<Option<FileAuth>, ConfigError> {
    let Some(a) = raw else {
        return Ok(None);
    };
    let realm = a
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
        .transpose()?;
    Ok(Some(FileAuth {
        file: a
            .file
            .as_ref()
            .map(|f| beside(at.file, Path::new(f.get_ref()))),
        realm,
        max_connections_per_user: a.max_connections_per_user,
        max_failures: a
            .max_failures
            .as_ref()
            .map(|n| match *n.get_ref() {
                0 => Err(at.error(n.span(), "auth.max_failures", "must be at least 1")),
                n => Ok(n),
            })
            .transpose()?,
        lockout: a
            .lockout
            .as_ref()
            .map(|d| duration(at, "auth.lockout", d))
            .transpose()?,
    }))
}

/// `[tls]`: the `https://` listeners' certificate chain and key, beside the file.
pub fn tls_files(raw: Option<&RawTls>, at: &Locator) -> (Option<PathBuf>, Option<PathBuf>) {
    (
        raw.map(|t| beside(at.file, &t.cert)),
        raw.map(|t| beside(at.file, &t.key)),
    )
}

/// `${NAME}` expanded in a secret (`admin_token`, `[pac_credentials]`).
pub fn secret(at: &Locator, field: &str, s: &Spanned<String>) -> Result<String, ConfigError> {
    expand_env(s.get_ref()).map_err(|m| at.error(s.span(), field, m))
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
