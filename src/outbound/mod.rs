//! Outbound: how viaduct leaves. The one seam that CONNECT tunnels and plain forwarding share.
//!
//! A [`Route`] says how to reach a target: directly, or through a chain of upstream [`Hop`]s.
//! The [`Dialer`] walks the route: TCP to the first hop (or the target), then each hop's
//! handshake toward the next, all under one connect timeout. It hands back a [`BoxIo`] whose
//! first bytes are whatever the last handshake read past its answer (see [`io::Prefixed`]).
//!
//! - [`Dialer::tunnel`] ends at the target: used by CONNECT and by upgraded requests.
//! - [`Dialer::forward`] ends where plain HTTP requests should be written: at the target
//!   (origin-form), or at a last HTTP hop that takes absolute-form requests.

pub mod direct;
pub mod error;
pub mod forward;
pub mod hop;
pub mod http_connect;
pub mod io;
pub mod resolve;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

pub use self::error::{ConnectError, ConnectErrorKind};
pub use self::hop::{Hop, HopKind};
pub use self::io::BoxIo;
pub use self::resolve::{Resolve, SystemResolver};
use crate::target::Target;

/// How to reach targets: an ordered list of upstream hops; empty means direct.
#[derive(Debug, Clone, Default)]
pub struct Route {
    hops: Vec<Hop>,
}

impl Route {
    /// Goes straight to the target.
    pub fn direct() -> Self {
        Self::default()
    }

    /// Goes through `hops`, first to last.
    pub fn via(hops: Vec<Hop>) -> Self {
        Self { hops }
    }

    /// The last hop, when plain requests should be sent to it in absolute-form.
    pub fn absolute_form_hop(&self) -> Option<&Hop> {
        match self.hops.as_slice() {
            [hop] if hop.kind == HopKind::Http => Some(hop),
            _ => None,
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hops.is_empty() {
            return f.write_str("direct");
        }
        for (i, hop) in self.hops.iter().enumerate() {
            if i > 0 {
                f.write_str(" -> ")?;
            }
            write!(f, "{hop}")?;
        }
        Ok(())
    }
}

/// Opens connections along routes. Cheap to clone.
#[derive(Clone)]
pub struct Dialer {
    resolver: Arc<dyn Resolve>,
    connect_timeout: Duration,
    via: HeaderValue,
}

impl Dialer {
    /// `via` is the `Via` value sent on CONNECTs to upstreams (`1.1 viaduct`).
    /// `connect_timeout` bounds a whole dial: resolution, TCP and every handshake.
    pub fn new(resolver: Arc<dyn Resolve>, connect_timeout: Duration, via: HeaderValue) -> Self {
        Self {
            resolver,
            connect_timeout,
            via,
        }
    }

    /// A stream to `target` itself, through every hop of `route`.
    pub async fn tunnel(&self, route: &Route, target: &Target) -> Result<BoxIo, ConnectError> {
        self.dial(&route.hops, target).await
    }

    /// A stream to write plain HTTP requests for `target` on. `true` when it ends at an HTTP
    /// proxy that expects absolute-form requests, `false` when it ends at the origin.
    pub async fn forward(
        &self,
        route: &Route,
        target: &Target,
    ) -> Result<(BoxIo, bool), ConnectError> {
        match route.absolute_form_hop() {
            Some(hop) => Ok((self.dial(&[], &hop.addr).await?, true)),
            None => Ok((self.dial(&route.hops, target).await?, false)),
        }
    }

    async fn dial(&self, hops: &[Hop], target: &Target) -> Result<BoxIo, ConnectError> {
        // The peer being worked on when the clock ran out, for the timeout's message.
        let mut at = peer_name(hops.first(), target);
        let walk = async {
            let first = hops.first().map_or(target, |h| &h.addr);
            let mut stream: BoxIo =
                Box::new(direct::connect_tcp(&*self.resolver, first, &at).await?);
            for (i, hop) in hops.iter().enumerate() {
                let next = hops.get(i + 1).map_or(target, |h| &h.addr);
                let peer = hop.to_string();
                tracing::debug!(hop = %peer, next = %next, "hop handshake");
                at = peer.clone();
                let leftover = match hop.kind {
                    HopKind::Http => {
                        http_connect::handshake(
                            &mut stream,
                            &peer,
                            next,
                            hop.auth.as_ref(),
                            &self.via,
                        )
                        .await?
                    }
                };
                stream = io::with_leftover(leftover, stream);
            }
            Ok(stream)
        };
        let res = tokio::time::timeout(self.connect_timeout, walk).await;
        match res {
            Ok(res) => res,
            Err(_) => Err(ConnectError::Timeout {
                peer: at,
                after: self.connect_timeout,
            }),
        }
    }
}

fn peer_name(hop: Option<&Hop>, target: &Target) -> String {
    match hop {
        Some(hop) => hop.to_string(),
        None => format!("target {target}"),
    }
}
