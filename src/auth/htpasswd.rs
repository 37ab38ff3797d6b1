//! The users file: htpasswd format (`user:hash` per line), with the hashes Apache's `htpasswd`
//! and `openssl passwd` write. Parsing checks every line (plain text, unknown formats and
//! duplicate users are errors naming file and line); verifying is slow on purpose (bcrypt) and
//! belongs on a blocking thread.
//!
//! bcrypt and SHA-crypt come from their RustCrypto-maintained crates. Apache's `$apr1$` (MD5-crypt
//! with another magic string) has no maintained crate that is not tied to an unmaintained
//! crypto stack, so it is written here on `md-5`, checked against `openssl passwd -apr1` vectors.

use std::collections::HashMap;
use std::path::Path;

use sha_crypt::PasswordVerifier;

/// A password hash from the users file, in one of the formats we verify.
#[derive(Clone, PartialEq, Eq)]
pub enum Hash {
    /// `$2y$` / `$2b$` / `$2a$` (htpasswd -B).
    Bcrypt(String),
    /// `$apr1$salt$digest` (htpasswd -m, openssl passwd -apr1).
    Apr1 { salt: String, digest: String },
    /// `$5$` / `$6$` (openssl passwd -5 / -6), optional `rounds=N$`.
    ShaCrypt(String),
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hash is still a secret worth not printing (offline guessing).
        f.write_str(match self {
            Self::Bcrypt(_) => "Hash::Bcrypt(..)",
            Self::Apr1 { .. } => "Hash::Apr1(..)",
            Self::ShaCrypt(_) => "Hash::ShaCrypt(..)",
        })
    }
}

impl Hash {
    /// Recognises a hash, or says why it is not one we accept.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        const FORMATS: &str =
            "write it with htpasswd -B, htpasswd -m, or openssl passwd -apr1/-5/-6";
        if ["$2y$", "$2b$", "$2a$"].iter().any(|p| s.starts_with(p)) {
            // $2y$NN$ + 53 characters of salt and digest.
            let cost = s.get(4..6).and_then(|c| c.parse::<u32>().ok());
            if s.len() != 60 || s.as_bytes().get(6) != Some(&b'$') || cost.is_none() {
                return Err("malformed bcrypt hash");
            }
            return Ok(Self::Bcrypt(s.to_owned()));
        }
        if let Some(rest) = s.strip_prefix("$apr1$") {
            let (salt, digest) = rest.split_once('$').ok_or("malformed $apr1$ hash")?;
            if salt.is_empty() || salt.len() > 8 || digest.len() != 22 {
                return Err("malformed $apr1$ hash");
            }
            return Ok(Self::Apr1 {
                salt: salt.to_owned(),
                digest: digest.to_owned(),
            });
        }
        if s.starts_with("$5$") || s.starts_with("$6$") {
            // The crate's own parser decides; a wrong password is the only error we want later.
            return match sha_crypt::ShaCrypt::default().verify_password(b"", s) {
                Ok(()) | Err(sha_crypt::password_hash::Error::PasswordInvalid) => {
                    Ok(Self::ShaCrypt(s.to_owned()))
                }
                Err(_) => Err("malformed SHA-crypt hash"),
            };
        }
        if s.starts_with("$1$") {
            return Err(
                "MD5-crypt ($1$) is not accepted; write it with htpasswd -B or openssl passwd -6",
            );
        }
        if s.starts_with("{SHA}") {
            return Err("unsalted {SHA} hashes are not accepted; write it with htpasswd -B");
        }
        if s.starts_with('$') {
            return Err(FORMATS);
        }
        Err(
            "not a password hash (plain text or crypt(3) DES?); write it with htpasswd -B, htpasswd -m, or openssl passwd -apr1/-5/-6",
        )
    }

    /// True when `password` matches. Slow for bcrypt: call it off the async runtime.
    pub fn verify(&self, password: &str) -> bool {
        match self {
            Self::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Self::ShaCrypt(h) => sha_crypt::ShaCrypt::default()
                .verify_password(password.as_bytes(), h.as_str())
                .is_ok(),
            Self::Apr1 { salt, digest } => {
                let ours = apr1(password.as_bytes(), salt.as_bytes());
                use subtle::ConstantTimeEq;
                bool::from(ours.as_bytes().ct_eq(digest.as_bytes()))
            }
        }
    }
}

/// The users of a users file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Users {
    users: HashMap<String, Hash>,
}

/// A users-file error, with its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct UsersError {
    pub file: String,
    /// 0 when the error is about the whole file.
    pub line: usize,
    pub message: String,
}

/// The largest users file read.
const MAX_FILE_BYTES: u64 = 4 << 20;

impl Users {
    /// Reads and parses the file at `path` (blocking I/O).
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        use std::io::Read;
        let file = path.display().to_string();
        let whole = |message: String| UsersError {
            file: file.clone(),
            line: 0,
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| whole(format!("cannot read: {e}")))?;
        if !meta.is_file() {
            return Err(whole("not a regular file".into()));
        }
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(|e| whole(format!("cannot read: {e}")))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(whole(format!("larger than {} MiB", MAX_FILE_BYTES >> 20)));
        }
        Self::parse(&text, &file)
    }

    /// Parses htpasswd text (named `file` in errors). Blank lines and `#` comments are skipped.
    pub fn parse(text: &str, file: &str) -> Result<Self, UsersError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let at = |message: String| UsersError {
                file: file.to_owned(),
                line: i + 1,
                message,
            };
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            // Errors never quote the hash (nor a plain-text password written by mistake).
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| at("not user:hash".into()))?;
            if user.is_empty() || user.chars().any(|c| c.is_control() || c == ' ') {
                return Err(at("the user name is empty or has spaces".into()));
            }
            let hash = Hash::parse(hash).map_err(|why| at(format!("user \"{user}\": {why}")))?;
            if users.insert(user.to_owned(), hash).is_some() {
                return Err(at(format!("user \"{user}\" is listed twice")));
            }
        }
        Ok(Self { users })
    }

    pub fn get(&self, user: &str) -> Option<&Hash> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// A hash of the file's most common scheme (the first user's, by name, among those of
    /// that scheme): what an unknown user's password is verified against, so that a wrong
    /// name takes as long as a wrong password.
    pub fn decoy(&self) -> Option<&Hash> {
        let kind = |h: &Hash| match h {
            Hash::Bcrypt(_) => 0,
            Hash::Apr1 { .. } => 1,
            Hash::ShaCrypt(h) if h.starts_with("$5$") => 2,
            Hash::ShaCrypt(_) => 3,
        };
        let mut counts = [0usize; 4];
        for h in self.users.values() {
            counts[kind(h)] += 1;
        }
        let common = (0..4).max_by_key(|k| counts[*k])?;
        self.users
            .iter()
            .filter(|(_, h)| kind(h) == common)
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(_, h)| h)
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Users of `self` that `newer` removed or whose hash it changed.
    pub fn changed_in<'a>(&'a self, newer: &'a Users) -> impl Iterator<Item = &'a str> + 'a {
        self.users
            .iter()
            .filter(|(u, h)| newer.users.get(*u) != Some(*h))
            .map(|(u, _)| u.as_str())
    }
}

/// Apache's MD5-crypt (`$apr1$`): the FreeBSD MD5-crypt algorithm with the magic `$apr1$`,
/// returning the 22-character digest in crypt's base-64 alphabet.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    use md5::{Digest, Md5};
    const MAGIC: &[u8] = b"$apr1$";
    let alternate = Md5::new()
        .chain_update(password)
        .chain_update(salt)
        .chain_update(password)
        .finalize();
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(MAGIC);
    ctx.update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alternate[..n]);
        left -= n;
    }
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut sum = ctx.finalize();
    for i in 0..1000 {
        let mut round = Md5::new();
        if i % 2 == 1 {
            round.update(password);
        } else {
            round.update(sum);
        }
        if i % 3 != 0 {
            round.update(salt);
        }
        if i % 7 != 0 {
            round.update(password);
        }
        if i % 2 == 1 {
            round.update(sum);
        } else {
            round.update(password);
        }
        sum = round.finalize();
    }
    const ALPHABET: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut push = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ALPHABET[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let b = |i: usize| u32::from(sum[i]);
    for (a, c, d) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        push((b(a) << 16) | (b(c) << 8) | b(d), 4);
    }
    push(b(11), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apr1_matches_openssl() {
        // `openssl passwd -apr1 -salt lZL6V/ci password` and `-salt RandSalt password`.
        assert_eq!(apr1(b"password", b"lZL6V/ci"), "eIMz/iKDkbtys/uU7LEK00");
        assert_eq!(apr1(b"password", b"RandSalt"), "PgCXHRrkpSt4cbyC2C6bm/");
        let h = Hash::parse("$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/").unwrap();
        assert!(h.verify("password"));
        assert!(!h.verify("Password"));
    }

    #[test]
    fn every_accepted_format_verifies() {
        // bcrypt via the crate (low cost to keep the test fast), SHA-crypt vectors from
        // `openssl passwd -5 -salt saltsalt secret` / `-6`.
        let b = bcrypt::hash_with_result("s3cret", 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        let h = Hash::parse(&b).unwrap();
        assert!(h.verify("s3cret") && !h.verify("s3cre"));
        let five = "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA";
        let six = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
        for h in [five, six] {
            let h = Hash::parse(h).unwrap();
            assert!(h.verify("secret"), "{h:?}");
            assert!(!h.verify("secreT"));
        }
    }

    #[test]
    fn bad_files_name_the_line_without_quoting_secrets() {
        let err = |text: &str| Users::parse(text, "u.htpasswd").unwrap_err();
        let e = err("# team\nalice:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\nbob:hunter2\n");
        assert_eq!((e.line, e.file.as_str()), (3, "u.htpasswd"));
        assert!(
            e.message.contains("not a password hash") && !e.message.contains("hunter2"),
            "{e}"
        );
        let e = err(
            "a:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\na:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\n",
        );
        assert!(e.line == 2 && e.message.contains("twice"), "{e}");
        let e = err("carol:$9$abc\n");
        assert!(e.message.contains("htpasswd -B"), "{e}");
        assert!(err("dave:$2y$05$short\n").message.contains("bcrypt"));
        assert!(err("just-a-name\n").message.contains("user:hash"));
        let ok = Users::parse(
            "\n# c\nalice:$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/\r\n",
            "u",
        )
        .unwrap();
        assert_eq!(ok.len(), 1);
    }

    #[test]
    fn changed_users_are_the_removed_and_the_rehashed() {
        let a = "$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/";
        let b = "$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00";
        let old = Users::parse(&format!("alice:{a}\nbob:{a}\ncarol:{a}\n"), "u").unwrap();
        let new = Users::parse(&format!("alice:{a}\nbob:{b}\n"), "u").unwrap();
        let mut changed: Vec<_> = old.changed_in(&new).collect();
        changed.sort_unstable();
        assert_eq!(changed, ["bob", "carol"]);
    }
}
