//! viaduct: a forward HTTP proxy. Clients send it CONNECT tunnels and plain `http://` requests;
//! it carries them to the target directly or through upstream proxies, adding the upstreams'
//! credentials, and answers every failure with a status and an RFC 9209 `Proxy-Status`.
//!
//! # Layout
//! The folders follow the path of a request:
//!
//! - [`inbound`]: clients to us. Accept loop and shutdown ([`inbound::server`]), per-request
//!   dispatch ([`inbound::service`]), CONNECT ([`inbound::connect`]), plain forwarding
//!   ([`inbound::forward`]), header rules ([`inbound::headers`]), and the single mapping from
//!   errors to responses ([`inbound::respond`]).
//! - [`outbound`]: how we leave. A [`outbound::Route`] (direct, or a chain of hops) and the
//!   [`outbound::Dialer`] that walks it; this is the one seam that tunnels and forwarding share.
//!   One file per hop protocol ([`outbound::http_connect`]), plus TCP ([`outbound::direct`]),
//!   name resolution behind a trait ([`outbound::resolve`]) and kept-alive HTTP connections
//!   for forwarding ([`outbound::forward`]).
//! - [`route`]: the routing decision per request: bypass list, rules by destination and user,
//!   default. Pure, apart from resolving names for rules that ask for it.
//! - [`pool`]: upstream pools: selection strategies, sticky sessions, passive and active health.
//! - [`reach`]: the seam that turns a decision into a connection (direct, upstream, chain, pool
//!   with failover), shared by CONNECT and forwarding.
//! - [`config`]: the TOML file: parsing, validation with file/line/field errors, building.
//! - [`relay`]: the tunnel data path, with backpressure, half-close and an idle timeout;
//!   zero-copy `splice(2)` between plain TCP sockets on Linux.
//! - [`target`]: parsing `host:port` destinations.
//! - [`proxy`]: [`Config`] and the shared state built from it.
//!
//! # Running
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let proxy = viaduct::Proxy::new(viaduct::Config::default()).expect("valid config");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8083").await?;
//! viaduct::serve(listener, proxy, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

pub mod config;
pub mod inbound;
pub mod outbound;
pub mod pool;
pub mod proxy;
pub mod reach;
pub mod relay;
pub mod route;
pub mod target;

pub use inbound::server::{serve, serve_all};
pub use proxy::{BuildError, Config, Limits, Proxy};
