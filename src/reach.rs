//! How to reach a target: the one seam CONNECT tunnels and plain forwarding share.
//!
//! A routing [`Action`] becomes connection attempts: direct, through one upstream or chain, or
//! through a pool member with failover (bounded attempts within the connect timeout, health
//! fed back). What is opened along the route is up to the caller's `open`: a tunnel to the
//! target, or a reusable HTTP connection for forwarding.

use std::pin::Pin;
use std::sync::LazyLock;

use crate::inbound::respond::ProxyError;
use crate::outbound::{ConnectError, Dialer, Route};
use crate::pool::{self, MemberGuard};
use crate::route::Action;
use crate::target::Target;

static DIRECT: LazyLock<Route> = LazyLock::new(Route::direct);

/// What was opened, and the pool member it counts against (least-connections) while alive.
pub struct Reached<T> {
    pub value: T,
    pub member: Option<MemberGuard>,
}

/// One attempt at opening something along a route. Owned and boxed: the attempt may be
/// retried on another route, and the future must be `Send` for the connection task.
pub type Opening<T> = Pin<Box<dyn Future<Output = Result<T, ConnectError>> + Send>>;

/// Opens `open(route, dialer)` along the route `action` names. `key` is the sticky-session key.
///
/// # Errors
/// `Block` is [`ProxyError::Blocked`]; a direct or single-upstream failure is
/// [`ProxyError::Connect`]; a pool whose members all failed (or none is healthy) is
/// [`ProxyError::Pool`].
pub async fn reach<T>(
    action: &Action,
    key: Option<&str>,
    target: &Target,
    dialer: &Dialer,
    mut open: impl FnMut(Route, Dialer) -> Opening<T>,
) -> Result<Reached<T>, ProxyError> {
    match action {
        Action::Block => Err(ProxyError::Blocked("a block rule".into())),
        Action::Direct => Ok(Reached {
            value: open(DIRECT.clone(), dialer.clone()).await?,
            member: None,
        }),
        Action::Upstream(up) => Ok(Reached {
            value: open(up.route.clone(), dialer.clone()).await?,
            member: None,
        }),
        Action::Pool(p) => {
            let deadline = tokio::time::Instant::now() + dialer.connect_timeout();
            let (i, value) = pool::dial(p, key, target, deadline, |_, member, left| {
                open(member.route.clone(), dialer.with_timeout(left))
            })
            .await?;
            Ok(Reached {
                value,
                member: Some(p.hold(i)),
            })
        }
    }
}
