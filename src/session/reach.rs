//! How to reach a target: the one seam CONNECT tunnels and plain forwarding share.
//!
//! A routing [`Action`] becomes connection attempts: direct, through one upstream or chain, or
//! through a pool member with failover (bounded attempts within the connect timeout, health
//! fed back). What is opened along the route is up to the caller's `open`: a tunnel to the
//! target, or a reusable HTTP connection for forwarding.

use std::pin::Pin;
use std::time::Duration;

use super::SessionError;
use crate::pool::{self, MemberGuard};
use crate::routing::Action;
use crate::upstream::{ConnectError, Route};

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
        Action::Direct(route) => Ok(Reached {
            value: connector.open(route, budget).await?,
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

#[cfg(test)]
mod tests {
    //! Pool selection, failover and health feedback through the [`Connector`] seam: no
    //! sockets, a scripted connector per member, tokio's paused clock for time.
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::pool::{Pool, PoolSettings, Strategy};
    use crate::routing::Action;

    /// What the scripted connector does for a member: wait, then succeed or fail.
    #[derive(Clone)]
    enum Script {
        Ok(Duration),
        Fail(Duration, fn() -> ConnectError),
    }

    fn refused() -> ConnectError {
        ConnectError::Refused {
            peer: "member".into(),
        }
    }

    fn target_unknown() -> ConnectError {
        ConnectError::Dns {
            host: "origin.test".into(),
            source: std::io::Error::other("nxdomain"),
            target: true,
        }
    }

    fn own_listener() -> ConnectError {
        ConnectError::OwnListener {
            peer: "target".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
        }
    }

    /// Every (member, budget) the connector was called with, in order.
    type Calls = Arc<Mutex<Vec<(usize, Duration)>>>;

    /// A pool of members named `m0..`, each an HTTP upstream on a TEST-NET address (never
    /// dialed), and a connector that follows `scripts` and records (member, budget) per call.
    fn setup(
        scripts: Vec<Script>,
    ) -> (
        Action,
        Arc<Pool>,
        impl FnMut(&Route, Duration) -> Opening<usize> + Send,
        Calls,
    ) {
        let members: Vec<(String, Route)> = (0..scripts.len())
            .map(|i| {
                let route = Route::parse(&format!("http://192.0.2.{}:3128", i + 1)).unwrap();
                (format!("m{i}"), route)
            })
            .collect();
        let by_route: HashMap<Arc<str>, usize> = members
            .iter()
            .enumerate()
            .map(|(i, (_, r))| (Arc::clone(r.name()), i))
            .collect();
        let pool = Arc::new(Pool::new(
            "p".into(),
            members,
            PoolSettings {
                strategy: Strategy::Failover,
                ..PoolSettings::default()
            },
        ));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        let connector = move |route: &Route, budget: Duration| -> Opening<usize> {
            let i = by_route[route.name()];
            seen.lock().unwrap().push((i, budget));
            let script = scripts[i].clone();
            Box::pin(async move {
                match script {
                    Script::Ok(wait) => {
                        tokio::time::sleep(wait).await;
                        Ok(i)
                    }
                    Script::Fail(wait, err) => {
                        tokio::time::sleep(wait).await;
                        Err(err())
                    }
                }
            })
        };
        (Action::Pool(Arc::clone(&pool)), pool, connector, calls)
    }

    /// A member that refuses is passed over for the next; after three refusals it is ejected
    /// and no longer tried at all.
    #[tokio::test(start_paused = true)]
    async fn fails_over_and_ejects_the_failing_member() {
        let (action, pool, mut connector, calls) = setup(vec![
            Script::Fail(Duration::ZERO, refused),
            Script::Ok(Duration::ZERO),
        ]);
        for _ in 0..3 {
            let r = reach(&action, None, Duration::from_secs(10), &mut connector)
                .await
                .unwrap();
            assert_eq!(r.value, 1);
        }
        assert!(!pool.is_up(0), "ejected after 3 consecutive failures");
        calls.lock().unwrap().clear();
        reach(&action, None, Duration::from_secs(10), &mut connector)
            .await
            .unwrap();
        assert_eq!(
            calls.lock().unwrap().as_slice(),
            &[(1, Duration::from_secs(10))]
        );
    }

    /// The budget is shared: the next member gets what the slow first one left.
    #[tokio::test(start_paused = true)]
    async fn members_share_one_budget() {
        let (action, _pool, mut connector, calls) = setup(vec![
            Script::Fail(Duration::from_secs(6), refused),
            Script::Ok(Duration::from_secs(1)),
        ]);
        let started = tokio::time::Instant::now();
        let r = reach(&action, None, Duration::from_secs(10), &mut connector)
            .await
            .unwrap();
        assert_eq!(r.value, 1);
        assert_eq!(
            calls.lock().unwrap().as_slice(),
            &[(0, Duration::from_secs(10)), (1, Duration::from_secs(4))]
        );
        assert_eq!(started.elapsed(), Duration::from_secs(7));
        drop(r);
    }

    /// The target's own faults move on without ejecting anyone; a loop is never retried.
    #[tokio::test(start_paused = true)]
    async fn target_faults_do_not_eject_and_loops_stop() {
        let (action, pool, mut connector, _calls) = setup(vec![
            Script::Fail(Duration::ZERO, target_unknown),
            Script::Fail(Duration::ZERO, target_unknown),
        ]);
        for _ in 0..5 {
            let err = reach(&action, None, Duration::from_secs(10), &mut connector)
                .await
                .err()
                .unwrap();
            assert!(matches!(err, SessionError::Pool(_)));
        }
        assert!(pool.is_up(0) && pool.is_up(1));

        let (action, _pool, mut connector, calls) = setup(vec![
            Script::Fail(Duration::ZERO, own_listener),
            Script::Ok(Duration::ZERO),
        ]);
        let err = reach(&action, None, Duration::from_secs(10), &mut connector)
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.failure(),
            crate::failure::Failure::Connect(crate::upstream::ConnectErrorKind::Loop)
        );
        assert_eq!(calls.lock().unwrap().len(), 1, "no other member tried");
    }
}
