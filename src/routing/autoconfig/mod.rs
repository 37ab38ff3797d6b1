//! Proxy auto-config consumed: requests that no `[[rules]]` entry matches (nor the bypass
//! list) go where the company's PAC script says. The script runs in QuickJS ([`engine`]),
//! off the async runtime, with a deadline and a memory limit per call; its answer
//! ([`answer`]) becomes a failover list of routes, tried in order like a pool's members (an
//! entry that fails is ejected for a while, as browsers remember bad proxies). Answers are
//! cached per (scheme, host) for the life of the script.

pub mod answer;
pub mod engine;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

use self::answer::Entry;
use self::engine::{Engine, Natives};
use super::Action;
use crate::pool::{Pool, PoolSettings, Strategy};
use crate::target::{Host, Target};
use crate::upstream::Route;
use crate::upstream::TlsOptions;

/// How long one `FindProxyForURL` call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(100);
/// Engine instances: a runaway call holds one, the others keep answering.
const WORKERS: usize = 2;
/// Answers kept, per (scheme, host).
const CACHE: usize = 4096;

/// A PAC script as configured: where it came from, its text, and credentials for the proxies
/// it names (`host:port` -> `user:pass` in URL userinfo form).
#[derive(Debug, Clone, Default)]
pub struct PacSource {
    pub source: String,
    /// The script's text; none when a URL could not be fetched (see `fetch_error`).
    pub script: Option<String>,
    /// Why the URL could not be fetched, when it could not.
    pub fetch_error: Option<String>,
    pub credentials: HashMap<String, String>,
    /// How often a URL is fetched again. Default 10 minutes.
    pub refresh: Duration,
    /// How an `https://` URL's certificate is trusted (the upstreams' settings).
    pub tls: TlsOptions,
    /// `auto` (WPAD): the DNS search domains to walk, when not the system's
    /// (`/etc/resolv.conf`'s `search` and `domain`).
    pub search: Option<Vec<String>>,
    /// `auto` (WPAD): the port `wpad.<domain>` serves on (80; tests use a free port).
    pub wpad_port: u16,
}

impl PacSource {
    /// A PAC from a script's text (tests, and files once read).
    pub fn script(source: &str, script: &str) -> Self {
        Self {
            source: source.to_owned(),
            script: Some(script.to_owned()),
            fetch_error: None,
            credentials: HashMap::new(),
            refresh: DEFAULT_REFRESH,
            tls: TlsOptions::default(),
            search: None,
            wpad_port: 80,
        }
    }

    /// `--pac auto`: found by WPAD when the proxy runs.
    pub fn auto() -> Self {
        Self {
            script: None,
            fetch_error: Some("WPAD discovery has not run yet".into()),
            ..Self::script("auto", "")
        }
    }

    /// WPAD (`--pac auto`).
    pub fn is_auto(&self) -> bool {
        self.source == "auto"
    }

    /// An `http(s)://` source or WPAD (fetched, and fetched again), not a file.
    pub fn is_url(&self) -> bool {
        self.source.starts_with("http://") || self.source.starts_with("https://") || self.is_auto()
    }
}

/// How often a PAC URL is fetched again by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(600);

/// Reads a PAC script from a file or an `http://` / `https://` URL (`tls`: how the server's
/// certificate is trusted, as for `https://` upstreams), decoding UTF-8, UTF-16 with a BOM, or
/// else Latin-1 (which covers the cp1252 files some servers serve).
pub fn fetch(source: &str, timeout: Duration, tls: &TlsOptions) -> Result<String, String> {
    let bytes = if let Some(rest) = source.strip_prefix("http://") {
        fetch_http(rest, timeout, None).map_err(|e| format!("PAC {source}: {e}"))?
    } else if let Some(rest) = source.strip_prefix("https://") {
        fetch_http(rest, timeout, Some(tls)).map_err(|e| format!("PAC {source}: {e}"))?
    } else {
        std::fs::read(source).map_err(|e| format!("PAC {source}: {e}"))?
    };
    Ok(decode(&bytes))
}

/// `--pac system`: the desktop's PAC setting. `auto_proxy` (or `AUTO_PROXY`) in the
/// environment first; else GNOME's `org.gnome.system.proxy` when its mode is `auto` (its
/// `autoconfig-url`, read with `gsettings`). `env` is the environment lookup (injected by
/// tests).
pub fn system_source(env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if let Some(v) = env("auto_proxy")
        .or_else(|| env("AUTO_PROXY"))
        .filter(|v| !v.trim().is_empty())
    {
        return Ok(v.trim().to_owned());
    }
    let gsettings = |key: &str| -> Option<String> {
        let out = std::process::Command::new("gsettings")
            .args(["get", "org.gnome.system.proxy", key])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let v = String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_matches('\'')
            .to_owned();
        (!v.is_empty()).then_some(v)
    };
    if gsettings("mode").as_deref() == Some("auto")
        && let Some(url) = gsettings("autoconfig-url")
    {
        return Ok(url);
    }
    Err("--pac system: the desktop names no PAC (auto_proxy is not set, and GNOME's proxy mode is not \"auto\")".into())
}

/// WPAD by DNS: `wpad.<domain>` for each search domain, walking up one label at a time
/// (never to a single-label name: `wpad.example` is refused, as browsers do since the 2007
/// WPAD name-collision issues). In order, without duplicates.
pub fn wpad_candidates(search: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for domain in search {
        let labels: Vec<&str> = domain
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .collect();
        for i in 0..labels.len().saturating_sub(1) {
            let name = format!("wpad.{}", labels[i..].join(".")).to_ascii_lowercase();
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// The system's DNS search domains (`/etc/resolv.conf`: `search`, else `domain`).
fn system_search() -> Vec<String> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut search = Vec::new();
    let mut domain = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("search") => search = words.map(str::to_owned).collect(),
            Some("domain") => domain = words.take(1).map(str::to_owned).collect(),
            _ => {}
        }
    }
    if search.is_empty() { domain } else { search }
}

/// Finds the WPAD script: the first `wpad.<domain>` that resolves (through `natives`'
/// resolver) and serves `/wpad.dat`. Returns the URL and the script.
fn discover(source: &PacSource, natives: &Natives) -> Result<(String, String), String> {
    let search = source.search.clone().unwrap_or_else(system_search);
    let candidates = wpad_candidates(&search);
    if candidates.is_empty() {
        return Err("WPAD: no DNS search domain to look for wpad.<domain> in".into());
    }
    let mut tried = Vec::new();
    for name in &candidates {
        let resolver = Arc::clone(&natives.resolver);
        let (n, port) = (name.clone(), source.wpad_port);
        let addrs = natives.handle.block_on(async move {
            tokio::time::timeout(Duration::from_secs(5), resolver.resolve(&n, port)).await
        });
        let Some(addr) = addrs
            .ok()
            .and_then(Result::ok)
            .and_then(|a| a.into_iter().next())
        else {
            tried.push(format!("{name} (no address)"));
            continue;
        };
        let authority = if source.wpad_port == 80 {
            name.clone()
        } else {
            format!("{name}:{}", source.wpad_port)
        };
        let url = format!("http://{authority}/wpad.dat");
        match fetch_http_at(
            &format!("{authority}/wpad.dat"),
            Duration::from_secs(10),
            None,
            Some(addr),
        ) {
            Ok(bytes) => return Ok((url, decode(&bytes))),
            Err(e) => tried.push(format!("{url} ({e})")),
        }
    }
    Err(format!("WPAD found nothing: {}", tried.join(", ")))
}

/// Text from a PAC file's bytes (see [`fetch`]).
pub fn decode(bytes: &[u8]) -> String {
    let utf16 = |b: &[u8], le: bool| {
        let units: Vec<u16> = b
            .chunks_exact(2)
            .map(|c| {
                if le {
                    u16::from_le_bytes([c[0], c[1]])
                } else {
                    u16::from_be_bytes([c[0], c[1]])
                }
            })
            .collect();
        String::from_utf16_lossy(&units)
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => String::from_utf8_lossy(rest).into_owned(),
        [0xFF, 0xFE, rest @ ..] => utf16(rest, true),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, false),
        _ => match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
        },
    }
}

/// An HTTP/1.0 GET, over TLS when `tls` (blocking: PAC files are read while the
/// configuration is built and by the refresher's blocking task, off the async runtime).
/// Hand-written because it is one request and one response now and then, where a client stack
/// would add nothing.
fn fetch_http(rest: &str, timeout: Duration, tls: Option<&TlsOptions>) -> Result<Vec<u8>, String> {
    fetch_http_at(rest, timeout, tls, None)
}

/// [`fetch_http`], connecting to `at` when given (an address the caller resolved).
fn fetch_http_at(
    rest: &str,
    timeout: Duration,
    tls: Option<&TlsOptions>,
    at: Option<std::net::SocketAddr>,
) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let default = if tls.is_some() { 443 } else { 80 };
    // `host:port`, `[v6]:port`, or no port (the scheme's default).
    let (host, hostport) = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')) => {
            (h.trim_matches(['[', ']']).to_owned(), format!("{h}:{p}"))
        }
        _ => (
            authority.trim_matches(['[', ']']).to_owned(),
            format!("{authority}:{default}"),
        ),
    };
    let addr = match at {
        Some(a) => a,
        None => hostport
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("no address")?,
    };
    let tcp = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET /{path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: viaduct\r\nAccept: */*\r\n\r\n"
    );
    let mut all = Vec::new();
    let read = |s: &mut dyn Read, all: &mut Vec<u8>| -> Result<(), String> {
        match s.take(4 << 20).read_to_end(all) {
            Ok(_) => Ok(()),
            // A server that closes without TLS's close_notify after a complete response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !all.is_empty() => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    };
    match tls {
        None => {
            let mut s = tcp;
            s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
            read(&mut s, &mut all)?;
        }
        Some(options) => {
            let connector = crate::upstream::tls::connector(options).map_err(|e| e.to_string())?;
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let conn = rustls::ClientConnection::new(Arc::clone(connector.config()), name)
                .map_err(|e| e.to_string())?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            // TLS failures in words (the certificate, the handshake), as for upstreams.
            let words = |e: std::io::Error| {
                e.get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .map_or_else(|| e.to_string(), crate::upstream::error::tls_words)
                    .replace("the proxy's", "the PAC server's")
                    .replace("the proxy ", "the PAC server ")
            };
            s.write_all(request.as_bytes()).map_err(words)?;
            read(&mut s, &mut all)?;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(&all) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err("not an HTTP response".into()),
    };
    match res.code {
        Some(200) => Ok(all[len..].to_vec()),
        Some(c) => Err(format!("the server answered {c}")),
        None => Err("not an HTTP response".into()),
    }
}

/// What the script decided for one (scheme, host).
#[derive(Debug)]
pub struct Decided {
    /// The script's answer as it came (`PROXY a:8080; DIRECT`).
    pub raw: String,
    /// The routes to try, in order.
    pub action: Action,
}

/// Why the script gave no usable answer (or there is no script yet).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PacError {
    #[error("PAC FindProxyForURL(\"{url}\") {reason}")]
    Call { url: String, reason: String },
    #[error("PAC {from} is not loaded: {reason} (retrying)")]
    NotLoaded { from: String, reason: String },
}

/// A loaded PAC script.
pub struct Pac {
    /// Where it came from (a path or a URL), for messages and the status page.
    pub source: String,
    engine: Engine,
    cache: Mutex<lru::LruCache<(bool, String), Arc<Decided>>>,
    /// Routes and failover lists by answer, so that an ejected entry stays ejected across
    /// requests.
    lists: Mutex<HashMap<String, Action>>,
    /// Each proxy's route, by entry (`http proxy a:8080`).
    routes: Mutex<HashMap<String, Route>>,
    /// `user:pass@` (as written in a URL) per proxy `host:port`, for the proxies it names.
    credentials: HashMap<String, String>,
    /// Counters, shared with the handle that outlives reloads of the script.
    stats: Arc<Stats>,
}

/// What the PAC engine did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Calls into the script (cache misses).
    pub evaluations: AtomicU64,
    /// Calls that gave a usable answer.
    pub answered: AtomicU64,
    /// Answers served from the cache.
    pub cache_hits: AtomicU64,
    /// Successful loads (start, reloads, refreshes).
    pub loads: AtomicU64,
    /// Loads or fetches that failed (the previous script, if any, stayed).
    pub load_failures: AtomicU64,
}

impl std::fmt::Debug for Pac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pac({})", self.source)
    }
}

impl Pac {
    /// Loads `script` (from `source`). `credentials`: `host:port` -> `user:pass` in URL
    /// userinfo form (percent-encoded), used for the proxies the script names.
    pub fn load(
        source: &str,
        script: &str,
        natives: Natives,
        credentials: HashMap<String, String>,
    ) -> Result<Self, String> {
        let engine = Engine::new(script, natives, WORKERS, CALL_TIMEOUT)
            .map_err(|e| format!("PAC {source}: {e}"))?;
        Ok(Self {
            source: source.to_owned(),
            engine,
            cache: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            lists: Mutex::default(),
            routes: Mutex::default(),
            credentials,
            stats: Arc::default(),
        })
    }

    /// The URL and host the script is called with: `https://host:port/` (`https://host/` for
    /// 443) for tunnels, `http://host[:port]/` for plain requests (paths are not passed: answers
    /// are cached per scheme and host, as Chrome strips https paths).
    pub fn url_for(target: &Target, tls: bool) -> (String, String) {
        let host = match &target.host {
            Host::Name(n) => n.clone(),
            Host::Ip(ip) => ip.to_string(),
        };
        let in_url = match &target.host {
            Host::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => host.clone(),
        };
        let (scheme, default) = if tls { ("https", 443) } else { ("http", 80) };
        let url = if target.port == default {
            format!("{scheme}://{in_url}/")
        } else {
            format!("{scheme}://{in_url}:{}/", target.port)
        };
        (url, host)
    }

    /// Where `target` goes (`tls`: a tunnel), from the cache or the script.
    pub async fn decide(&self, target: &Target, tls: bool) -> Result<Arc<Decided>, PacError> {
        let (url, host) = Self::url_for(target, tls);
        let key = (tls, host.clone());
        if let Some(hit) = self
            .cache
            .lock()
            .ok()
            .and_then(|mut c| c.get(&key).cloned())
        {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.stats.evaluations.fetch_add(1, Ordering::Relaxed);
        let raw = self
            .engine
            .find_proxy(&url, &host)
            .await
            .map_err(|reason| PacError::Call {
                url: url.clone(),
                reason,
            })?;
        let entries = answer::parse(&raw).map_err(|e| PacError::Call {
            url: url.clone(),
            reason: format!("answered {:?}, which names no usable entry", e.answer),
        })?;
        let action = self
            .action_for(&raw, &entries)
            .map_err(|reason| PacError::Call {
                url: url.clone(),
                reason,
            })?;
        let decided = Arc::new(Decided { raw, action });
        self.stats.answered.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.cache.lock() {
            c.put(key, Arc::clone(&decided));
        }
        Ok(decided)
    }

    /// The route or failover list for an answer, shared by every host that gets the same
    /// answer (so an ejected entry stays ejected, kept-alive connections are reused); each
    /// proxy's route is shared by every list that names it (so what its authentication
    /// learned is too).
    fn action_for(&self, raw: &str, entries: &[Entry]) -> Result<Action, String> {
        if let [Entry::Direct] = entries {
            return Ok(Action::direct());
        }
        let canonical = entries
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if let Some(a) = self
            .lists
            .lock()
            .ok()
            .and_then(|l| l.get(&canonical).cloned())
        {
            return Ok(a);
        }
        let route_of = |e: &Entry| -> Result<Route, String> {
            let Entry::Proxy { scheme, addr } = e else {
                return Ok(Route::direct());
            };
            let key = e.to_string();
            if let Some(r) = self.routes.lock().ok().and_then(|r| r.get(&key).cloned()) {
                return Ok(r);
            }
            let userinfo = self
                .credentials
                .get(&addr.to_string())
                .map_or_else(String::new, |c| format!("{c}@"));
            let route = Route::parse(&format!("{scheme}://{userinfo}{addr}"))
                .map_err(|err| format!("answered {raw:?}: entry {e} is not usable: {err}"))?;
            if let Ok(mut r) = self.routes.lock() {
                if r.len() >= CACHE {
                    r.clear();
                }
                r.insert(key, route.clone());
            }
            Ok(route)
        };
        let action = if let [single @ Entry::Proxy { .. }] = entries {
            // One proxy: nothing to fail over to, so it goes as a rule's upstream would.
            Action::Upstream(Arc::new(super::Upstream {
                name: "pac".into(),
                route: route_of(single)?,
            }))
        } else {
            let mut members = Vec::with_capacity(entries.len());
            for e in entries {
                members.push((e.to_string(), route_of(e)?));
            }
            Action::Pool(Arc::new(Pool::new(
                "pac".into(),
                members,
                PoolSettings {
                    strategy: Strategy::Failover,
                    failures: 1,
                    ejection: Duration::from_secs(60),
                    max_attempts: entries.len(),
                    ..PoolSettings::default()
                },
            )))
        };
        if let Ok(mut l) = self.lists.lock() {
            if l.len() >= CACHE {
                l.clear();
            }
            l.insert(canonical, action.clone());
        }
        Ok(action)
    }
}

/// The PAC in force for a configured source: the loaded script (none until it loads), when
/// and why the last load failed, and the counters. The session core asks it; a refresher
/// (see [`PacHandle::refresh`]) replaces the script behind it.
pub struct PacHandle {
    pub source: PacSource,
    current: ArcSwapOption<Pac>,
    /// When the script in force was loaded.
    loaded_at: Mutex<Option<SystemTime>>,
    /// Why the last load failed, while it has not loaded since.
    last_error: Mutex<Option<String>>,
    pub stats: Arc<Stats>,
    natives: Natives,
    /// For WPAD: the URL discovery found.
    found: Mutex<Option<String>>,
}

impl std::fmt::Debug for PacHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PacHandle({})", self.source.source)
    }
}

impl PacHandle {
    /// A handle for `source`, with its script loaded when `source.script` holds one. A script
    /// that does not load is an error; a URL that could not be fetched is not (`fetch_error`):
    /// requests get 502 naming it until a refresh loads it.
    pub fn new(source: PacSource, natives: Natives) -> Result<Self, String> {
        let handle = Self {
            current: ArcSwapOption::empty(),
            loaded_at: Mutex::new(None),
            last_error: Mutex::new(source.fetch_error.clone()),
            stats: Arc::default(),
            natives,
            found: Mutex::new(None),
            source,
        };
        if let Some(script) = handle.source.script.clone() {
            handle.install(&script)?;
        }
        Ok(handle)
    }

    /// Loads `script` and puts it in force.
    fn install(&self, script: &str) -> Result<(), String> {
        let mut pac = Pac::load(
            &self.source.source,
            script,
            self.natives.clone(),
            self.source.credentials.clone(),
        )?;
        pac.stats = Arc::clone(&self.stats);
        self.current.store(Some(Arc::new(pac)));
        if let Ok(mut t) = self.loaded_at.lock() {
            *t = Some(SystemTime::now());
        }
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
        self.stats.loads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn failed(&self, reason: String) {
        self.stats.load_failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(reason);
        }
    }

    /// Where `target` goes, by the script in force.
    pub async fn decide(&self, target: &Target, tls: bool) -> Result<Arc<Decided>, PacError> {
        match self.current.load_full() {
            Some(pac) => pac.decide(target, tls).await,
            None => Err(PacError::NotLoaded {
                from: self.source.source.clone(),
                reason: self
                    .last_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .map(|e| {
                        let prefix = format!("PAC {}: ", self.source.source);
                        e.strip_prefix(&prefix).map(str::to_owned).unwrap_or(e)
                    })
                    .unwrap_or_else(|| "not fetched yet".into()),
            }),
        }
    }

    /// Whether a script is in force.
    pub fn loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Where the script comes from: the configured source, and for WPAD what it found.
    pub fn origin(&self) -> String {
        match self.found.lock().ok().and_then(|f| f.clone()) {
            Some(url) => format!("{} ({url})", self.source.source),
            None => self.source.source.clone(),
        }
    }

    /// When the script in force was loaded, and why the last attempt failed (if it did).
    pub fn status(&self) -> (Option<SystemTime>, Option<String>) {
        (
            self.loaded_at.lock().ok().and_then(|t| *t),
            self.last_error.lock().ok().and_then(|e| e.clone()),
        )
    }

    /// Keeps a URL source fresh while the handle lives: until the script loads, fetches again
    /// with backoff (1 s doubling to 1 min); then every `every`. A failed fetch or load keeps
    /// the script in force. Ends when the handle is dropped (a reload made a new one).
    pub fn refresh(self: &Arc<Self>, every: Duration) {
        if !self.source.is_url() {
            return;
        }
        let weak = Arc::downgrade(self);
        let mut first = self.source.is_auto();
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let wait = match weak.upgrade() {
                    // WPAD runs at once: nothing was fetched while the configuration loaded.
                    Some(_) if std::mem::take(&mut first) => Duration::ZERO,
                    Some(h) if h.loaded() => every,
                    Some(_) => backoff,
                    None => return,
                };
                tokio::time::sleep(wait).await;
                let Some(h) = weak.upgrade() else {
                    return;
                };
                let worker = Arc::clone(&h);
                let done = tokio::task::spawn_blocking(move || {
                    let src = &worker.source;
                    let script = if src.is_auto() {
                        let (url, script) = discover(src, &worker.natives)?;
                        tracing::info!(%url, "WPAD found the PAC");
                        if let Ok(mut f) = worker.found.lock() {
                            *f = Some(url);
                        }
                        script
                    } else {
                        fetch(&src.source, Duration::from_secs(10), &src.tls)?
                    };
                    worker.install(&script)
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                match done {
                    Ok(()) => {
                        tracing::info!(source = %h.source.source, "PAC loaded");
                        backoff = Duration::from_secs(1);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "PAC not refreshed; keeping what is in force");
                        h.failed(e);
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::resolve::Resolving;
    use std::net::SocketAddr;

    /// Names from a fixed map; anything else fails.
    struct Fixed;
    impl crate::upstream::Resolve for Fixed {
        fn resolve(&self, host: &str, port: u16) -> Resolving {
            let found: Vec<SocketAddr> = match host {
                "intranet.corp" => vec![SocketAddr::from(([10, 1, 2, 3], port))],
                "dual.corp" => vec![
                    SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, 1], port)),
                    SocketAddr::from(([192, 168, 7, 7], port)),
                ],
                _ => vec![],
            };
            Box::pin(async move {
                if found.is_empty() {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no such name",
                    ))
                } else {
                    Ok(found)
                }
            })
        }
    }

    /// An engine whose FindProxyForURL evaluates the host argument as an expression, so each
    /// helper can be called with any arguments. The clock is fixed at
    /// 2026-12-05T23:30:00Z, a Saturday.
    fn engine() -> Engine {
        let natives = Natives {
            resolver: Arc::new(Fixed),
            handle: tokio::runtime::Handle::current(),
            clock: Arc::new(|| 1_796_513_400_000.0),
            my_addresses: vec!["192.0.2.10".parse().unwrap()],
        };
        Engine::new(
            "function FindProxyForURL(url, host) { return String(eval(host)); }",
            natives,
            1,
            Duration::from_secs(2),
        )
        .unwrap()
    }

    /// The helpers, with browsers' answers (Chromium's where browsers differ).
    #[tokio::test(flavor = "multi_thread")]
    async fn helpers_behave_as_in_browsers() {
        let e = engine();
        let cases: &[(&str, &str)] = &[
            ("isPlainHostName('www')", "true"),
            ("isPlainHostName('www.example')", "false"),
            ("isPlainHostName('::1')", "false"),
            ("dnsDomainIs('www.example.com', '.example.com')", "true"),
            ("dnsDomainIs('www', '.example.com')", "false"),
            ("dnsDomainIs('example.com', '.example.com')", "false"),
            ("dnsDomainIs('a.x', '.x')", "true"),
            (
                "localHostOrDomainIs('www.example.com', 'www.example.com')",
                "true",
            ),
            ("localHostOrDomainIs('www', 'www.example.com')", "true"),
            (
                "localHostOrDomainIs('www.other.com', 'www.example.com')",
                "false",
            ),
            ("dnsDomainLevels('www')", "0"),
            ("dnsDomainLevels('a.b.c')", "2"),
            (
                "shExpMatch('http://a.example.com/x', '*.example.com/*')",
                "true",
            ),
            (
                "shExpMatch('http://a.example.com/x', '*.example.org/*')",
                "false",
            ),
            ("shExpMatch('a.b', 'a?b')", "true"),
            ("shExpMatch('axxb', 'a?b')", "false"),
            ("shExpMatch('a+b(c)', 'a+b(c)')", "true"),
            ("isInNet('10.1.2.3', '10.0.0.0', '255.0.0.0')", "true"),
            ("isInNet('10.1.2.3', '10.1.3.0', '255.255.255.0')", "false"),
            ("isInNet('intranet.corp', '10.0.0.0', '255.0.0.0')", "true"),
            ("isInNet('nowhere.corp', '10.0.0.0', '255.0.0.0')", "false"),
            (
                "isInNet('255.255.255.255', '255.255.255.0', '255.255.255.0')",
                "true",
            ),
            ("isInNet('10.1.2.3', 'bad', '255.0.0.0')", "false"),
            ("dnsResolve('intranet.corp')", "10.1.2.3"),
            ("dnsResolve('dual.corp')", "192.168.7.7"),
            ("dnsResolve('nowhere.corp')", "null"),
            ("isResolvable('intranet.corp')", "true"),
            ("isResolvable('nowhere.corp')", "false"),
            ("dnsResolveEx('dual.corp')", "fd00::1;192.168.7.7"),
            ("isInNetEx('dual.corp', 'fd00::/8')", "true"),
            ("isInNetEx('dual.corp', '10.0.0.0/8')", "false"),
            ("myIpAddress()", "192.0.2.10"),
            // 2026-12-05 23:30 UTC is a Saturday in December.
            ("weekdayRange('SAT', 'GMT')", "true"),
            ("weekdayRange('FRI', 'MON', 'GMT')", "true"),
            ("weekdayRange('MON', 'FRI', 'GMT')", "false"),
            ("timeRange(23, 'GMT')", "true"),
            ("timeRange(22, 2, 'GMT')", "true"),
            ("timeRange(2, 22, 'GMT')", "false"),
            ("timeRange(23, 0, 23, 45, 'GMT')", "true"),
            ("timeRange(22, 0, 1, 0, 'GMT')", "true"),
            ("timeRange(0, 0, 23, 29, 'GMT')", "false"),
            ("dateRange('DEC', 'GMT')", "true"),
            ("dateRange('NOV', 'JAN', 'GMT')", "true"),
            ("dateRange('JAN', 'NOV', 'GMT')", "false"),
            ("dateRange(1, 10, 'GMT')", "true"),
            ("dateRange(6, 31, 'GMT')", "false"),
            ("dateRange(2025, 2027, 'GMT')", "true"),
            ("dateRange(2027, 'GMT')", "false"),
            ("dateRange(1, 'DEC', 2026, 31, 'DEC', 2026, 'GMT')", "true"),
            // ES2015+ in the script itself.
            (
                "(() => { const a = [1, 2]; let [x, y] = a; return `${x + y}`; })()",
                "3",
            ),
        ];
        for (expr, want) in cases {
            let got = e.find_proxy("https://x/", expr).await.unwrap();
            assert_eq!(&got, want, "{expr}");
        }
    }

    /// Files load as UTF-8, UTF-16 with a BOM, or Latin-1.
    #[test]
    fn pac_files_decode() {
        assert_eq!(decode(b"\xEF\xBB\xBFvar a = 1;"), "var a = 1;");
        let utf16le: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("var é;".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(decode(&utf16le), "var é;");
        let utf16be: Vec<u8> = [0xFE, 0xFF]
            .into_iter()
            .chain("x".encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        assert_eq!(decode(&utf16be), "x");
        assert_eq!(decode(b"// caf\xE9\n"), "// café\n");
    }

    /// WPAD walks each search domain up to two labels, never to `wpad.<tld>`.
    #[test]
    fn wpad_candidates_walk_up() {
        let search = vec![
            "eng.site.corp.example".to_owned(),
            "corp.example.".to_owned(),
            "local".to_owned(),
        ];
        assert_eq!(
            wpad_candidates(&search),
            [
                "wpad.eng.site.corp.example",
                "wpad.site.corp.example",
                "wpad.corp.example",
            ]
        );
        assert!(wpad_candidates(&[]).is_empty());
    }

    /// CONNECTs are asked about as `https://host/` (port 443) or `https://host:port/`, plain
    /// requests as `http://host[:port]/`, IPv6 literals bracketed.
    #[test]
    fn urls_the_script_sees() {
        let t = |h: &str, p| Target::new(h, p).unwrap();
        assert_eq!(
            Pac::url_for(&t("a.example", 443), true),
            ("https://a.example/".into(), "a.example".into())
        );
        assert_eq!(
            Pac::url_for(&t("a.example", 8443), true).0,
            "https://a.example:8443/"
        );
        assert_eq!(
            Pac::url_for(&t("a.example", 80), false).0,
            "http://a.example/"
        );
        assert_eq!(
            Pac::url_for(&t("::1", 8080), false),
            ("http://[::1]:8080/".into(), "::1".into())
        );
    }
}
