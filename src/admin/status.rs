//! The status page's data (`/status.json`) and its HTML (`/status`): one page, no external
//! assets, refreshing itself. No credentials (routes are shown by name and by their
//! credential-free description) and no client addresses.

use std::fmt::Write;

use serde::Serialize;

use super::RunInfo;
use crate::pool::MemberState;
use crate::server::Admission;
use crate::session::{Core, RecentError};

#[derive(Debug, Serialize)]
pub(super) struct Snapshot {
    version: &'static str,
    uptime_s: u64,
    listeners: Vec<String>,
    config_file: Option<String>,
    last_reload: Option<Reload>,
    ready: bool,
    not_ready: Option<String>,
    open_tunnels: usize,
    open_connections: usize,
    default_route: String,
    rules: usize,
    routes: Vec<RouteStatus>,
    pools: Vec<PoolStatus>,
    /// The PAC script consulted for what no rule matches, when one is configured.
    pac: Option<PacStatus>,
    recent_errors: Vec<RecentError>,
}

#[derive(Debug, Serialize)]
struct PacStatus {
    source: String,
    loaded: bool,
    /// Seconds since the script in force was loaded.
    age_seconds: Option<u64>,
    /// Why the last fetch or load failed, while it has not loaded since.
    last_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct RouteStatus {
    route: String,
    open_tunnels: usize,
    requests: u64,
}

#[derive(Debug, Serialize)]
struct Reload {
    at: String,
    ok: bool,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct PoolStatus {
    name: String,
    strategy: String,
    failovers: u64,
    members: Vec<MemberState>,
}

pub(super) fn snapshot(
    core: &Core,
    admission: &Admission,
    info: &RunInfo,
    not_ready: Option<String>,
) -> Snapshot {
    let router = core.router();
    Snapshot {
        version: info.version,
        uptime_s: info.started.elapsed().as_secs(),
        listeners: info.listeners().iter().map(ToString::to_string).collect(),
        config_file: info.config_file.clone(),
        last_reload: info.last_reload.lock().ok().and_then(|l| {
            l.as_ref().map(|(at, r)| Reload {
                at: at.clone(),
                ok: r.is_ok(),
                error: r.as_ref().err().cloned(),
            })
        }),
        ready: not_ready.is_none(),
        not_ready,
        open_tunnels: core.open_tunnels(),
        open_connections: admission.open_connections(),
        default_route: router.default.to_string(),
        rules: router.rules.len(),
        routes: core
            .ledger()
            .per_route()
            .into_iter()
            .map(|(route, c)| RouteStatus {
                route,
                open_tunnels: c.open_tunnels,
                requests: c.requests,
            })
            .collect(),
        pools: router
            .pools()
            .iter()
            .map(|p| PoolStatus {
                name: p.name.clone(),
                strategy: p.settings.strategy.to_string(),
                failovers: p.failovers(),
                members: p.states(),
            })
            .collect(),
        pac: router.pac.as_ref().map(|p| {
            let (loaded_at, last_error) = p.status();
            PacStatus {
                source: p.origin(),
                loaded: p.loaded(),
                age_seconds: loaded_at
                    .and_then(|t| t.elapsed().ok())
                    .map(|d| d.as_secs()),
                last_error,
            }
        }),
        recent_errors: core.ledger().recent_errors(),
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn html(s: &Snapshot) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>viaduct status</title><style>body{{font:14px system-ui,sans-serif;margin:1.5em}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}\
         .up{{color:#070}}.down{{color:#b00}}</style></head><body>\
         <h1>viaduct {}</h1><p>up {}s · listeners {} · config {} · {}</p>",
        esc(s.version),
        s.uptime_s,
        esc(&s.listeners.join(", ")),
        esc(s.config_file.as_deref().unwrap_or("(none)")),
        if s.ready {
            "<span class=\"up\">ready</span>".to_owned()
        } else {
            format!(
                "<span class=\"down\">not ready: {}</span>",
                esc(s.not_ready.as_deref().unwrap_or(""))
            )
        }
    );
    if let Some(r) = &s.last_reload {
        let _ = write!(
            h,
            "<p>last reload {}: {}</p>",
            esc(&r.at),
            if r.ok {
                "ok".to_owned()
            } else {
                format!("rejected: {}", esc(r.error.as_deref().unwrap_or("")))
            }
        );
    }
    let _ = write!(
        h,
        "<p>open tunnels {} · open connections {} · {} rules · default {}</p>",
        s.open_tunnels,
        s.open_connections,
        s.rules,
        esc(&s.default_route)
    );
    h.push_str(
        "<h2>routes</h2><table><tr><th>route</th><th>open tunnels</th><th>requests</th></tr>",
    );
    for r in &s.routes {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.route),
            r.open_tunnels,
            r.requests
        );
    }
    h.push_str("</table>");
    if let Some(pac) = &s.pac {
        let _ = write!(
            h,
            "<h2>PAC</h2><p>{} &mdash; {}{}</p>",
            esc(&pac.source),
            match (pac.loaded, pac.age_seconds) {
                (true, Some(age)) => format!("loaded {age} s ago"),
                (true, None) => "loaded".to_owned(),
                (false, _) => "not loaded".to_owned(),
            },
            pac.last_error
                .as_deref()
                .map_or_else(String::new, |e| format!(
                    "; last attempt failed: {}",
                    esc(e)
                ))
        );
    }
    for p in &s.pools {
        let _ = write!(
            h,
            "<h2>pool {} ({}, {} failovers)</h2><table><tr><th>member</th><th>state</th><th>in flight</th><th>ejections</th><th>last error</th></tr>",
            esc(&p.name),
            esc(&p.strategy),
            p.failovers
        );
        for m in &p.members {
            let state = match m.ejected_for_ms {
                None => "<span class=\"up\">healthy</span>".to_owned(),
                Some(ms) => format!(
                    "<span class=\"down\">ejected for {:.1}s</span>",
                    ms as f64 / 1000.0
                ),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{state}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&m.name),
                m.in_flight,
                m.ejections,
                esc(m.last_error.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>recent errors</h2><table><tr><th>time</th><th>route</th><th>status</th><th>Proxy-Status</th><th>details</th></tr>");
    for e in s.recent_errors.iter().rev() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.at),
            esc(&e.route),
            e.status,
            esc(e.error),
            esc(&e.details)
        );
    }
    h.push_str("</table></body></html>\n");
    h
}
