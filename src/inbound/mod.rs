//! Inbound: clients to us. Accepting connections, serving HTTP/1 on them, and handing each
//! request to CONNECT tunnelling or plain forwarding.
//!
//! - [`server`]: accept loop, connection limits, per-connection tasks, graceful shutdown.
//! - [`client_io`]: the client socket under hyper, able to answer a header-read timeout.
//! - [`service`]: per-request dispatch and the access log.
//! - [`connect`]: CONNECT tunnels (dial first, answer 200 only when the target is reachable).
//! - [`forward`]: absolute-form requests, including `Upgrade` (WebSocket).
//! - [`headers`]: hop-by-hop removal, `Via`, loop detection.
//! - [`respond`]: the one place errors become statuses and `Proxy-Status`.

pub mod client_io;
pub mod connect;
pub mod forward;
pub mod headers;
pub mod respond;
pub mod server;
pub mod service;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

/// The body type of every response we send to clients.
pub type Body = BoxBody<Bytes, crate::relay::body::BoxError>;
