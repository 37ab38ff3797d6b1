//! End-to-end tests over real loopback sockets: clients, viaduct, fake upstreams and origins,
//! all in-process on ports bound to `127.0.0.1:0`.

// Test harness code outside #[test] fns: panicking on a broken fixture is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod balancer;
mod bandwidth;
mod chain;
mod cli;
mod connect;
mod corporate;
mod egress;
mod forward;
mod hardening;
mod https_listener;
mod observe;
mod pac;
mod pools;
mod props;
mod robust;
mod shutdown;
mod smuggling;
mod socks;
mod support;
mod tls;
