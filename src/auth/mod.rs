//! Client authentication, protocol-neutral: the users file in force ([`htpasswd`]), verified
//! credentials cached so that a client opening a thousand tunnels pays for one bcrypt, a
//! failure budget per client IP, a cap of open requests and tunnels per user, and revocation:
//! a user removed from the file (or whose password changed) loses their open tunnels at the
//! reload.
//!
//! Listeners hand over what the client presented (a user name and password); what comes back
//! is a [`Grant`] (or, without `[auth]`, nothing to check) or an [`AuthError`] that the one
//! classifier turns into 407, 429 or 503.

pub mod htpasswd;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use ring::hmac;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use self::htpasswd::{Hash, Users, UsersError};
use crate::lograte::EverySecond;

/// How long a verified password is taken on trust before it is verified again.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// Failure-budget entries kept at most, least recently seen dropped first: an address spray
/// must not grow memory, nor the cost of a failure, without bound.
const MAX_TRACKED_IPS: usize = 100_000;

/// The longest password verified (bytes). SHA-crypt's and apr1's cost grows with the
/// password's length; a longer one is refused without hashing, and counted as a failure.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// How long a login waits for a free verifier (there are as many as cores) before it is
/// answered 503: a burst of logins queues, a flood does not pile up.
const VERIFY_QUEUE: Duration = Duration::from_secs(5);

/// What `[auth]` sets.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub users: Users,
    /// The `realm` of `Proxy-Authenticate: Basic`. Default `viaduct`.
    pub realm: String,
    /// Open requests and tunnels per user at most (0: no limit).
    pub max_per_user: usize,
    /// Wrong credentials a client IP may send within `lockout` before it is refused for
    /// `lockout` (429). Default 10.
    pub max_failures: u32,
    /// Default 1 minute.
    pub lockout: Duration,
}

impl AuthSettings {
    pub fn new(users: Users) -> Self {
        Self {
            users,
            realm: "viaduct".into(),
            max_per_user: 0,
            max_failures: 10,
            lockout: Duration::from_secs(60),
        }
    }
}

/// Why a client was not let in.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("proxy authentication required")]
    Missing { realm: Arc<str> },
    #[error("wrong user name or password")]
    Wrong { realm: Arc<str> },
    #[error("too many failed logins from this address; retry in {}s", .retry_after.as_secs())]
    Throttled { retry_after: Duration },
    #[error("user \"{user}\" has {max} requests and tunnels open, the most allowed")]
    UserLimit { user: String, max: usize },
    /// Every verifier stayed busy for the queue's deadline.
    #[error("password verifications are saturated; retry in {}s", .retry_after.as_secs())]
    Busy { retry_after: Duration },
}

impl AuthError {
    /// The realm to challenge with, for the answers that ask for credentials.
    pub fn challenge(&self) -> Option<&str> {
        match self {
            Self::Missing { realm } | Self::Wrong { realm } => Some(realm),
            _ => None,
        }
    }

    /// How long the client should wait, for a 429.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after } | Self::Busy { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

/// The users file in force with its verified-credentials cache (dropped with it at a reload).
struct Directory {
    settings: AuthSettings,
    realm: Arc<str>,
    /// Per process and per reload: a cached tag means nothing outside this directory.
    /// `None` when the system's random source failed: then nothing is cached (a guessable
    /// key would make cached tags forgeable), every request is verified.
    key: Option<hmac::Key>,
    /// user -> (tag of the verified `user:password`, when verified).
    verified: Mutex<HashMap<String, (hmac::Tag, Instant)>>,
    /// One verification per distinct credentials at a time; others wait for its answer.
    verifying: Mutex<HashMap<Vec<u8>, Arc<OnceCell<bool>>>>,
    /// What an unknown user's password is verified against (and refused whatever it says),
    /// so that an unknown user costs as long as a known one: a hash of the file's most common
    /// scheme.
    decoy: Option<Hash>,
}

/// A client IP's recent failures: `count` holds the failures of the window that began at
/// `since` and the verifications under way (charged before they start, refunded when right).
#[derive(Debug, Clone, Copy)]
struct Strikes {
    count: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

/// Per user: open requests and tunnels, and the token that closes their tunnels.
struct UserState {
    open: usize,
    revoke: CancellationToken,
}

/// The authentication gate every listener goes through.
pub struct Auth {
    directory: ArcSwapOption<Directory>,
    strikes: Mutex<lru::LruCache<IpAddr, Strikes>>,
    /// As many verifiers as cores: hashing runs on blocking threads, bounded here.
    verifiers: Arc<tokio::sync::Semaphore>,
    /// Wrong credentials charged since start (answered or not: a client that resets its
    /// stream during the verification is counted all the same).
    failures: AtomicU64,
    users: Arc<Mutex<HashMap<String, UserState>>>,
    /// Parent of every user's token: shutdown's hard stop.
    parent: CancellationToken,
    failures_log: EverySecond,
    /// Password hashes actually computed (cache misses), since start.
    verifications: AtomicU64,
}

/// An authenticated user's place: counts against their cap while held, and carries the token
/// that fires when their access is revoked (or at shutdown's hard stop).
pub struct Grant {
    user: String,
    revoke: CancellationToken,
    users: Arc<Mutex<HashMap<String, UserState>>>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant").field("user", &self.user).finish()
    }
}

impl Grant {
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Fires when the user is removed or their password changes (and at hard stop).
    pub fn revoked(&self) -> &CancellationToken {
        &self.revoke
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Ok(mut users) = self.users.lock()
            && let Some(state) = users.get_mut(&self.user)
        {
            state.open -= 1;
            if state.open == 0 {
                users.remove(&self.user);
            }
        }
    }
}

impl Auth {
    /// `parent`: cancelled at hard stop, which ends every user's tunnels too.
    pub fn new(settings: Option<AuthSettings>, parent: CancellationToken) -> Self {
        Self {
            directory: ArcSwapOption::from(settings.map(|s| Arc::new(Directory::new(s)))),
            strikes: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(MAX_TRACKED_IPS).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            verifiers: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            )),
            failures: AtomicU64::new(0),
            users: Arc::default(),
            parent,
            failures_log: EverySecond::default(),
            verifications: AtomicU64::new(0),
        }
    }

    /// Password hashes computed since start: with the cache, one per user and password per
    /// [`CACHE_TTL`], however many requests present them.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Wrong credentials charged since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// True when clients must authenticate.
    pub fn enabled(&self) -> bool {
        self.directory.load().is_some()
    }

    /// Puts new settings in force (a reload). Cached verifications go with the old file; users
    /// it removed or whose password changed lose their open tunnels now. Returns how many
    /// users were revoked.
    pub fn reload(&self, settings: Option<AuthSettings>) -> usize {
        let new = settings.map(|s| Arc::new(Directory::new(s)));
        let old = self.directory.swap(new.clone());
        let (Some(old), Some(new)) = (old, new) else {
            return 0;
        };
        let changed: Vec<&str> = old.settings.users.changed_in(&new.settings.users).collect();
        let Ok(mut users) = self.users.lock() else {
            return 0;
        };
        let mut revoked = 0;
        for user in changed {
            if let Some(state) = users.get_mut(user) {
                state.revoke.cancel();
                // Grants still held see the cancelled token; new ones get a fresh one.
                state.revoke = self.parent.child_token();
                revoked += 1;
            }
        }
        revoked
    }

    /// Lets a client in: `Ok(None)` when there is no `[auth]`, `Ok(Some(grant))` for right
    /// credentials (`user` without any `-session-` suffix), else why not.
    pub async fn authenticate(
        &self,
        ip: IpAddr,
        credentials: Option<(&str, &str)>,
    ) -> Result<Option<Grant>, AuthError> {
        // A reload between verifying and granting could revoke before the grant exists; the
        // grant is then refused and the credentials checked again under the new file.
        loop {
            let Some(dir) = self.directory.load_full() else {
                return Ok(None);
            };
            self.check_budget(ip, Instant::now())?;
            let Some((user, password)) = credentials else {
                return Err(AuthError::Missing {
                    realm: Arc::clone(&dir.realm),
                });
            };
            // A success refunds only its own charge: it never clears failures charged to the
            // address before (one valid account must not buy unlimited guesses at others).
            if !self.verify(&dir, ip, user, password).await? {
                return Err(AuthError::Wrong {
                    realm: Arc::clone(&dir.realm),
                });
            }
            if let Some(grant) = self.grant(user, &dir)? {
                return Ok(Some(grant));
            }
        }
    }

    /// A grant for `user`, verified under `dir`; `None` when `dir` is no longer in force.
    fn grant(&self, user: &str, dir: &Arc<Directory>) -> Result<Option<Grant>, AuthError> {
        let max = dir.settings.max_per_user;
        let mut users = self.users.lock().map_err(|_| AuthError::UserLimit {
            user: user.to_owned(),
            max,
        })?;
        // Under the lock a reload's revocation takes too: either this grant is there for it to
        // revoke, or the reload's new file is already in force and is checked instead.
        if !self
            .directory
            .load()
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, dir))
        {
            return Ok(None);
        }
        // The common case (the user already has something open) allocates nothing.
        if !users.contains_key(user) {
            users.insert(
                user.to_owned(),
                UserState {
                    open: 0,
                    revoke: self.parent.child_token(),
                },
            );
        }
        let Some(state) = users.get_mut(user) else {
            return Err(AuthError::UserLimit {
                user: user.to_owned(),
                max,
            });
        };
        if max > 0 && state.open >= max {
            return Err(AuthError::UserLimit {
                user: user.to_owned(),
                max,
            });
        }
        state.open += 1;
        Ok(Some(Grant {
            user: user.to_owned(),
            revoke: state.revoke.clone(),
            users: Arc::clone(&self.users),
        }))
    }

    /// Refuses an address in its cool-down.
    fn check_budget(&self, ip: IpAddr, now: Instant) -> Result<(), AuthError> {
        let Ok(strikes) = self.strikes.lock() else {
            return Ok(());
        };
        match strikes.peek(&ip).and_then(|s| s.locked_until) {
            Some(until) if until > now => Err(throttled(until, now)),
            _ => Ok(()),
        }
    }

    /// Charges `ip` one failure before its password is verified: refused (429) when its
    /// failures and verifications under way already fill the budget. The charge stands unless
    /// [`Charge::refund`] is called (the password was right), whatever happens to the request.
    fn charge(&self, ip: IpAddr, settings: &AuthSettings) -> Result<Charge<'_>, AuthError> {
        let now = Instant::now();
        let Ok(mut strikes) = self.strikes.lock() else {
            return Err(AuthError::Throttled {
                retry_after: settings.lockout,
            });
        };
        let fresh = Strikes {
            count: 0,
            since: now,
            locked_until: None,
        };
        let s = strikes.get_or_insert_mut(ip, || fresh);
        if let Some(until) = s.locked_until.filter(|u| *u > now) {
            return Err(throttled(until, now));
        }
        if now - s.since >= settings.lockout || s.locked_until.is_some() {
            *s = fresh;
        }
        if s.count >= settings.max_failures {
            // Verifications under way fill the budget: their outcome decides the lockout.
            return Err(throttled(s.since + settings.lockout, now));
        }
        s.count += 1;
        Ok(Charge {
            auth: self,
            ip,
            settings: (settings.max_failures, settings.lockout),
            refunded: false,
        })
    }

    /// Whether `password` is `user`'s under `dir`: from the cache (free), else verified by a
    /// bounded verifier after charging `ip` a failure (refunded when right). Concurrent
    /// requests with the same credentials share one verification; each wrong one is charged.
    async fn verify(
        &self,
        dir: &Directory,
        ip: IpAddr,
        user: &str,
        password: &str,
    ) -> Result<bool, AuthError> {
        if password.len() > MAX_PASSWORD_BYTES {
            // Refused unhashed, charged all the same.
            self.charge(ip, &dir.settings)?;
            return Ok(false);
        }
        let tag = dir.tag(user, password);
        if dir.cached(user, tag.as_ref()) {
            return Ok(true);
        }
        let known = dir.settings.users.get(user);
        let Some(hash) = known.or(dir.decoy.as_ref()).cloned() else {
            self.charge(ip, &dir.settings)?;
            return Ok(false);
        };
        let cell = match (&tag, dir.verifying.lock()) {
            (Some(tag), Ok(mut v)) => Arc::clone(v.entry(tag.as_ref().to_vec()).or_default()),
            _ => Arc::new(OnceCell::new()),
        };
        // Out of the map when done, or when this request is dropped while waiting (a client
        // that hangs up must not leave an entry behind).
        let _pending = tag.as_ref().map(|tag| Pending {
            verifying: &dir.verifying,
            tag: tag.as_ref(),
            cell: &cell,
        });
        let mut charged = None;
        let pass = password.to_owned();
        let right = *cell
            .get_or_try_init(|| async {
                // This request computes the hash: charged first, then a verifier.
                let charge = self.charge(ip, &dir.settings)?;
                let permit =
                    tokio::time::timeout(VERIFY_QUEUE, Arc::clone(&self.verifiers).acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .ok_or(AuthError::Busy {
                            retry_after: Duration::from_secs(1),
                        })?;
                self.verifications.fetch_add(1, Ordering::Relaxed);
                let ok = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    hash.verify(&pass)
                })
                .await
                .unwrap_or(false);
                charged = Some(charge);
                Ok::<bool, AuthError>(ok)
            })
            .await?;
        let right = right && known.is_some();
        match charged {
            Some(charge) if right => charge.refund(),
            Some(_wrong) => {}
            // Another request computed it: a wrong answer is charged here too (it cost
            // nothing more, and it is one more guess).
            None if !right => drop(self.charge(ip, &dir.settings)?),
            None => {}
        }
        if right {
            dir.remember(user, tag);
        }
        Ok(right)
    }

    /// A charge that stood: the failure is recorded (counted, logged, the address locked out
    /// when it fills the budget).
    fn failed(&self, ip: IpAddr, (max_failures, lockout): (u32, Duration)) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut locked = false;
        if let Ok(mut strikes) = self.strikes.lock()
            && let Some(s) = strikes.get_mut(&ip)
            && s.count >= max_failures
            && s.locked_until.is_none()
        {
            s.locked_until = Some(now + lockout);
            locked = true;
        }
        if let Some(n) = self.failures_log.count() {
            tracing::warn!(
                client = %ip,
                failures = n,
                locked_out = locked,
                "failed proxy logins (count since the last line)"
            );
        }
    }
}

/// 429 until `until`, rounded up: a client that waits exactly this long is let in.
fn throttled(until: Instant, now: Instant) -> AuthError {
    AuthError::Throttled {
        retry_after: Duration::from_secs(
            until.saturating_duration_since(now).as_secs_f64().ceil() as u64
        ),
    }
}

/// A failure charged to an address before its verification: it stands (recorded when this
/// drops) unless refunded.
struct Charge<'a> {
    auth: &'a Auth,
    ip: IpAddr,
    settings: (u32, Duration),
    refunded: bool,
}

impl Charge<'_> {
    /// The password was right: the charge is taken back.
    fn refund(mut self) {
        self.refunded = true;
        if let Ok(mut strikes) = self.auth.strikes.lock()
            && let Some(s) = strikes.get_mut(&self.ip)
        {
            s.count = s.count.saturating_sub(1);
        }
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        if !self.refunded {
            self.auth.failed(self.ip, self.settings);
        }
    }
}

impl Directory {
    fn new(settings: AuthSettings) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).ok();
        if key.is_none() {
            tracing::warn!(
                "no system randomness for the credentials cache: every request will verify its password"
            );
        }
        let settings_decoy = settings.users.decoy().cloned();
        Self {
            realm: settings.realm.as_str().into(),
            settings,
            key,
            verified: Mutex::new(HashMap::new()),
            verifying: Mutex::new(HashMap::new()),
            decoy: settings_decoy,
        }
    }

    /// `user:password` as the cache keys it; `None` without a key (nothing is cached).
    fn tag(&self, user: &str, password: &str) -> Option<hmac::Tag> {
        let key = self.key.as_ref()?;
        let mut message = Vec::with_capacity(user.len() + password.len() + 1);
        message.extend_from_slice(user.as_bytes());
        message.push(0);
        message.extend_from_slice(password.as_bytes());
        Some(hmac::sign(key, &message))
    }

    /// True when `tag` (of `user` and a password) was verified as `user`'s within
    /// [`CACHE_TTL`] (compared in constant time).
    fn cached(&self, user: &str, tag: Option<&hmac::Tag>) -> bool {
        let Some(tag) = tag else {
            return false;
        };
        self.verified.lock().is_ok_and(|verified| {
            verified.get(user).is_some_and(|(known, at)| {
                at.elapsed() < CACHE_TTL
                    && bool::from(subtle::ConstantTimeEq::ct_eq(known.as_ref(), tag.as_ref()))
            })
        })
    }

    /// Caches a right `user:password` (its tag).
    fn remember(&self, user: &str, tag: Option<hmac::Tag>) {
        if let Some(tag) = tag
            && let Ok(mut verified) = self.verified.lock()
        {
            verified.insert(user.to_owned(), (tag, Instant::now()));
        }
    }
}

/// Removes an in-flight verification from the map when its waiter is done or dropped (unless
/// another waiter already replaced it).
struct Pending<'a> {
    verifying: &'a Mutex<HashMap<Vec<u8>, Arc<OnceCell<bool>>>>,
    tag: &'a [u8],
    cell: &'a Arc<OnceCell<bool>>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        // Done, or the last waiter (the map holds one reference, this waiter another).
        let last = self.cell.initialized() || Arc::strong_count(self.cell) <= 2;
        if last
            && let Ok(mut v) = self.verifying.lock()
            && v.get(self.tag).is_some_and(|c| Arc::ptr_eq(c, self.cell))
        {
            v.remove(self.tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        // `openssl passwd -apr1 -salt RandSalt password`
        Users::parse(
            "alice:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\nbob:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\n",
            "t",
        )
        .unwrap()
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[tokio::test(start_paused = true)]
    async fn budget_per_ip_then_cool_down() {
        let settings = AuthSettings {
            max_failures: 3,
            ..AuthSettings::new(users())
        };
        let auth = Auth::new(Some(settings), CancellationToken::new());
        for _ in 0..3 {
            let e = auth.authenticate(ip(1), Some(("alice", "nope"))).await;
            assert!(matches!(e, Err(AuthError::Wrong { .. })), "{e:?}");
        }
        // Locked out, even with the right password; another address is not slowed.
        let e = auth.authenticate(ip(1), Some(("alice", "password"))).await;
        assert!(
            matches!(e, Err(AuthError::Throttled { retry_after }) if retry_after == Duration::from_secs(60)),
            "{e:?}"
        );
        assert!(
            auth.authenticate(ip(2), Some(("alice", "password")))
                .await
                .is_ok()
        );
        // Missing credentials (a browser's first try) do not count.
        for _ in 0..10 {
            assert!(matches!(
                auth.authenticate(ip(3), None).await,
                Err(AuthError::Missing { .. })
            ));
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(
            auth.authenticate(ip(1), Some(("alice", "password")))
                .await
                .is_ok()
        );
    }

    /// A client that hangs up during a verification leaves nothing behind, and its attempt is
    /// charged all the same (an HTTP/2 stream reset must not skip the budget).
    #[tokio::test]
    async fn a_dropped_verification_is_charged_and_leaves_no_entry() {
        let hash = bcrypt::hash("pw", 10).unwrap();
        let users = Users::parse(&format!("alice:{hash}\n"), "t").unwrap();
        let auth = Auth::new(Some(AuthSettings::new(users)), CancellationToken::new());
        let cut = tokio::time::timeout(
            Duration::from_millis(1),
            auth.authenticate(ip(1), Some(("alice", "wrong"))),
        )
        .await;
        assert!(cut.is_err(), "bcrypt at cost 10 takes longer than 1 ms");
        assert_eq!(auth.failures(), 1);
        let dir = auth.directory.load_full().unwrap();
        assert!(dir.verifying.lock().unwrap().is_empty());
        assert!(
            auth.authenticate(ip(1), Some(("alice", "pw")))
                .await
                .is_ok()
        );
        assert!(dir.verifying.lock().unwrap().is_empty());
        assert_eq!(auth.failures(), 1, "a right password is not charged");
    }

    /// Findings 2, 3, 4 and 10 of the second hardening pass, as counts of work done.
    #[tokio::test]
    async fn the_budget_bounds_the_hashing() {
        let settings = AuthSettings {
            max_failures: 10,
            ..AuthSettings::new(users())
        };
        let auth = Arc::new(Auth::new(Some(settings), CancellationToken::new()));
        // A 45 KB password is refused without hashing, and counted.
        let long = "x".repeat(45_000);
        let e = auth.authenticate(ip(1), Some(("alice", &long))).await;
        assert!(matches!(e, Err(AuthError::Wrong { .. })), "{e:?}");
        assert_eq!((auth.verifications(), auth.failures()), (0, 1));
        // 300 concurrent wrong passwords from one address: at most the budget is hashed.
        let tries = (0..300).map(|i| {
            let auth = Arc::clone(&auth);
            tokio::spawn(async move {
                auth.authenticate(ip(2), Some(("alice", &format!("guess-{i}"))))
                    .await
                    .err()
            })
        });
        let mut throttled = 0;
        for t in tries {
            if let Some(AuthError::Throttled { .. }) = t.await.unwrap() {
                throttled += 1;
            }
        }
        assert!(auth.verifications() <= 10, "{}", auth.verifications());
        assert!(throttled >= 290, "{throttled}");
        // A valid login of one's own does not buy more guesses at another user.
        for round in 0..3 {
            for g in 0..3 {
                let guess = format!("r{round}g{g}");
                let _ = auth.authenticate(ip(3), Some(("bob", &guess))).await;
            }
            assert!(
                auth.authenticate(ip(3), Some(("alice", "password")))
                    .await
                    .is_ok()
            );
        }
        // 9 failures so far; the 10th fills the budget, the 11th attempt waits.
        let _ = auth.authenticate(ip(3), Some(("bob", "last"))).await;
        let e = auth.authenticate(ip(3), Some(("bob", "more"))).await;
        assert!(matches!(e, Err(AuthError::Throttled { .. })), "{e:?}");
        // An unknown user costs a verification, as a known one with a wrong password does.
        let before = auth.verifications();
        let e = auth
            .authenticate(ip(4), Some(("mallory", "password")))
            .await;
        assert!(matches!(e, Err(AuthError::Wrong { .. })), "{e:?}");
        assert_eq!(auth.verifications(), before + 1);
    }

    /// Finding 13: an address spray past the table's size evicts the least recently seen
    /// entries (constant work per failure), it does not grow the table or rescan it.
    #[tokio::test]
    async fn the_failure_table_is_bounded() {
        let auth = Auth::new(Some(AuthSettings::new(users())), CancellationToken::new());
        let dir = auth.directory.load_full().unwrap();
        for n in 0..(MAX_TRACKED_IPS as u32 + 1000) {
            let ip = IpAddr::from(std::net::Ipv6Addr::from(u128::from(n) + 1));
            drop(auth.charge(ip, &dir.settings).unwrap());
        }
        let strikes = auth.strikes.lock().unwrap();
        assert_eq!(strikes.len(), MAX_TRACKED_IPS);
        // The newest are kept, the oldest went first.
        assert!(
            strikes.contains(&IpAddr::from(std::net::Ipv6Addr::from(u128::from(
                MAX_TRACKED_IPS as u32 + 1000
            ))))
        );
        assert!(!strikes.contains(&IpAddr::from(std::net::Ipv6Addr::from(1u128))));
        assert_eq!(auth.failures(), MAX_TRACKED_IPS as u64 + 1000);
    }

    #[tokio::test]
    async fn per_user_cap_and_revocation_at_reload() {
        let settings = AuthSettings {
            max_per_user: 2,
            ..AuthSettings::new(users())
        };
        let auth = Auth::new(Some(settings.clone()), CancellationToken::new());
        let a1 = auth
            .authenticate(ip(1), Some(("alice", "password")))
            .await
            .unwrap()
            .unwrap();
        let _a2 = auth
            .authenticate(ip(1), Some(("alice", "password")))
            .await
            .unwrap();
        assert!(matches!(
            auth.authenticate(ip(1), Some(("alice", "password"))).await,
            Err(AuthError::UserLimit { max: 2, .. })
        ));
        let b = auth
            .authenticate(ip(1), Some(("bob", "password")))
            .await
            .unwrap()
            .unwrap();
        drop(a1);
        let _a3 = auth
            .authenticate(ip(1), Some(("alice", "password")))
            .await
            .unwrap();
        // Reload without alice: her grants' token fires, bob's does not.
        let only_bob = Users::parse("bob:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\n", "t").unwrap();
        assert_eq!(auth.reload(Some(AuthSettings::new(only_bob))), 1);
        assert!(_a2.as_ref().unwrap().revoked().is_cancelled());
        assert!(!b.revoked().is_cancelled());
        assert!(matches!(
            auth.authenticate(ip(1), Some(("alice", "password"))).await,
            Err(AuthError::Wrong { .. })
        ));
    }
}
