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

/// Failure-budget entries kept at most (an address spray must not grow memory without bound).
const MAX_TRACKED_IPS: usize = 100_000;

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
            Self::Throttled { retry_after } => Some(*retry_after),
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
}

/// A client IP's recent failures.
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
    strikes: Mutex<HashMap<IpAddr, Strikes>>,
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
            strikes: Mutex::new(HashMap::new()),
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
            let now = Instant::now();
            let had_strikes = self.check_budget(ip, now)?;
            let Some((user, password)) = credentials else {
                return Err(AuthError::Missing {
                    realm: Arc::clone(&dir.realm),
                });
            };
            if !dir.verify(user, password, &self.verifications).await {
                self.strike(ip, now, &dir.settings);
                return Err(AuthError::Wrong {
                    realm: Arc::clone(&dir.realm),
                });
            }
            if had_strikes && let Ok(mut strikes) = self.strikes.lock() {
                strikes.remove(&ip);
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

    /// Refuses an address in its cool-down; `Ok(true)` when it has recent failures.
    fn check_budget(&self, ip: IpAddr, now: Instant) -> Result<bool, AuthError> {
        let Ok(strikes) = self.strikes.lock() else {
            return Ok(false);
        };
        let Some(s) = strikes.get(&ip) else {
            return Ok(false);
        };
        match s.locked_until {
            Some(until) if until > now => Err(AuthError::Throttled {
                // Rounded up: a client that waits exactly this long is let in.
                retry_after: Duration::from_secs((until - now).as_secs_f64().ceil() as u64),
            }),
            _ => Ok(true),
        }
    }

    fn strike(&self, ip: IpAddr, now: Instant, settings: &AuthSettings) {
        let Ok(mut strikes) = self.strikes.lock() else {
            return;
        };
        if strikes.len() >= MAX_TRACKED_IPS {
            strikes.retain(|_, s| {
                s.locked_until.is_some_and(|u| u > now) || now - s.since < settings.lockout
            });
        }
        let s = strikes.entry(ip).or_insert(Strikes {
            count: 0,
            since: now,
            locked_until: None,
        });
        if now - s.since >= settings.lockout || s.locked_until.is_some_and(|u| u <= now) {
            *s = Strikes {
                count: 0,
                since: now,
                locked_until: None,
            };
        }
        s.count += 1;
        let locked = s.count >= settings.max_failures;
        if locked {
            s.locked_until = Some(now + settings.lockout);
        }
        drop(strikes);
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

impl Directory {
    fn new(settings: AuthSettings) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).ok();
        if key.is_none() {
            tracing::warn!(
                "no system randomness for the credentials cache: every request will verify its password"
            );
        }
        Self {
            realm: settings.realm.as_str().into(),
            settings,
            key,
            verified: Mutex::new(HashMap::new()),
            verifying: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `password` is `user`'s: from the cache when it was verified within
    /// [`CACHE_TTL`] (compared in constant time), else verified on a blocking thread, once for
    /// any number of concurrent requests presenting the same credentials.
    async fn verify(&self, user: &str, password: &str, computed: &AtomicU64) -> bool {
        let Some(hash) = self.settings.users.get(user) else {
            return false;
        };
        let Some(key) = &self.key else {
            computed.fetch_add(1, Ordering::Relaxed);
            let (hash, pass) = (hash.clone(), password.to_owned());
            return tokio::task::spawn_blocking(move || hash.verify(&pass))
                .await
                .unwrap_or(false);
        };
        let mut message = Vec::with_capacity(user.len() + password.len() + 1);
        message.extend_from_slice(user.as_bytes());
        message.push(0);
        message.extend_from_slice(password.as_bytes());
        if let Ok(verified) = self.verified.lock()
            && let Some((tag, at)) = verified.get(user)
            && at.elapsed() < CACHE_TTL
            && hmac::verify(key, &message, tag.as_ref()).is_ok()
        {
            return true;
        }
        let tag = hmac::sign(key, &message);
        let cell = match self.verifying.lock() {
            Ok(mut v) => Arc::clone(v.entry(tag.as_ref().to_vec()).or_default()),
            Err(_) => Arc::new(OnceCell::new()),
        };
        // Out of the map when done, or when this request is dropped while waiting (a client
        // that hangs up must not leave an entry behind).
        let _pending = Pending {
            verifying: &self.verifying,
            tag: tag.as_ref(),
            cell: &cell,
        };
        let (hash, pass) = (hash.clone(), password.to_owned());
        let ok = *cell
            .get_or_init(|| async move {
                computed.fetch_add(1, Ordering::Relaxed);
                tokio::task::spawn_blocking(move || hash.verify(&pass))
                    .await
                    .unwrap_or(false)
            })
            .await;
        if ok && let Ok(mut verified) = self.verified.lock() {
            verified.insert(user.to_owned(), (tag, Instant::now()));
        }
        ok
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

    /// A client that hangs up during a verification leaves nothing behind.
    #[tokio::test]
    async fn a_dropped_verification_leaves_no_entry() {
        let hash = bcrypt::hash("pw", 10).unwrap();
        let users = Users::parse(&format!("alice:{hash}\n"), "t").unwrap();
        let dir = Directory::new(AuthSettings::new(users));
        let computed = AtomicU64::new(0);
        let cut = tokio::time::timeout(
            Duration::from_millis(1),
            dir.verify("alice", "pw", &computed),
        )
        .await;
        assert!(cut.is_err(), "bcrypt at cost 10 takes longer than 1 ms");
        assert!(dir.verifying.lock().unwrap().is_empty());
        assert!(dir.verify("alice", "pw", &computed).await);
        assert!(dir.verifying.lock().unwrap().is_empty());
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
