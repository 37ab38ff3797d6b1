//! The admin listener: a second, small HTTP/1 server for operators, off unless configured.
//!
//! - `/metrics`: Prometheus exposition (OpenMetrics when the scraper asks for it, the classic
//!   text format otherwise);
//! - `/healthz` (the process serves) and `/readyz` (listeners bound, every pool in use has a
//!   healthy member);
//! - `/status` (one self-refreshing HTML page) and `/status.json` (the same data);
//! - `/proxy.pac`: a PAC file generated from the routing in force.
//!
//! Beyond loopback it is reachable only with `Authorization: Bearer <admin_token>` and/or from
//! `admin_allow` addresses (the configuration refuses to start it open). It reads the session
//! core and admission; nothing below imports it.

mod collector;
mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::config::runtime::AdminSettings;
use crate::routing::Action;
use crate::server::Admission;
use crate::session::Core;
use crate::shutdown::Shutdown;

/// What the admin pages say about the process itself.
#[derive(Debug)]
pub struct RunInfo {
    pub started: Instant,
    pub version: &'static str,
    /// The proxy's listeners, once bound.
    pub listeners: Mutex<Vec<SocketAddr>>,
    pub config_file: Option<String>,
    /// When the last reload happened and what came of it.
    pub last_reload: Mutex<Option<(String, Result<(), String>)>>,
}

impl RunInfo {
    pub fn new(config_file: Option<String>) -> Self {
        Self {
            started: Instant::now(),
            version: env!("CARGO_PKG_VERSION"),
            listeners: Mutex::new(Vec::new()),
            config_file,
            last_reload: Mutex::new(None),
        }
    }

    /// Records a reload's result.
    pub fn reloaded(&self, result: Result<(), String>) {
        if let Ok(mut last) = self.last_reload.lock() {
            *last = Some((
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                result,
            ));
        }
    }

    fn listeners(&self) -> Vec<SocketAddr> {
        self.listeners.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The admin listener's state.
pub struct Admin {
    core: Arc<Core>,
    admission: Arc<Admission>,
    info: Arc<RunInfo>,
    settings: AdminSettings,
    registry: Registry,
}

impl Admin {
    pub fn new(
        core: Arc<Core>,
        admission: Arc<Admission>,
        info: Arc<RunInfo>,
        settings: AdminSettings,
    ) -> Self {
        let mut registry = Registry::with_prefix("viaduct");
        core.metrics().register(&mut registry);
        registry.register_collector(Box::new(collector::Live {
            core: Arc::clone(&core),
            admission: Arc::clone(&admission),
            version: info.version,
        }));
        Self {
            core,
            admission,
            info,
            settings,
            registry,
        }
    }

    /// Why the proxy is not ready, or `None` when it is: listeners bound, and every pool a
    /// rule or the default sends to has a healthy member.
    pub fn not_ready(&self) -> Option<String> {
        if self.info.listeners().is_empty() {
            return Some("no listener is bound yet".into());
        }
        let router = self.core.router();
        for action in router
            .rules
            .iter()
            .map(|r| &r.action)
            .chain([&router.default])
        {
            if let Action::Pool(p) = action
                && !(0..p.members.len()).any(|i| p.is_up(i))
            {
                return Some(format!("pool {} has no healthy member", p.name));
            }
        }
        None
    }

    fn metrics(&self, openmetrics: bool) -> Response<Full<Bytes>> {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode metrics\n".into(),
            );
        }
        let (body, kind) = if openmetrics {
            (
                text,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            (classic(&text), "text/plain; version=0.0.4; charset=utf-8")
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        if let Ok(v) = header::HeaderValue::from_str(kind) {
            resp.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        resp
    }

    /// The refusal when `req` from `peer` may not use the admin pages.
    fn refusal(&self, req: &Request<Incoming>, peer: SocketAddr) -> Option<Response<Full<Bytes>>> {
        let ip = crate::target::normalize(peer.ip());
        if !self.settings.allow.is_empty() && !self.settings.allow.iter().any(|n| n.contains(&ip)) {
            return Some(plain(
                StatusCode::FORBIDDEN,
                format!("{ip} may not use the admin pages\n"),
            ));
        }
        if let Some(token) = &self.settings.token
            && !(self.settings.pac_public && req.uri().path() == "/proxy.pac")
        {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            use subtle::ConstantTimeEq;
            if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                let mut resp = plain(
                    StatusCode::UNAUTHORIZED,
                    "a bearer token is required\n".into(),
                );
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"viaduct admin\""),
                );
                return Some(resp);
            }
        }
        None
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        if let Some(resp) = self.refusal(&req, peer) {
            return Ok(resp);
        }
        let resp = match req.uri().path() {
            "/metrics" => {
                let openmetrics = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("application/openmetrics-text"));
                self.metrics(openmetrics)
            }
            "/healthz" => plain(StatusCode::OK, "ok\n".into()),
            "/readyz" => match self.not_ready() {
                None => plain(StatusCode::OK, "ready\n".into()),
                Some(why) => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            "/status" => typed(
                status::html(&status::snapshot(
                    &self.core,
                    &self.admission,
                    &self.info,
                    self.not_ready(),
                )),
                "text/html; charset=utf-8",
            ),
            "/status.json" => typed(
                serde_json::to_string_pretty(&status::snapshot(
                    &self.core,
                    &self.admission,
                    &self.info,
                    self.not_ready(),
                ))
                .unwrap_or_default(),
                "application/json",
            ),
            "/proxy.pac" => {
                let proxy = self.settings.pac_proxy.clone().unwrap_or_else(|| {
                    self.info
                        .listeners()
                        .first()
                        .map_or_else(|| "127.0.0.1:8083".into(), ToString::to_string)
                });
                typed(
                    crate::routing::pac::pac(&self.core.router(), &proxy),
                    "application/x-ns-proxy-autoconfig",
                )
            }
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found: /metrics, /healthz, /readyz, /status, /status.json, /proxy.pac\n"
                    .into(),
            ),
        };
        Ok(resp)
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = typed(body, "text/plain; charset=utf-8");
    *resp.status_mut() = status;
    resp
}

fn typed(body: String, kind: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// OpenMetrics text as the classic Prometheus text format (which `promtool check metrics`
/// and older scrapers read): counters' HELP and TYPE name the `_total` series, no `# EOF`,
/// no `# UNIT`.
fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let lines: Vec<&str> = openmetrics.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line == "# EOF" || line.starts_with("# UNIT ") {
            i += 1;
            continue;
        }
        // A family starts with HELP, then TYPE: rename both for counters.
        if let Some(rest) = line.strip_prefix("# HELP ")
            && let Some(next) = lines.get(i + 1)
            && let Some(ty) = next.strip_prefix("# TYPE ")
        {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = ty.rsplit(' ').next().unwrap_or("untyped");
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            i += 2;
            continue;
        }
        out.push_str(line);
        out.push('\n');
        i += 1;
    }
    out
}

/// Serves the admin pages on `listener` until shutdown begins.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: Shutdown) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.graceful().cancelled() => return,
        };
        let admin = Arc::clone(&admin);
        let stop = shutdown.hard_stop().clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| Arc::clone(&admin).handle(req, peer));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_by_their_series() {
        let om = "# HELP viaduct_requests Requests.\n# TYPE viaduct_requests counter\nviaduct_requests_total{route=\"direct\"} 3\n# HELP viaduct_tunnels_open Open.\n# TYPE viaduct_tunnels_open gauge\nviaduct_tunnels_open 1\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP viaduct_requests_total Requests.\n# TYPE viaduct_requests_total counter\nviaduct_requests_total{route=\"direct\"} 3\n# HELP viaduct_tunnels_open Open.\n# TYPE viaduct_tunnels_open gauge\nviaduct_tunnels_open 1\n"
        );
    }
}
