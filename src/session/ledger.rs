//! What the proxy has done, for the people watching it: the metrics of each request and
//! tunnel, the status page's per-route counts and recent failures, the open-tunnel and
//! zero-copy counters, and the access record (a text line or a JSON object), written in one
//! place from one [`Finished`] value.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use super::access_log::{self, AccessLog, Format};
use super::{Chosen, Client, Observe};
use crate::metrics::Metrics;
use crate::relay::Relayed;

/// The last failures kept for the status page.
const RECENT: usize = 50;

/// The longest request target an access record (or the status page) carries; past it the
/// target is cut and ends in `...`: an unauthenticated client must not grow the log by much
/// more than it sends.
pub const MAX_LOGGED_TARGET: usize = 2048;

/// The longest user name a record carries.
pub const MAX_LOGGED_USER: usize = 128;

/// Query parameters whose values records never show (compared without case).
const SECRET_PARAMS: &[&str] = &[
    "access_token",
    "api_key",
    "apikey",
    "auth",
    "authorization",
    "client_secret",
    "code",
    "id_token",
    "key",
    "pass",
    "passwd",
    "password",
    "pwd",
    "refresh_token",
    "secret",
    "session",
    "sessionid",
    "sig",
    "signature",
    "token",
];

/// A request target as records show it: the userinfo of an absolute URI (`user:pass@`)
/// replaced by `***@`, the values of query parameters that usually carry secrets by `***`,
/// and cut at [`MAX_LOGGED_TARGET`].
pub fn shown_target(raw: &str) -> String {
    let (before_query, query) = match raw.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (raw, None),
    };
    let mut out = String::with_capacity(raw.len().min(MAX_LOGGED_TARGET + 3));
    match before_query.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '#']).unwrap_or(rest.len());
            let (authority, path) = rest.split_at(end);
            out.push_str(scheme);
            out.push_str("://");
            match authority.rsplit_once('@') {
                Some((_, host)) => {
                    out.push_str("***@");
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if SECRET_PARAMS.iter().any(|s| name.eq_ignore_ascii_case(s)) => {
                    out.push_str(name);
                    out.push_str("=***");
                }
                _ => out.push_str(pair),
            }
        }
    }
    cut(out, MAX_LOGGED_TARGET)
}

/// `s` as a record shows it: borrowed unless it has to be cut.
fn bounded(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        std::borrow::Cow::Borrowed(s)
    } else {
        std::borrow::Cow::Owned(cut(s.to_owned(), max))
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), marked with `...` when cut.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push_str("...");
    }
    s
}

/// One recent failure, as the status page shows it (no client address, no credential).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentError {
    pub at: String,
    pub route: String,
    pub status: u16,
    pub error: &'static str,
    pub details: String,
}

/// A route's traffic, as the status page shows it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RouteCount {
    pub open_tunnels: usize,
    pub requests: u64,
}

/// One request or tunnel at its end, as it is recorded.
pub struct Finished<'a> {
    pub client: &'a Client,
    /// `http`, `connect`, `socks5`, `socks4`: the metrics' protocol label.
    pub protocol: &'static str,
    /// The method (`GET`, `CONNECT`, `UPGRADE`, `socks5`, `UDP ASSOCIATE`).
    pub method: &'a str,
    /// The request target or tunnel destination, as the record shows it.
    pub target: &'a dyn std::fmt::Display,
    pub status: u16,
    /// The `Proxy-Status` error type and its details, when it failed.
    pub error: Option<(&'static str, &'a str)>,
    pub started: Instant,
}

/// The counters and records; see the module doc.
pub struct Ledger {
    metrics: Arc<Metrics>,
    access_log: AccessLog,
    recent: Mutex<VecDeque<RecentError>>,
    per_route: Mutex<BTreeMap<String, RouteCount>>,
    open_tunnels: AtomicUsize,
    zero_copy: AtomicU64,
}

/// A tunnel counted as open until this is dropped.
pub struct OpenTunnel<'a>(&'a Ledger);

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        self.0.open_tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Ledger {
    pub fn new(observe: Observe) -> Self {
        Self {
            metrics: observe.metrics,
            access_log: observe.access_log,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            per_route: Mutex::default(),
            open_tunnels: AtomicUsize::new(0),
            zero_copy: AtomicU64::new(0),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Reopens the access log file (SIGHUP, after logrotate).
    pub fn reopen_access_log(&self) {
        self.access_log.reopen();
    }

    /// Tunnels open right now.
    pub fn open_tunnels(&self) -> usize {
        self.open_tunnels.load(Ordering::Relaxed)
    }

    /// Tunnels relayed with splice(2) since start.
    pub fn zero_copy_tunnels(&self) -> u64 {
        self.zero_copy.load(Ordering::Relaxed)
    }

    /// Per route (by label): tunnels open now, requests answered since start.
    pub fn per_route(&self) -> Vec<(String, RouteCount)> {
        self.per_route
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// The last failures, oldest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A tunnel was granted (`status`) on `route`: counted as a request, and as open on its
    /// route until [`Ledger::tunnel_closed`].
    pub fn tunnel_granted(&self, protocol: &'static str, status: u16, route: &str) {
        self.metrics.request(protocol, status, route, None);
        self.count_route(route, 1, 1);
    }

    /// The relay of a granted tunnel starts: open until the guard drops.
    pub fn tunnel_running(&self) -> OpenTunnel<'_> {
        self.open_tunnels.fetch_add(1, Ordering::Relaxed);
        OpenTunnel(self)
    }

    /// A granted tunnel ended after carrying `r`.
    pub fn tunnel_closed(&self, f: &Finished, r: &Relayed) {
        let route = f.client.trail.route();
        if r.zero_copy {
            self.zero_copy.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.bytes(&route, r.up, r.down);
        self.count_route(&route, 0, -1);
        self.record(f, &route, (r.up, r.down), Some(r));
    }

    /// A request answered without becoming a tunnel (or refused before one): metrics, recent
    /// failures, the record.
    pub fn request(&self, f: &Finished) {
        let route = f.client.trail.route();
        self.metrics
            .request(f.protocol, f.status, &route, f.error.map(|(e, _)| e));
        let bytes = f.client.trail.bytes();
        self.metrics.bytes(&route, bytes.0, bytes.1);
        self.count_route(&route, 1, 0);
        if let Some((error, details)) = f.error
            && let Ok(mut recent) = self.recent.lock()
        {
            // Details can quote the request (a malformed URL): never its credentials.
            let details = cut(crate::upstream::redact(details), MAX_LOGGED_TARGET);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(RecentError {
                at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                route: route.clone(),
                status: f.status,
                error,
                details,
            });
        }
        self.record(f, &route, bytes, None);
    }

    fn count_route(&self, route: &str, requests: u64, open: isize) {
        if let Ok(mut m) = self.per_route.lock() {
            let c = match m.get_mut(route) {
                Some(c) => c,
                None => m.entry(route.to_owned()).or_default(),
            };
            c.requests += requests;
            c.open_tunnels = c.open_tunnels.saturating_add_signed(open);
        }
    }

    /// The access record, in the format configured: the one place it is written.
    fn record(&self, f: &Finished, route: &str, (up, down): (u64, u64), tunnel: Option<&Relayed>) {
        let format = self.access_log.format();
        if format == Format::Off {
            return;
        }
        let duration_ms = f.started.elapsed().as_millis() as u64;
        let user = f
            .client
            .user
            .as_deref()
            .map(|u| bounded(u, MAX_LOGGED_USER));
        let user = user.as_deref().unwrap_or("-");
        let target = shown_target(&f.target.to_string());
        match (format, tunnel) {
            (Format::Off, _) => {}
            // Field order is what log readers grep for: method and user first.
            (Format::Text, Some(r)) => tracing::info!(
                method = f.method,
                user,
                target = %target,
                status = f.status,
                up,
                down,
                duration_ms,
                end = %r.end,
                zero_copy = r.zero_copy,
                "tunnel closed"
            ),
            (Format::Text, None) => tracing::info!(
                peer = %f.client.addr,
                user,
                method = f.method,
                uri = %target,
                status = f.status,
                up,
                down,
                duration_ms,
                "request"
            ),
            (Format::Json, _) => {
                // Serialized under the trail's lock (uncontended: the request is done) rather
                // than cloned out of it.
                let none = Chosen::default();
                let guard = f.client.trail.chosen.lock();
                let chosen = guard.as_deref().unwrap_or(&none);
                let (_, hops, resolved) = f.client.trail.tracer().summary();
                self.access_log.write(&access_log::Record {
                    ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()),
                    client: f.client.addr,
                    user: f.client.user.as_ref().map(|_| user),
                    protocol: f.protocol,
                    method: f.method,
                    target,
                    route: chosen.route.as_deref().unwrap_or(route),
                    member: chosen.member.as_deref(),
                    status: f.status,
                    error: f.error.map(|(e, _)| e),
                    bytes_up: up,
                    bytes_down: down,
                    duration_ms,
                    dial_ms: chosen.dial.map(access_log::ms),
                    hops: hops.into_iter().map(access_log::ms).collect(),
                    resolved,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Credentials in a URL never reach a record; long targets are cut.
    #[test]
    fn targets_are_shown_without_secrets_and_bounded() {
        assert_eq!(
            shown_target("http://user:pa@ss@example.test:8080/a?q=1&token=abc&Password=x"),
            "http://***@example.test:8080/a?q=1&token=***&Password=***"
        );
        assert_eq!(shown_target("example.test:443"), "example.test:443");
        assert_eq!(shown_target("/plain?key=v"), "/plain?key=***");
        let long = format!("http://h/{}", "\u{e9}".repeat(5000));
        let shown = shown_target(&long);
        assert!(shown.len() <= MAX_LOGGED_TARGET + 3 && shown.ends_with("..."));
    }
}
