//! Bandwidth per authenticated user and per client address: one pair of token buckets (up,
//! down) per user and per address, shared by all of its tunnels and plain requests, and
//! forgotten once refilled (a full bucket is the same as a new one).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::rate::{Bucket, Throttle, Throttles};

/// `[limits] bandwidth_per_user` / `bandwidth_per_ip` / `[limits.user_bandwidth]`: bytes per
/// second, each direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BandwidthLimits {
    /// Every authenticated user's, unless `by_user` names the user.
    pub per_user: Option<u64>,
    pub per_ip: Option<u64>,
    /// Per user name: its own rate, or `None` for unlimited.
    pub by_user: HashMap<String, Option<u64>>,
}

/// How much a flow may send at once before its rate applies: a tenth of a second at the rate,
/// at least 64 KiB (a request or a TLS handshake goes through unpaced).
fn burst(rate: u64) -> f64 {
    (rate as f64 / 10.0).max(64.0 * 1024.0)
}

/// One key's buckets: up, down.
type Pair = Arc<(Arc<Bucket>, Arc<Bucket>)>;

/// The buckets by key. A key's buckets outlive its flows until they are full again: closing
/// and reopening a tunnel must not hand out a fresh burst. Full buckets are the same as none,
/// so those are what is forgotten when the table grows.
struct Registry<K> {
    live: Mutex<(HashMap<K, Pair>, usize)>,
}

impl<K: Hash + Eq + Clone> Registry<K> {
    fn new() -> Self {
        Self {
            live: Mutex::new((HashMap::new(), 1024)),
        }
    }

    /// Keys whose buckets are in use or not yet refilled.
    fn tracked(&self) -> usize {
        self.live.lock().map_or(0, |m| {
            m.0.values()
                .filter(|p| Arc::strong_count(&p.0) > 1 || !p.0.is_full() || !p.1.is_full())
                .count()
        })
    }

    /// The buckets of `key` at `rate` (shared with its other flows).
    fn get(&self, key: &K, rate: u64) -> (Arc<Bucket>, Arc<Bucket>) {
        let fresh = || -> Pair {
            Arc::new((
                Arc::new(Bucket::new(rate as f64, burst(rate))),
                Arc::new(Bucket::new(rate as f64, burst(rate))),
            ))
        };
        let Ok(mut live) = self.live.lock() else {
            let p = fresh();
            return (Arc::clone(&p.0), Arc::clone(&p.1));
        };
        let (map, prune_at) = &mut *live;
        if map.len() >= *prune_at {
            map.retain(|_, p| !(p.0.is_full() && p.1.is_full()));
            *prune_at = (map.len() * 2).max(1024);
        }
        let pair = map.entry(key.clone()).or_insert_with(fresh);
        (Arc::clone(&pair.0), Arc::clone(&pair.1))
    }
}

/// The buckets of every user and client address with open flows.
pub struct Bandwidth {
    limits: BandwidthLimits,
    users: Registry<String>,
    ips: Registry<IpAddr>,
}

impl Bandwidth {
    pub fn new(limits: BandwidthLimits) -> Self {
        Self {
            limits,
            users: Registry::new(),
            ips: Registry::new(),
        }
    }

    /// The throttles of one flow of `user` (when authenticated) from `ip`. Unlimited (and
    /// free) when no limit is configured.
    pub fn throttles(&self, user: Option<&str>, ip: IpAddr) -> Throttles {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        if let Some(user) = user {
            let rate = match self.limits.by_user.get(user) {
                Some(own) => *own,
                None => self.limits.per_user,
            };
            if let Some(rate) = rate {
                let (u, d) = self.users.get(&user.to_owned(), rate);
                up.push(u);
                down.push(d);
            }
        }
        if let Some(rate) = self.limits.per_ip {
            let (u, d) = self.ips.get(&crate::target::normalize(ip), rate);
            up.push(u);
            down.push(d);
        }
        Throttles {
            up: Throttle::new(up),
            down: Throttle::new(down),
        }
    }

    /// Keys with open flows (users, addresses).
    pub fn tracked(&self) -> (usize, usize) {
        (self.users.tracked(), self.ips.tracked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flows of one user share its buckets; another user and an unlimited proxy get none of
    /// them; a user's debt outlives its flows (no fresh burst by reconnecting).
    #[test]
    fn flows_of_one_key_share_buckets_and_their_debt_outlives_them() {
        let bw = Bandwidth::new(BandwidthLimits {
            per_user: Some(1_000_000),
            per_ip: None,
            by_user: HashMap::from([("carol".to_owned(), None)]),
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = bw.throttles(Some("alice"), ip);
        let b = bw.throttles(Some("alice"), ip);
        assert!(a.is_limited());
        assert!(
            !a.up.charge(900_000).is_zero(),
            "900 kB is past a 100 kB burst"
        );
        assert!(
            !b.up.charge(1).is_zero(),
            "alice's second flow shares the debt"
        );
        let bob = bw.throttles(Some("bob"), ip);
        assert!(bob.up.charge(1).is_zero());
        assert!(
            !bw.throttles(None, ip).is_limited(),
            "no user, no per-user limit"
        );
        assert!(
            !bw.throttles(Some("carol"), ip).is_limited(),
            "carol is unlimited"
        );
        assert_eq!(
            bw.tracked(),
            (2, 0),
            "alice in debt, bob's buckets held by his flow"
        );
        drop((a, b, bob));
        assert_eq!(bw.tracked().0, 1, "alice's debt outlives her flows");
        let again = bw.throttles(Some("alice"), ip);
        assert!(
            !again.up.charge(1).is_zero(),
            "a new flow inherits the debt, not a new burst"
        );
        let none = Bandwidth::new(BandwidthLimits::default());
        assert!(!none.throttles(Some("alice"), ip).is_limited());
    }
}
