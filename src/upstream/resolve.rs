//! Name resolution behind a trait, so that tests can stand in for the real resolver.
//!
//! The resolver viaduct runs with is [`DnsResolver`]: hickory-resolver configured from
//! `/etc/resolv.conf` and `/etc/hosts`, with its cache, which honours each answer's TTL
//! (positive and negative, the latter from the zone's SOA) and is bounded in entries. One
//! instance serves both routing (`resolve = true` rules) and dialing, so a name looked up to
//! pick a rule is not asked for again to connect. [`SystemResolver`] (`getaddrinfo`, no cache)
//! remains for hosts without a `resolv.conf`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

/// A boxed resolution future.
pub type Resolving = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Resolves a host name to socket addresses.
pub trait Resolve: Send + Sync + 'static {
    /// Looks up `host` and pairs every address with `port`. An empty list counts as a failure.
    fn resolve(&self, host: &str, port: u16) -> Resolving;
}

/// The operating system's resolver (`getaddrinfo` on a blocking thread, via tokio). No cache.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// Names cached at most (A and AAAA answers of one name count separately); the least recently
/// used goes first.
pub const CACHE_ENTRIES: usize = 4096;

/// A failed lookup is remembered at most this long, whatever the zone's SOA says, so that a
/// name just created is reachable soon.
const NEGATIVE_MAX_TTL: Duration = Duration::from_secs(60);

/// DNS with a TTL-honouring cache (hickory-resolver), both address families asked for, so
/// that dialing can race them (Happy Eyeballs).
#[derive(Clone)]
pub struct DnsResolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsResolver").finish_non_exhaustive()
    }
}

fn options(mut opts: ResolverOpts, hosts: bool) -> ResolverOpts {
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.cache_size = CACHE_ENTRIES;
    opts.negative_max_ttl = Some(NEGATIVE_MAX_TTL);
    opts.use_hosts_file = if hosts {
        ResolveHosts::Always
    } else {
        ResolveHosts::Never
    };
    opts
}

impl DnsResolver {
    /// The system's name servers and search domains (`/etc/resolv.conf`) and `/etc/hosts`.
    ///
    /// # Errors
    /// When the system configuration cannot be read.
    pub fn from_system() -> io::Result<Self> {
        let mut builder = TokioResolver::builder_tokio().map_err(io::Error::other)?;
        let opts = options(builder.options_mut().clone(), true);
        *builder.options_mut() = opts;
        Ok(Self {
            inner: builder.build(),
        })
    }

    /// The system's resolver when its configuration can be read, else `getaddrinfo` (said
    /// once in the log).
    pub fn system_or_fallback() -> std::sync::Arc<dyn Resolve> {
        match Self::from_system() {
            Ok(r) => std::sync::Arc::new(r),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the DNS configuration; resolving with getaddrinfo, without a cache");
                std::sync::Arc::new(SystemResolver)
            }
        }
    }

    /// Asks only `servers` (UDP, then TCP for truncated answers), without `/etc/hosts`: for
    /// tests with a local DNS server, and for operators who name their resolvers.
    pub fn with_servers(servers: &[SocketAddr]) -> Self {
        let mut config = ResolverConfig::new();
        for s in servers {
            config.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(*s, Protocol::Tcp));
        }
        let mut builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        let mut opts = options(ResolverOpts::default(), false);
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        *builder.options_mut() = opts;
        Self {
            inner: builder.build(),
        }
    }
}

impl Resolve for DnsResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let (inner, host) = (self.inner.clone(), host.to_owned());
        Box::pin(async move {
            match inner.lookup_ip(host.as_str()).await {
                Ok(found) => Ok(found.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
                Err(e) if e.is_nx_domain() => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such name (NXDOMAIN)",
                )),
                Err(e) if e.is_no_records_found() => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the name has no addresses",
                )),
                Err(e) => Err(io::Error::other(e.to_string())),
            }
        })
    }
}
