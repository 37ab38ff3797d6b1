//! The JavaScript side of proxy auto-config: a few worker threads, each with its own QuickJS
//! runtime holding the script and the helpers (`helpers.js`), answering `FindProxyForURL`
//! calls sent over a channel. Off the async runtime, so a slow script never stalls other
//! requests; each call has a deadline (QuickJS's interrupt handler stops a script that loops)
//! and each runtime a memory limit (an allocation past it throws). DNS helpers call viaduct's
//! resolver, bounded by the call's deadline.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rquickjs::{Context, Ctx, Function, Runtime};

use crate::upstream::Resolve;

const HELPERS: &str = include_str!("helpers.js");

/// Heap per runtime, at most: a script that allocates past it gets an exception.
pub const MEMORY_LIMIT: usize = 32 << 20;

/// What the helpers need from outside the script.
#[derive(Clone)]
pub struct Natives {
    pub resolver: Arc<dyn Resolve>,
    /// The runtime the resolver runs on (the workers block on it).
    pub handle: tokio::runtime::Handle,
    /// Milliseconds since the epoch (tests inject a fixed clock).
    pub clock: Arc<dyn Fn() -> f64 + Send + Sync>,
    /// This host's addresses, for `myIpAddress` (first IPv4) and `myIpAddressEx`.
    pub my_addresses: Vec<IpAddr>,
}

impl Natives {
    /// The system clock and the host's interface addresses.
    pub fn system(resolver: Arc<dyn Resolve>, handle: tokio::runtime::Handle) -> Self {
        Self {
            resolver,
            handle,
            clock: Arc::new(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_millis() as f64)
            }),
            my_addresses: interface_addresses(),
        }
    }
}

/// Non-loopback interface addresses, IPv4 first.
fn interface_addresses() -> Vec<IpAddr> {
    #[cfg(target_os = "linux")]
    {
        let mut out: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .map(|ifs| {
                ifs.filter_map(|i| {
                    let a = i.address?;
                    a.as_sockaddr_in()
                        .map(|s| IpAddr::V4(s.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
                })
                .filter(|ip| !ip.is_loopback())
                .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|ip| !ip.is_ipv4());
        out
    }
    #[cfg(not(target_os = "linux"))]
    {
        Vec::new()
    }
}

struct Job {
    url: String,
    host: String,
    reply: tokio::sync::oneshot::Sender<Result<String, String>>,
}

/// A loaded script on its worker threads.
pub struct Engine {
    jobs: Mutex<mpsc::Sender<Job>>,
    timeout: Duration,
}

impl Engine {
    /// Loads `script` into `workers` runtimes. An error when it does not parse, throws while
    /// loading, or defines no `FindProxyForURL` (nor `FindProxyForURLEx`).
    pub fn new(
        script: &str,
        natives: Natives,
        workers: usize,
        timeout: Duration,
    ) -> Result<Self, String> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let script: Arc<str> = script.into();
        for i in 0..workers.max(1) {
            let (ready_tx, ready_rx) = mpsc::sync_channel(1);
            let (script, natives, rx) = (Arc::clone(&script), natives.clone(), Arc::clone(&rx));
            std::thread::Builder::new()
                .name(format!("viaduct-pac-{i}"))
                .spawn(move || worker(&script, natives, &rx, &ready_tx, timeout))
                .map_err(|e| format!("cannot start a PAC worker: {e}"))?;
            ready_rx
                .recv()
                .map_err(|_| "the PAC worker died while loading the script".to_owned())??;
        }
        Ok(Self {
            jobs: Mutex::new(tx),
            timeout,
        })
    }

    /// `FindProxyForURL(url, host)` (or `FindProxyForURLEx`), within the deadline.
    pub async fn find_proxy(&self, url: &str, host: &str) -> Result<String, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            url: url.to_owned(),
            host: host.to_owned(),
            reply,
        };
        let sent = self
            .jobs
            .lock()
            .map(|tx| tx.send(job).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err("the PAC engine is gone".into());
        }
        // The worker's own deadline stops the script (and bounds its DNS calls); this one is a
        // safety net for a worker that cannot answer at all, generous enough that a call
        // queued behind busy workers is not cut off by it.
        match tokio::time::timeout(self.timeout * 10, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the PAC engine dropped the call".into()),
            Err(_) => Err(format!(
                "did not return within {} ms",
                self.timeout.as_millis()
            )),
        }
    }
}

fn worker(
    script: &str,
    natives: Natives,
    rx: &Mutex<mpsc::Receiver<Job>>,
    ready: &mpsc::SyncSender<Result<(), String>>,
    timeout: Duration,
) {
    let base = Instant::now();
    let deadline = Arc::new(AtomicU64::new(u64::MAX));
    let elapsed = move || base.elapsed().as_nanos() as u64;
    let loaded = (|| -> Result<(Runtime, Context), String> {
        let rt = Runtime::new().map_err(|e| e.to_string())?;
        rt.set_memory_limit(MEMORY_LIMIT);
        rt.set_max_stack_size(512 << 10);
        let d = Arc::clone(&deadline);
        rt.set_interrupt_handler(Some(Box::new(move || {
            elapsed() > d.load(Ordering::Relaxed)
        })));
        let ctx = Context::full(&rt).map_err(|e| e.to_string())?;
        // Loading may run top-level code: it gets ten calls' worth of time.
        deadline.store(
            elapsed() + (timeout * 10).as_nanos() as u64,
            Ordering::Relaxed,
        );
        let r = ctx.with(|ctx| -> Result<(), String> {
            bind(&ctx, &natives, &deadline, base).map_err(|e| e.to_string())?;
            ctx.eval::<(), _>(HELPERS)
                .map_err(|e| format!("PAC helpers: {}", thrown(&ctx, e)))?;
            ctx.eval::<(), _>(script.as_bytes().to_vec())
                .map_err(|e| format!("the PAC script does not load: {}", thrown(&ctx, e)))?;
            let g = ctx.globals();
            let has = |name: &str| g.get::<_, Function>(name).is_ok();
            if !has("FindProxyForURL") && !has("FindProxyForURLEx") {
                return Err("the PAC script defines no FindProxyForURL function".into());
            }
            Ok(())
        });
        deadline.store(u64::MAX, Ordering::Relaxed);
        r.map(|()| (rt, ctx))
    })();
    let (_rt, ctx) = match loaded {
        Ok(v) => {
            let _ = ready.send(Ok(()));
            v
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    loop {
        let job = match rx.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // the engine was dropped
            },
            Err(_) => return,
        };
        deadline.store(elapsed() + timeout.as_nanos() as u64, Ordering::Relaxed);
        let result = ctx.with(|ctx| {
            let g = ctx.globals();
            let f = g
                .get::<_, Function>("FindProxyForURLEx")
                .or_else(|_| g.get::<_, Function>("FindProxyForURL"))
                .map_err(|e| e.to_string())?;
            f.call::<_, rquickjs::Coerced<String>>((job.url.as_str(), job.host.as_str()))
                .map(|s| s.0)
                .map_err(|e| {
                    if elapsed() > deadline.load(Ordering::Relaxed) {
                        format!("did not return within {} ms", timeout.as_millis())
                    } else {
                        format!("threw {}", thrown(&ctx, e))
                    }
                })
        });
        deadline.store(u64::MAX, Ordering::Relaxed);
        // Garbage from this call does not pile up toward the memory limit.
        _rt.run_gc();
        let _ = job.reply.send(result);
    }
}

/// What a script threw, in words.
fn thrown(ctx: &Ctx<'_>, e: rquickjs::Error) -> String {
    if !matches!(e, rquickjs::Error::Exception) {
        return e.to_string();
    }
    let v = ctx.catch();
    if let Some(ex) = v.as_exception() {
        return ex.message().unwrap_or_else(|| "an exception".into());
    }
    v.get::<rquickjs::Coerced<String>>()
        .map_or_else(|_| "an exception".into(), |s| s.0)
}

/// The natives the helpers call.
fn bind(
    ctx: &Ctx<'_>,
    natives: &Natives,
    deadline: &Arc<AtomicU64>,
    base: Instant,
) -> rquickjs::Result<()> {
    let g = ctx.globals();
    let lookup = {
        let n = natives.clone();
        let deadline = Arc::clone(deadline);
        move |host: &str| -> Vec<IpAddr> {
            if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
                return vec![ip];
            }
            let now = base.elapsed().as_nanos() as u64;
            let left = Duration::from_nanos(deadline.load(Ordering::Relaxed).saturating_sub(now))
                .min(Duration::from_secs(5));
            let resolver = Arc::clone(&n.resolver);
            let name = host.to_owned();
            n.handle
                .block_on(
                    async move { tokio::time::timeout(left, resolver.resolve(&name, 0)).await },
                )
                .ok()
                .and_then(Result::ok)
                .map(|addrs| addrs.into_iter().map(|a| a.ip()).collect())
                .unwrap_or_default()
        }
    };
    let l = lookup.clone();
    g.set(
        "__dnsResolve",
        Function::new(ctx.clone(), move |host: String| -> String {
            l(&host)
                .into_iter()
                .find(IpAddr::is_ipv4)
                .map_or_else(String::new, |ip| ip.to_string())
        })?,
    )?;
    let l = lookup.clone();
    g.set(
        "dnsResolveEx",
        Function::new(ctx.clone(), move |host: String| -> String {
            l(&host)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(";")
        })?,
    )?;
    let l = lookup;
    g.set(
        "isInNetEx",
        Function::new(ctx.clone(), move |host: String, prefix: String| -> bool {
            let Ok(net) = prefix.parse::<ipnet::IpNet>() else {
                return false;
            };
            l(&host).iter().any(|ip| net.contains(ip))
        })?,
    )?;
    let mine = natives.my_addresses.clone();
    g.set(
        "myIpAddress",
        Function::new(ctx.clone(), move || -> String {
            mine.iter()
                .find(|ip| ip.is_ipv4())
                .map_or_else(|| "127.0.0.1".to_owned(), ToString::to_string)
        })?,
    )?;
    let mine = natives.my_addresses.clone();
    g.set(
        "myIpAddressEx",
        Function::new(ctx.clone(), move || -> String {
            mine.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(";")
        })?,
    )?;
    let clock = Arc::clone(&natives.clock);
    g.set(
        "__viaduct_now",
        Function::new(ctx.clone(), move || -> f64 { clock() })?,
    )?;
    ctx.eval::<(), _>(
        "function dnsResolve(h) { var r = __dnsResolve(String(h)); return r === \"\" ? null : r; }",
    )?;
    Ok(())
}
