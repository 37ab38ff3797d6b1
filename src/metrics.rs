//! The metrics the data path records (Prometheus, through `prometheus-client`): requests by
//! protocol, status and route, errors by `Proxy-Status` token, bytes, dial and per-hop
//! handshake times, refusals. State that already lives elsewhere (open tunnels, pool members'
//! health) is read at scrape time by the admin listener's collector instead of being mirrored.
//!
//! Every label value comes from the configuration or from a fixed set (a route or pool name,
//! a status code, an error token, a limit's name): never a target, a client address or a
//! credential, so the number of series is bounded by the configuration.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `connect`, `http` (and `socks5` later).
    pub protocol: &'static str,
    /// `1xx` ... `5xx` (`other` past 599).
    pub class: &'static str,
    /// The exact status for those the proxy answers itself and the common ones, else `other`:
    /// an origin must not create a series per status code it invents.
    pub code: &'static str,
    /// `direct`, an upstream's or a pool's name, or `none` (refused before routing).
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// `up` (client to target) or `down`.
    pub direction: &'static str,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HopLabels {
    /// The upstream's (or pool's) name.
    pub upstream: String,
    /// The hop's position in the chain, from 1.
    pub hop: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `rejected`.
    pub result: &'static str,
}

/// Seconds, from 1 ms to ~16 s: dials and handshakes.
fn dial_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

/// The counters and histograms the data path updates. Names are registered without `_total`
/// (the encoder appends it to counters).
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub dial_seconds: Histogram,
    pub hop_connect_seconds: Family<HopLabels, Histogram>,
    pub limit_rejections: Family<LimitLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            errors: Family::default(),
            bytes: Family::default(),
            dial_seconds: Histogram::new(dial_buckets()),
            hop_connect_seconds: Family::new_with_constructor(|| Histogram::new(dial_buckets())),
            limit_rejections: Family::default(),
            config_reloads: Family::default(),
        }
    }
}

/// The class label of a status code.
pub fn class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// The `code` label (see [`RequestLabels::code`]).
pub fn code_label(code: u16) -> &'static str {
    match code {
        101 => "101",
        200 => "200",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        407 => "407",
        408 => "408",
        413 => "413",
        414 => "414",
        429 => "429",
        431 => "431",
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        504 => "504",
        508 => "508",
        _ => "other",
    }
}

impl Metrics {
    /// Adds these metrics to `registry` (under its `viaduct_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Requests and tunnels answered, by protocol, status and route",
            self.requests.clone(),
        );
        registry.register(
            "errors",
            "Failures by Proxy-Status error type",
            self.errors.clone(),
        );
        registry.register(
            "bytes",
            "Bytes carried, by direction (up: client to target) and route",
            self.bytes.clone(),
        );
        registry.register(
            "dial_seconds",
            "Time of successful dials: DNS, TCP and every hop's handshake (pool failover included)",
            self.dial_seconds.clone(),
        );
        registry.register(
            "hop_connect_seconds",
            "Each hop's own handshake time (TLS included), by upstream and hop position",
            self.hop_connect_seconds.clone(),
        );
        registry.register(
            "limit_rejections",
            "Connections and requests refused at a limit, by limit",
            self.limit_rejections.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by result",
            self.config_reloads.clone(),
        );
    }

    /// Counts one answered request or tunnel.
    pub fn request(
        &self,
        protocol: &'static str,
        code: u16,
        route: &str,
        error: Option<&'static str>,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                protocol,
                class: class(code),
                code: code_label(code),
                route: route.to_owned(),
            })
            .inc();
        if let Some(error) = error {
            self.errors.get_or_create(&ErrorLabels { error }).inc();
        }
    }

    /// Counts a tunnel's or a body's bytes.
    pub fn bytes(&self, route: &str, up: u64, down: u64) {
        for (direction, n) in [("up", up), ("down", down)] {
            if n > 0 {
                self.bytes
                    .get_or_create(&BytesLabels {
                        direction,
                        route: route.to_owned(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// Records a dial: its whole time and each hop's handshake.
    pub fn dial(&self, upstream: &str, took: Duration, hops: &[Duration]) {
        self.dial_seconds.observe(took.as_secs_f64());
        for (i, hop) in hops.iter().enumerate() {
            self.hop_connect_seconds
                .get_or_create(&HopLabels {
                    upstream: upstream.to_owned(),
                    hop: u16::try_from(i + 1).unwrap_or(u16::MAX),
                })
                .observe(hop.as_secs_f64());
        }
    }

    pub fn limit(&self, limit: &'static str) {
        self.limit_rejections
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "rejected" },
            })
            .inc();
    }
}
