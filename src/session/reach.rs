//! How to reach a target: the one seam CONNECT tunnels and plain forwarding share.
//!
//! A routing [`Action`] becomes connection attempts: direct, through one upstream or chain, or
//! through a pool member with failover (bounded attempts within the connect timeout, health
//! fed back). What is opened along the route is up to the caller's `open`: a tunnel to the
//! target, or a reusable HTTP connection for forwarding.

use std::pin::Pin;
use std::sync::LazyLock;
use std::time::Duration;

use super::SessionError;
use crate::pool::{self, MemberGuard};
use crate::routing::Action;
use crate::upstream::{ConnectError, Route};

static DIRECT: LazyLock<Route> = LazyLock::new(Route::direct);

/// What was opened, and the pool member it counts against (least-connections) while alive.
pub struct Reached<T> {
    pub value: T,
    pub member: Option<MemberGuard>,
}

/// One attempt at opening something along a route. Owned and boxed: the attempt may be
/// retried on another route, and the future must be `Send` for the connection task.
pub type Opening<T> = Pin<Box<dyn Future<Output = Result<T, ConnectError>> + Send>>;

/// The seam between deciding and dialing: opens something (a tunnel, a kept-alive HTTP
/// connection, a mock in tests) along a route within a time budget. Any
/// `FnMut(&Route, Duration) -> Opening<T>` is one.
pub trait Connector<T>: Send {
    fn open(&mut self, route: &Route, budget: Duration) -> Opening<T>;
}

impl<T, F> Connector<T> for F
where
    F: FnMut(&Route, Duration) -> Opening<T> + Send,
{
    fn open(&mut self, route: &Route, budget: Duration) -> Opening<T> {
        self(route, budget)
    }
}

/// Opens along the route `action` names, within `budget` in all. `key` is the sticky-session
/// key. Through a pool, members are tried in the pool's order until one opens, the budget is
/// spent, or the classifier says another member cannot help; every outcome feeds the pool's
/// health.
///
/// # Errors
/// `Block` is [`SessionError::Blocked`]; a direct or single-upstream failure is
/// [`SessionError::Connect`]; a pool whose members all failed (or none is healthy) is
/// [`SessionError::Pool`].
pub async fn reach<T>(
    action: &Action,
    key: Option<&str>,
    budget: Duration,
    mut connector: impl Connector<T>,
) -> Result<Reached<T>, SessionError> {
    match action {
        Action::Block => Err(SessionError::Blocked("a block rule".into())),
        Action::Direct => Ok(Reached {
            value: connector.open(&DIRECT, budget).await?,
            member: None,
        }),
        Action::Upstream(up) => Ok(Reached {
            value: connector.open(&up.route, budget).await?,
            member: None,
        }),
        Action::Pool(p) => {
            let deadline = tokio::time::Instant::now() + budget;
            let (i, value) = pool::dial(p, key, deadline, |_, member, left| {
                connector.open(&member.route, left)
            })
            .await?;
            Ok(Reached {
                value,
                member: Some(p.hold(i)),
            })
        }
    }
}
