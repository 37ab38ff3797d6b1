//! Upstream pools: members, selection strategies, sticky sessions, and failover.
//!
//! Selection is pure and lock-light: health lives in atomics per member, round-robin in one
//! counter, and only sticky pins take a short mutex. [`Pool::candidates`] gives the order in
//! which members should be tried for one request (the strategy's pick first, then the other
//! healthy members as fallbacks); [`dial`] walks that order until one member connects, feeding
//! every outcome back into passive health. Active probing lives in [`health`].

pub mod health;

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

// tokio's clock: the same as std's at run time, and tests can pause and advance it.
use tokio::time::Instant;

use crate::failure::{Failure, verdict};
use crate::target::Target;
use crate::upstream::{ConnectError, Route};

/// How a pool picks a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    Random,
    /// The first healthy member in the configured order.
    Failover,
    LeastConnections,
    /// Rendezvous hashing on a session key, pinned for a TTL.
    Sticky,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RoundRobin => "round-robin",
            Self::Random => "random",
            Self::Failover => "failover",
            Self::LeastConnections => "least-connections",
            Self::Sticky => "sticky",
        })
    }
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "round-robin" => Self::RoundRobin,
            "random" => Self::Random,
            "failover" => Self::Failover,
            "least-connections" => Self::LeastConnections,
            "sticky" => Self::Sticky,
            _ => return None,
        })
    }
}

/// Active health checking.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// Time between probes of each member.
    pub interval: Duration,
    /// Probe target: a CONNECT (or SOCKS connect) through the member to it. Without one, the
    /// probe is a TCP connect to the member's first hop.
    pub target: Option<Target>,
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub strategy: Strategy,
    pub health: Option<HealthCheck>,
    /// Consecutive failures that eject a member. Default 3.
    pub failures: u32,
    /// First ejection length; doubles with each further ejection, up to 5 minutes. Default 5 s.
    pub ejection: Duration,
    /// How long a sticky key stays pinned to its member. Default 10 min.
    pub sticky_ttl: Duration,
    /// Members tried per request at most. Default 3.
    pub max_attempts: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Failover,
            health: None,
            failures: 3,
            ejection: Duration::from_secs(5),
            sticky_ttl: Duration::from_secs(600),
            max_attempts: 3,
        }
    }
}

const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Sticky pins kept per pool at most; the least recently used goes first. A pin costs a fixed
/// ~40 bytes whatever the client's key, so this bounds a pool's pins to a few MiB.
pub const MAX_PINS: usize = 100_000;

/// A sticky key as pinned: a 128-bit digest, so a client's 60 KB key costs what a short one
/// does. Two keys sharing a digest would share a member, which grants nothing.
type PinKey = u128;

fn pin_key(key: &str) -> PinKey {
    (u128::from(rendezvous(key, "pin-a")) << 64) | u128::from(rendezvous(key, "pin-b"))
}

/// One upstream in a pool.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub route: Route,
    failures: AtomicU32,
    ejections: AtomicU32,
    /// Milliseconds since the pool's epoch until which the member is ejected (0: never).
    down_until_ms: AtomicU64,
    active: AtomicUsize,
    /// Ejections since start (for metrics; `ejections` above is the current backoff step).
    ejected_total: AtomicU64,
    /// The last failure through this member, in words (for the status page).
    last_error: Mutex<Option<String>>,
}

/// A member's state, as the status page and metrics show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberState {
    pub name: String,
    pub up: bool,
    /// Milliseconds until the member is tried again, when ejected.
    pub ejected_for_ms: Option<u64>,
    pub in_flight: usize,
    pub ejections: u64,
    pub last_error: Option<String>,
}

/// What a dial through a member says about the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It connected.
    Success,
    /// It failed: refused us, timed out, broke its handshake, rejected our credentials.
    HopFault,
    /// It worked, but could not reach the target (its 502/504, SOCKS host unreachable):
    /// not held against it.
    TargetFault,
}

/// A named set of upstreams.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub members: Vec<Member>,
    pub settings: PoolSettings,
    epoch: Instant,
    rr: AtomicUsize,
    sticky: Mutex<lru::LruCache<PinKey, (usize, Instant)>>,
    inherited: std::sync::atomic::AtomicBool,
    failovers: AtomicU64,
}

/// A pool could not give a connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool {pool} has no healthy member")]
    NoHealthy { pool: String },
    #[error("pool {pool}: {}", list(.failures))]
    AllFailed {
        pool: String,
        failures: Vec<(String, ConnectError)>,
    },
}

fn list(failures: &[(String, ConnectError)]) -> String {
    let parts: Vec<String> = failures.iter().map(|(m, e)| format!("{m}: {e}")).collect();
    format!("{} member(s) failed: {}", failures.len(), parts.join("; "))
}

impl PoolError {
    /// The failure that decides the status: the last member's.
    pub fn last(&self) -> Option<&ConnectError> {
        match self {
            PoolError::NoHealthy { .. } => None,
            PoolError::AllFailed { failures, .. } => failures.last().map(|(_, e)| e),
        }
    }
}

impl Pool {
    pub fn new(name: String, members: Vec<(String, Route)>, settings: PoolSettings) -> Self {
        let members = members
            .into_iter()
            .map(|(name, route)| Member {
                name,
                route,
                failures: AtomicU32::new(0),
                ejections: AtomicU32::new(0),
                down_until_ms: AtomicU64::new(0),
                active: AtomicUsize::new(0),
                ejected_total: AtomicU64::new(0),
                last_error: Mutex::new(None),
            })
            .collect();
        Self {
            name,
            members,
            settings,
            epoch: Instant::now(),
            rr: AtomicUsize::new(0),
            sticky: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(MAX_PINS).unwrap_or(NonZeroUsize::MIN),
            )),
            inherited: std::sync::atomic::AtomicBool::new(false),
            failovers: AtomicU64::new(0),
        }
    }

    /// Requests that moved on to another member after one failed, since start.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Every member's state now.
    pub fn states(&self) -> Vec<MemberState> {
        let now = self.now_ms();
        self.members
            .iter()
            .map(|m| {
                let until = m.down_until_ms.load(Ordering::Relaxed);
                MemberState {
                    name: m.name.clone(),
                    up: until <= now,
                    ejected_for_ms: (until > now).then(|| until - now),
                    in_flight: m.active.load(Ordering::Relaxed),
                    ejections: m.ejected_total.load(Ordering::Relaxed),
                    last_error: m.last_error.lock().ok().and_then(|e| e.clone()),
                }
            })
            .collect()
    }

    /// Takes over the health state of `old`'s members (a reload): a member whose name and
    /// route (credentials included) are unchanged keeps its failures and ejection, so a reload
    /// neither forgives a dead member nor probes every member at once. Returns how many
    /// members carried over.
    pub fn inherit(&self, old: &Pool) -> usize {
        let mut n = 0;
        for m in &self.members {
            let Some(o) = old
                .members
                .iter()
                .find(|o| o.name == m.name && o.route.id() == m.route.id())
            else {
                continue;
            };
            m.failures
                .store(o.failures.load(Ordering::Relaxed), Ordering::Relaxed);
            m.ejections
                .store(o.ejections.load(Ordering::Relaxed), Ordering::Relaxed);
            let left = o
                .down_until_ms
                .load(Ordering::Relaxed)
                .saturating_sub(old.now_ms());
            if left > 0 {
                m.down_until_ms
                    .store(self.now_ms() + left, Ordering::Relaxed);
            }
            n += 1;
        }
        if n > 0 {
            self.inherited.store(true, Ordering::Relaxed);
        }
        n
    }

    /// True when this pool took over health state from a previous one (its checker then
    /// waits one interval before the first probe).
    pub fn inherited(&self) -> bool {
        self.inherited.load(Ordering::Relaxed)
    }

    /// Sticky pins held now.
    pub fn pins(&self) -> usize {
        self.sticky.lock().map_or(0, |p| p.len())
    }

    /// `name (strategy, N members)` for logs and `viaduct route`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        format!(
            "{} ({}: {})",
            self.name,
            self.settings.strategy,
            names.join(", ")
        )
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// True when member `i` takes traffic.
    pub fn is_up(&self, i: usize) -> bool {
        self.members[i].down_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// Members in the order to try them for one request: the strategy's pick first, then the
    /// other healthy members in configured order; at most `max_attempts`. Empty when none is up.
    pub fn candidates(&self, key: Option<&str>) -> Vec<usize> {
        let healthy: Vec<usize> = (0..self.members.len()).filter(|&i| self.is_up(i)).collect();
        if healthy.is_empty() {
            return healthy;
        }
        let first = match self.settings.strategy {
            Strategy::Failover => healthy[0],
            Strategy::RoundRobin => {
                healthy[self.rr.fetch_add(1, Ordering::Relaxed) % healthy.len()]
            }
            Strategy::Random => healthy[fastrand::usize(..healthy.len())],
            Strategy::LeastConnections => *healthy
                .iter()
                .min_by_key(|&&i| self.members[i].active.load(Ordering::Relaxed))
                .unwrap_or(&healthy[0]),
            Strategy::Sticky => self.sticky_pick(key.unwrap_or(""), &healthy),
        };
        let mut order = vec![first];
        order.extend(healthy.iter().copied().filter(|&i| i != first));
        order.truncate(self.settings.max_attempts.max(1));
        order
    }

    /// Rendezvous (highest random weight) hashing: each key goes to the healthy member with the
    /// highest `hash(key, member name)`. Instances with the same config agree without talking,
    /// and losing a member moves only the keys it had. Pins last `sticky_ttl`; a pin whose member
    /// is down moves to the next best member, and returns only once the TTL lapses.
    fn sticky_pick(&self, key: &str, healthy: &[usize]) -> usize {
        let best = *healthy
            .iter()
            .max_by_key(|&&i| rendezvous(key, &self.members[i].name))
            .unwrap_or(&healthy[0]);
        let key = pin_key(key);
        let Ok(mut pins) = self.sticky.lock() else {
            return best;
        };
        let now = Instant::now();
        // O(1): a hash lookup and a move to the front; a full table drops its oldest pin.
        match pins.get(&key).copied() {
            Some((i, at))
                if now.duration_since(at) < self.settings.sticky_ttl && healthy.contains(&i) =>
            {
                i
            }
            Some((_, at)) if now.duration_since(at) < self.settings.sticky_ttl => {
                // Re-pin, keeping the original expiry: the key returns when the TTL lapses.
                pins.put(key, (best, at));
                best
            }
            _ => {
                pins.put(key, (best, now));
                best
            }
        }
    }

    /// Feeds one dial's outcome into member `i`'s passive health.
    pub fn report(&self, i: usize, outcome: Outcome) {
        let m = &self.members[i];
        match outcome {
            Outcome::Success => {
                m.failures.store(0, Ordering::Relaxed);
                m.ejections.store(0, Ordering::Relaxed);
                m.down_until_ms.store(0, Ordering::Relaxed);
            }
            Outcome::TargetFault => m.failures.store(0, Ordering::Relaxed),
            Outcome::HopFault => {
                let failures = m.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= self.settings.failures.max(1) {
                    m.failures.store(0, Ordering::Relaxed);
                    let n = m.ejections.fetch_add(1, Ordering::Relaxed).min(16);
                    m.ejected_total.fetch_add(1, Ordering::Relaxed);
                    let backoff = self
                        .settings
                        .ejection
                        .saturating_mul(1 << n)
                        .min(MAX_EJECTION);
                    m.down_until_ms.store(
                        self.now_ms() + backoff.as_millis() as u64,
                        Ordering::Relaxed,
                    );
                    tracing::warn!(pool = %self.name, member = %m.name, backoff_ms = backoff.as_millis() as u64, "member ejected");
                }
            }
        }
    }

    /// Keeps the last failure through member `i`, for the status page.
    pub fn note_error(&self, i: usize, e: &ConnectError) {
        if let Ok(mut last) = self.members[i].last_error.lock() {
            *last = Some(e.to_string());
        }
    }

    /// Counts a connection on member `i` (least-connections) until the guard drops.
    pub fn hold(self: &std::sync::Arc<Self>, i: usize) -> MemberGuard {
        std::sync::Arc::clone(self).hold_owned(i)
    }

    /// Like [`Pool::hold`], taking the `Arc`.
    pub fn hold_owned(self: std::sync::Arc<Self>, i: usize) -> MemberGuard {
        self.members[i].active.fetch_add(1, Ordering::Relaxed);
        MemberGuard {
            pool: self,
            member: i,
        }
    }
}

/// Keeps a member's active-connection count up while alive.
#[derive(Debug)]
pub struct MemberGuard {
    pool: std::sync::Arc<Pool>,
    member: usize,
}

impl MemberGuard {
    /// The member's name.
    pub fn name(&self) -> &str {
        &self.pool.members[self.member].name
    }
}

impl Drop for MemberGuard {
    fn drop(&mut self) {
        self.pool.members[self.member]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// FNV-1a over `key`, a separator and `member`, finished with a splitmix64 mix so that close
/// inputs spread. Hand-written because it must be stable across processes and releases
/// (std's hashers promise neither) and it is a dozen lines.
fn rendezvous(key: &str, member: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0xff]).chain(member.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Tries `pool`'s candidates in order with `attempt(member index, member, time left)` until one
/// connects, all allowed members failed, or `deadline` passes. Every outcome is reported to
/// passive health. Returns the member's index with what it produced.
pub async fn dial<T, F, Fut>(
    pool: &Pool,
    key: Option<&str>,
    deadline: tokio::time::Instant,
    mut attempt: F,
) -> Result<(usize, T), PoolError>
where
    F: FnMut(usize, &Member, Duration) -> Fut,
    Fut: Future<Output = Result<T, ConnectError>>,
{
    let order = pool.candidates(key);
    if order.is_empty() {
        return Err(PoolError::NoHealthy {
            pool: pool.name.clone(),
        });
    }
    let mut failures = Vec::new();
    for i in order {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let member = &pool.members[i];
        match attempt(i, member, left).await {
            Ok(t) => {
                pool.report(i, Outcome::Success);
                return Ok((i, t));
            }
            Err(e) => {
                let v = verdict(Failure::Connect(e.kind()));
                // A direct member has no hop of its own to blame: the target failed.
                let outcome = if v.blame_hop && !member.route.hops().is_empty() {
                    Outcome::HopFault
                } else {
                    Outcome::TargetFault
                };
                tracing::debug!(pool = %pool.name, member = %member.name, error = %e, ?outcome, "pool member failed");
                pool.report(i, outcome);
                pool.note_error(i, &e);
                failures.push((member.name.clone(), e));
                if !v.retry {
                    break;
                }
                pool.failovers.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Err(PoolError::AllFailed {
        pool: pool.name.clone(),
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, strategy: Strategy) -> Pool {
        let members = (0..n).map(|i| (format!("m{i}"), Route::direct())).collect();
        Pool::new(
            "p".into(),
            members,
            PoolSettings {
                strategy,
                ..Default::default()
            },
        )
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let p = pool(3, Strategy::RoundRobin);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[p.candidates(None)[0]] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn random_reaches_every_member() {
        let p = pool(4, Strategy::Random);
        let mut counts = [0; 4];
        for _ in 0..4000 {
            counts[p.candidates(None)[0]] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn failover_keeps_order_and_skips_ejected() {
        let p = pool(3, Strategy::Failover);
        assert_eq!(p.candidates(None), [0, 1, 2]);
        for _ in 0..3 {
            p.report(0, Outcome::HopFault);
        }
        assert!(!p.is_up(0));
        assert_eq!(p.candidates(None), [1, 2]);
        p.report(0, Outcome::Success);
        assert_eq!(p.candidates(None), [0, 1, 2]);
    }

    #[test]
    fn target_faults_do_not_eject() {
        let p = pool(2, Strategy::Failover);
        for _ in 0..10 {
            p.report(0, Outcome::TargetFault);
        }
        assert!(p.is_up(0));
        assert!(pool(1, Strategy::Failover).candidates(None).len() == 1);
    }

    #[test]
    fn least_connections_prefers_idle_members() {
        let p = std::sync::Arc::new(pool(3, Strategy::LeastConnections));
        let _a = p.hold(0);
        let _b = p.hold(0);
        let _c = p.hold(1);
        assert_eq!(p.candidates(None)[0], 2);
        drop(_a);
        drop(_b);
        assert_eq!(p.candidates(None)[0], 0);
    }

    #[test]
    fn sticky_is_stable_and_moves_only_lost_keys() {
        let p = pool(5, Strategy::Sticky);
        let keys: Vec<String> = (0..2000).map(|i| format!("session-{i}")).collect();
        let before: Vec<usize> = keys.iter().map(|k| p.candidates(Some(k))[0]).collect();
        // Another instance with the same config agrees without shared state.
        let other = pool(5, Strategy::Sticky);
        assert!(
            keys.iter()
                .zip(&before)
                .all(|(k, &b)| other.candidates(Some(k))[0] == b)
        );
        // Spread: every member gets a fair share.
        for m in 0..5 {
            let n = before.iter().filter(|&&b| b == m).count();
            assert!((300..500).contains(&n), "member {m} has {n}");
        }
        // Losing member 2 moves only its keys; in a fresh instance (no pins) the same holds.
        let fresh = pool(5, Strategy::Sticky);
        for _ in 0..3 {
            fresh.report(2, Outcome::HopFault);
        }
        for (k, &b) in keys.iter().zip(&before) {
            let now = fresh.candidates(Some(k))[0];
            if b == 2 {
                assert_ne!(now, 2);
            } else {
                assert_eq!(now, b, "key {k} moved without reason");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sticky_repins_on_loss_and_returns_after_ttl() {
        let members = (0..3).map(|i| (format!("m{i}"), Route::direct())).collect();
        let settings = PoolSettings {
            strategy: Strategy::Sticky,
            sticky_ttl: Duration::from_millis(50),
            ..Default::default()
        };
        let p = Pool::new("p".into(), members, settings);
        let home = p.candidates(Some("k"))[0];
        for _ in 0..3 {
            p.report(home, Outcome::HopFault);
        }
        let away = p.candidates(Some("k"))[0];
        assert_ne!(away, home);
        p.report(home, Outcome::Success);
        assert_eq!(
            p.candidates(Some("k"))[0],
            away,
            "stays re-pinned while the TTL runs"
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(
            p.candidates(Some("k"))[0],
            home,
            "back home once the TTL lapsed"
        );
    }

    /// Clients choose sticky keys: any number of any length costs a bounded table, and a key
    /// still finds its member.
    #[test]
    fn sticky_pins_are_bounded_in_count_and_size() {
        let p = pool(3, Strategy::Sticky);
        let long = "k".repeat(60_000);
        let first = p.candidates(Some(&long))[0];
        for i in 0..(MAX_PINS + 5_000) {
            p.candidates(Some(&format!("{i}-session")));
        }
        assert_eq!(p.pins(), MAX_PINS);
        assert_eq!(
            std::mem::size_of::<PinKey>(),
            16,
            "a pin's key is fixed-size"
        );
        // The long key's pin was the least recently used and went; it lands where hashing says.
        assert_eq!(p.candidates(Some(&long))[0], first);
        assert_eq!(p.pins(), MAX_PINS);
    }

    /// A reload keeps an unchanged member's ejection; a changed one starts fresh.
    #[test]
    fn reload_keeps_health_of_unchanged_members() {
        let old = pool(2, Strategy::Failover);
        for _ in 0..3 {
            old.report(0, Outcome::HopFault);
            old.report(1, Outcome::HopFault);
        }
        assert!(!old.is_up(0) && !old.is_up(1));
        let members = vec![
            ("m0".to_owned(), Route::direct()),
            ("m1".to_owned(), Route::parse("http://127.0.0.1:9").unwrap()),
        ];
        let new = Pool::new("p".into(), members, PoolSettings::default());
        assert_eq!(new.inherit(&old), 1);
        assert!(!new.is_up(0), "unchanged member stays ejected");
        assert!(new.is_up(1), "changed member starts fresh");
        assert!(new.inherited());
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_backs_off_exponentially() {
        let members = vec![("m".to_owned(), Route::direct())];
        let settings = PoolSettings {
            failures: 1,
            ejection: Duration::from_millis(40),
            ..Default::default()
        };
        let p = Pool::new("p".into(), members, settings);
        p.report(0, Outcome::HopFault);
        assert!(!p.is_up(0));
        tokio::time::advance(Duration::from_millis(39)).await;
        assert!(!p.is_up(0), "first ejection: 40 ms");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(p.is_up(0), "first ejection: 40 ms");
        p.report(0, Outcome::HopFault);
        tokio::time::advance(Duration::from_millis(79)).await;
        assert!(!p.is_up(0), "second ejection: 80 ms");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(p.is_up(0));
    }
}
