//! viaduct: a forward HTTP proxy. Clients send it CONNECT tunnels and plain `http://` requests;
//! it carries them to the target directly or through upstream proxies, adding the upstreams'
//! credentials, and answers every failure with a status and an RFC 9209 `Proxy-Status`.
//!
//! # Layout
//! Requests flow one way, and the modules follow them:
//!
//! ```text
//! server (accept, admission) -> http | socks (listener protocols; one port sniffed)
//!     -> session (who, decide, reach, tunnel, accounting)
//!         -> routing (pure)  -> pool + upstream (dialing, kept-alive connections)  -> relay
//! ```
//!
//! - [`server`]: accept loops, connection caps ([`server::admission`]), the descriptor budget.
//! - [`http`]: HTTP/1 on a connection: CONNECT, forwarding, `Upgrade`, header rules, and the one
//!   place errors become HTTP answers ([`http::respond`]). The only module that knows hyper's
//!   server types.
//! - [`socks`]: SOCKS5 (RFC 1928/1929) and SOCKS4/4a CONNECT on the same session calls.
//! - [`session`]: protocol-neutral: the client, the routing decision, reaching the target
//!   through the [`session::Connector`] seam (pool failover included), tunnels and accounting.
//! - [`routing`]: bypass list, rules by destination and user, default. Pure, apart from an
//!   injected resolver for rules that ask for addresses.
//! - [`pool`]: upstream pools: strategies, sticky sessions, passive and active health.
//! - [`upstream`]: how we leave: a [`upstream::Route`] (direct or a chain of hops), the
//!   [`upstream::Dialer`] that walks it (one file per hop protocol), kept-alive HTTP connections
//!   ([`upstream::keepalive`]).
//! - [`relay`]: the tunnel data path (any stream plus the bytes already read; zero-copy
//!   `splice(2)` between plain TCP sockets on Linux) and forwarded bodies ([`relay::body`]).
//! - [`auth`]: who the client is: the users file, verified-credentials cache, failure budget,
//!   per-user caps and revocation at reload. Used by the session core for every listener.
//! - [`access`]: pure policy: which clients may connect, which destinations they may reach
//!   (safe defaults off loopback). The dialer applies it to the addresses it dials.
//! - [`admin`]: the operators' listener (metrics, health, status page, PAC file); reads the
//!   session core and admission, at the listener level.
//! - [`metrics`]: the counters and histograms the data path records (labels from config only).
//! - [`probe`]: `viaduct probe`, the route walked step by step.
//! - [`failure`]: the one classifier: status, `Proxy-Status` token, retry, blame, SOCKS reply.
//! - [`config`]: every setting defined once ([`config::settings`]), the file (located
//!   errors), the flags, and the runtime [`Config`] with its merge.
//! - [`cli`]: the command line's grammar and the `check`, `route`, `probe` subcommands.
//! - Leaves: [`target`] (destinations), [`stream`] (boxed streams), [`shutdown`], [`rate`]
//!   (token buckets for bandwidth and connection rates).
//! - [`proxy`]: wires the parts into a [`Proxy`] and serves listeners.
//!
//! # Running
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let proxy = viaduct::Proxy::new(viaduct::Config::default()).expect("valid config");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8083").await?;
//! viaduct::serve(listener, proxy, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

pub mod access;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod failure;
pub mod http;
mod lograte;
pub mod metrics;
pub mod pool;
pub mod probe;
pub mod proxy;
pub mod rate;
pub mod relay;
pub mod routing;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod socks;
pub mod stream;
pub mod target;
pub mod upstream;

pub use config::{Config, Limits, RunFlags, Settings};

/// Any error, boxed: what a body or a tunnel's setup may end with when its cause is another
/// library's (hyper, I/O) and nothing decides on its kind.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub use proxy::{BuildError, Proxy, serve, serve_all};
