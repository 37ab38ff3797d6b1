//! Bandwidth per authenticated user and per client address: one pair of token buckets (up,
//! down) per user and per address, shared by all of its tunnels and plain requests while any
//! is open, and forgotten when the last one ends.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};

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

/// How much a flow may send at once before its rate applies: a quarter second at the rate,
/// at least 64 KiB (a request or a TLS handshake goes through unpaced).
fn burst(rate: u64) -> f64 {
    (rate as f64 / 4.0).max(64.0 * 1024.0)
}

/// One key's buckets (up, down), as the registry holds them: not keeping them alive.
type Held = (Weak<Bucket>, Weak<Bucket>);

/// The buckets in use, by key; an entry lives while a flow holds its buckets.
struct Registry<K> {
    live: Mutex<HashMap<K, Held>>,
}

impl<K: Hash + Eq + Clone> Registry<K> {
    fn new() -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
        }
    }

    fn tracked(&self) -> usize {
        self.live.lock().map_or(0, |m| {
            m.values().filter(|(u, _)| u.strong_count() > 0).count()
        })
    }

    /// The buckets of `key` at `rate` (shared with its other open flows).
    fn get(&self, key: &K, rate: u64) -> (Arc<Bucket>, Arc<Bucket>) {
        let fresh = || {
            (
                Arc::new(Bucket::new(rate as f64, burst(rate))),
                Arc::new(Bucket::new(rate as f64, burst(rate))),
            )
        };
        let Ok(mut live) = self.live.lock() else {
            return fresh();
        };
        if let Some((up, down)) = live.get(key)
            && let (Some(up), Some(down)) = (up.upgrade(), down.upgrade())
        {
            return (up, down);
        }
        if live.len() >= 1024 && live.len().is_power_of_two() {
            // Amortised: forget keys whose flows all ended.
            live.retain(|_, (up, _)| up.strong_count() > 0);
        }
        let (up, down) = fresh();
        live.insert(key.clone(), (Arc::downgrade(&up), Arc::downgrade(&down)));
        (up, down)
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
    /// them; buckets go when the last flow ends.
    #[test]
    fn flows_of_one_key_share_buckets_until_the_last_ends() {
        let bw = Bandwidth::new(BandwidthLimits {
            per_user: Some(1_000_000),
            per_ip: None,
            by_user: HashMap::from([("carol".to_owned(), None)]),
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = bw.throttles(Some("alice"), ip);
        let b = bw.throttles(Some("alice"), ip);
        assert!(a.is_limited());
        assert!(!a.up.charge(900_000).is_zero() || a.up.charge(0).is_zero());
        assert!(
            !b.up.charge(1).is_zero(),
            "alice's second flow shares the debt"
        );
        assert!(bw.throttles(Some("bob"), ip).up.charge(1).is_zero());
        assert!(
            !bw.throttles(None, ip).is_limited(),
            "no user, no per-user limit"
        );
        assert!(
            !bw.throttles(Some("carol"), ip).is_limited(),
            "carol is unlimited"
        );
        assert_eq!(bw.tracked(), (1, 0));
        drop((a, b));
        assert_eq!(bw.tracked(), (0, 0));
        let none = Bandwidth::new(BandwidthLimits::default());
        assert!(!none.throttles(Some("alice"), ip).is_limited());
    }
}
