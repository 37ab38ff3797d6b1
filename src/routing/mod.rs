//! Routing: which way a request leaves, decided per request from its target and user.
//!
//! A [`Router`] holds an optional bypass list (NO_PROXY syntax, always direct), ordered
//! [`Rule`]s (first match wins) and a default [`Action`]. Deciding is pure
//! ([`Router::decide_with`]); the only I/O is resolving the target's name, done by
//! [`Router::decide`] and only when a rule asks for it (`resolve = true` with CIDRs).

pub mod autoconfig;
pub mod matcher;
pub mod pac;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub use self::matcher::{DomainPattern, Matcher, parse_no_proxy};
use crate::pool::Pool;
use crate::target::{Host, Target};
use crate::upstream::{Resolve, Route};

/// A named upstream: one hop or a chain.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub route: Route,
}

/// What to do with a request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Connect to the target ourselves, along a route with no hops (which may say where
    /// connections leave from: `bind`).
    Direct(Route),
    /// Refuse with 403.
    Block,
    /// Through a named upstream (or chain).
    Upstream(Arc<Upstream>),
    /// Through a member of a pool, with failover.
    Pool(Arc<Pool>),
}

impl Action {
    /// Direct, leaving from the host's default address.
    pub fn direct() -> Self {
        Action::Direct(Route::direct())
    }

    /// Direct from the host's default address: what a client could do without the proxy.
    pub fn is_plain_direct(&self) -> bool {
        matches!(self, Action::Direct(r) if r.bind().is_none())
    }

    /// The route's short name for metrics and logs: `direct`, `block`, or the upstream's or
    /// pool's configured name.
    pub fn label(&self) -> &str {
        match self {
            Action::Direct(_) => "direct",
            Action::Block => "block",
            Action::Upstream(u) => &u.name,
            Action::Pool(p) => &p.name,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Direct(r) => f.write_str(r.name()),
            Action::Block => f.write_str("block"),
            Action::Upstream(u) => write!(f, "upstream {} ({})", u.name, u.route),
            Action::Pool(p) => write!(f, "pool {}", p.describe()),
        }
    }
}

/// One `[[rules]]` entry.
#[derive(Debug)]
pub struct Rule {
    pub matcher: Matcher,
    /// Match CIDRs against the target name's resolved addresses too.
    pub resolve: bool,
    pub action: Action,
}

/// Why an action was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Bypass,
    /// The rule's position, from 1.
    Rule(usize),
    Default,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Bypass => f.write_str("bypass list"),
            Reason::Rule(n) => write!(f, "rule {n}"),
            Reason::Default => f.write_str("default"),
        }
    }
}

/// A routing decision.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    pub action: &'a Action,
    pub reason: Reason,
    /// The target name's addresses when they were resolved here (a rule asked for them), so
    /// that the access policy can check them too.
    pub resolved: Vec<IpAddr>,
}

/// Bypass list, rules in order, then the PAC script when one is configured, else the default.
#[derive(Debug)]
pub struct Router {
    pub bypass: Option<Matcher>,
    pub rules: Vec<Rule>,
    /// Decides what no bypass entry or rule matched (see [`autoconfig`]); the session core
    /// consults it where [`Router::decide`] answers [`Reason::Default`].
    pub pac: Option<Arc<autoconfig::PacHandle>>,
    pub default: Action,
}

impl Router {
    /// Everything direct.
    pub fn direct() -> Self {
        Self {
            bypass: None,
            rules: Vec::new(),
            pac: None,
            default: Action::direct(),
        }
    }

    /// Everything through `route` (direct when it has no hops).
    pub fn single(route: Route) -> Self {
        let default = if route.hops().is_empty() {
            Action::direct()
        } else {
            Action::Upstream(Arc::new(Upstream {
                name: "upstream".into(),
                route,
            }))
        };
        Self {
            bypass: None,
            rules: Vec::new(),
            pac: None,
            default,
        }
    }

    /// Decides for `target`; `resolved` are the target name's addresses, used only by rules
    /// with `resolve = true`.
    pub fn decide_with(
        &self,
        target: &Target,
        user: Option<&str>,
        resolved: &[IpAddr],
    ) -> Decision<'_> {
        static DIRECT: std::sync::LazyLock<Action> = std::sync::LazyLock::new(Action::direct);
        if self
            .bypass
            .as_ref()
            .is_some_and(|b| b.matches(target, None, &[]))
        {
            return Decision {
                action: &DIRECT,
                reason: Reason::Bypass,
                resolved: Vec::new(),
            };
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let addrs = if rule.resolve { resolved } else { &[] };
            if rule.matcher.matches(target, user, addrs) {
                return Decision {
                    action: &rule.action,
                    reason: Reason::Rule(i + 1),
                    resolved: Vec::new(),
                };
            }
        }
        Decision {
            action: &self.default,
            reason: Reason::Default,
            resolved: Vec::new(),
        }
    }

    /// Like [`Router::decide_with`], resolving the target's name when a `resolve` rule is
    /// reached whose answer depends on it (and only then: a name that an earlier rule sends to
    /// a `socks5h://` upstream is never looked up here). A name that does not resolve simply
    /// matches no CIDR.
    pub async fn decide(
        &self,
        target: &Target,
        user: Option<&str>,
        resolver: &dyn Resolve,
    ) -> Decision<'_> {
        // Addresses only add matches: the rules before the one that matches without them
        // decide the same with them. Resolve only if one of those could change its answer.
        let without = self.decide_with(target, user, &[]);
        let reached = match without.reason {
            Reason::Bypass => return without,
            Reason::Rule(n) => n - 1,
            Reason::Default => self.rules.len(),
        };
        let needs = self.rules[..reached]
            .iter()
            .any(|r| r.resolve && r.matcher.needs_addresses_for(target, user));
        let (true, Host::Name(name)) = (needs, &target.host) else {
            return without;
        };
        let resolved: Vec<IpAddr> = resolver
            .resolve(name, target.port)
            .await
            .map(|addrs| addrs.into_iter().map(|a| a.ip()).collect())
            .unwrap_or_default();
        let mut decision = self.decide_with(target, user, &resolved);
        decision.resolved = resolved;
        decision
    }

    /// Whether a rule selects by user name (such rules need authenticated users).
    pub fn matches_users(&self) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| !r.matcher.users.is_empty())
            .map(|i| i + 1)
    }

    /// Every pool the router can send to (for health checking).
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let mut pools: Vec<Arc<Pool>> = Vec::new();
        for action in self.rules.iter().map(|r| &r.action).chain([&self.default]) {
            if let Action::Pool(p) = action
                && !pools.iter().any(|q| Arc::ptr_eq(p, q))
            {
                pools.push(Arc::clone(p));
            }
        }
        pools
    }

    /// The identities ([`Route::id`]) of every route this router can use, direct included.
    pub fn route_ids(&self) -> std::collections::HashSet<u64> {
        let mut ids = std::collections::HashSet::from([Route::direct().id()]);
        for action in self.rules.iter().map(|r| &r.action).chain([&self.default]) {
            match action {
                Action::Upstream(u) => {
                    ids.insert(u.route.id());
                }
                Action::Pool(p) => ids.extend(p.members.iter().map(|m| m.route.id())),
                Action::Direct(r) => {
                    ids.insert(r.id());
                }
                Action::Block => {}
            }
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver that answers 127.0.0.1 for everything and counts its lookups.
    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl Resolve for Counting {
        fn resolve(&self, _host: &str, port: u16) -> crate::upstream::resolve::Resolving {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async move { Ok(vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))]) })
        }
    }

    /// Hardening 2, finding 7: a name is resolved here only when a `resolve` rule whose
    /// answer depends on its addresses is reached; one that an earlier rule sends upstream (a
    /// `socks5h://` proxy resolves it there) is never looked up.
    #[tokio::test]
    async fn names_are_resolved_only_when_a_resolve_rule_is_reached() {
        let corp = Action::Upstream(Arc::new(Upstream {
            name: "corp".into(),
            route: Route::direct(),
        }));
        let by_address = |ports: Vec<u16>| Rule {
            matcher: Matcher {
                cidrs: vec!["127.0.0.0/8".parse().unwrap()],
                ports,
                ..Default::default()
            },
            resolve: true,
            action: Action::Block,
        };
        let router = Router {
            bypass: parse_no_proxy("localhost").unwrap(),
            pac: None,
            rules: vec![
                rule(&["*.corp"], corp),
                by_address(vec![22]),
                by_address(Vec::new()),
            ],
            default: Action::direct(),
        };
        let lookups = Counting::default();
        let count = || lookups.0.load(std::sync::atomic::Ordering::Relaxed);
        let d = router.decide(&t("app.corp:443"), None, &lookups).await;
        assert_eq!((d.reason, count()), (Reason::Rule(1), 0));
        let d = router.decide(&t("localhost:443"), None, &lookups).await;
        assert_eq!((d.reason, count()), (Reason::Bypass, 0));
        // Reached: looked up once for both resolve rules.
        let d = router.decide(&t("db.example:22"), None, &lookups).await;
        assert_eq!((d.reason, count()), (Reason::Rule(2), 1));
        let d = router.decide(&t("web.example:443"), None, &lookups).await;
        assert_eq!((d.reason, count()), (Reason::Rule(3), 2));
        assert_eq!(d.resolved, vec![std::net::IpAddr::from([127, 0, 0, 1])]);
        // An address literal needs no lookup.
        let d = router.decide(&t("10.1.2.3:443"), None, &lookups).await;
        assert_eq!((d.reason, count()), (Reason::Default, 2));
    }

    fn t(s: &str) -> Target {
        let (h, p) = s.rsplit_once(':').unwrap();
        Target::new(h, p.parse().unwrap()).unwrap()
    }

    fn rule(domains: &[&str], action: Action) -> Rule {
        Rule {
            matcher: Matcher {
                domains: domains
                    .iter()
                    .map(|d| DomainPattern::parse(d).unwrap())
                    .collect(),
                ..Default::default()
            },
            resolve: false,
            action,
        }
    }

    #[test]
    fn first_matching_rule_wins_then_default() {
        let corp = Action::Upstream(Arc::new(Upstream {
            name: "corp".into(),
            route: Route::direct(),
        }));
        let router = Router {
            bypass: parse_no_proxy("localhost").unwrap(),
            pac: None,
            rules: vec![
                rule(&["*.ads.example"], Action::Block),
                rule(&["*.example"], Action::direct()),
            ],
            default: corp,
        };
        let d = router.decide_with(&t("x.ads.example:443"), None, &[]);
        assert!(matches!(d.action, Action::Block) && d.reason == Reason::Rule(1));
        let d = router.decide_with(&t("www.example:443"), None, &[]);
        assert!(matches!(d.action, Action::Direct(_)) && d.reason == Reason::Rule(2));
        let d = router.decide_with(&t("other.org:443"), None, &[]);
        assert!(matches!(d.action, Action::Upstream(_)) && d.reason == Reason::Default);
        assert_eq!(
            router.decide_with(&t("localhost:80"), None, &[]).reason,
            Reason::Bypass
        );
    }

    #[test]
    fn resolved_addresses_only_for_resolving_rules() {
        let m = Matcher {
            cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        let mut router = Router {
            bypass: None,
            pac: None,
            rules: vec![Rule {
                matcher: m,
                resolve: false,
                action: Action::Block,
            }],
            default: Action::direct(),
        };
        let ten = ["10.1.1.1".parse().unwrap()];
        assert_eq!(
            router.decide_with(&t("db.corp:5432"), None, &ten).reason,
            Reason::Default
        );
        router.rules[0].resolve = true;
        assert_eq!(
            router.decide_with(&t("db.corp:5432"), None, &ten).reason,
            Reason::Rule(1)
        );
    }
}
