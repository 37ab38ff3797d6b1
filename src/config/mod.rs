//! The configuration: the file (TOML), the flags and the defaults, merged into what a running
//! viaduct uses.
//!
//! - `settings`: every plain setting, defined once (doc, type, default), as a field, a file key
//!   and a flag;
//! - `value`: how a setting's value is read and shown;
//! - `tables`: the file's tables (upstreams, pools, rules, access, auth), one function each;
//! - `flags`: the command line;
//! - `runtime`: the merge (defaults, then the file, then the flags) into [`Config`].
//!
//! Every file error names the file, line, column and field (`viaduct.toml:14:12:
//! pools.res.strategy: unknown strategy "fastest"`), and is found before any port is bound.
//! Unknown fields are errors, not silently ignored.

pub mod flags;
pub mod runtime;
pub mod settings;
pub mod tables;
pub mod value;

pub use self::flags::RunFlags;
pub use self::runtime::{Config, LoadError};
pub use self::settings::{Limits, Settings};
pub use self::tables::{DEFAULT_BIND_TTL, bind_action};

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use self::settings::FileModel;
use crate::routing::Router;
use crate::server::Listen;
use crate::target::Target;
use crate::upstream::redact;
use std::time::Duration;

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// What a configuration file sets.
#[derive(Debug)]
pub struct FileConfig {
    /// The file held nothing but white space and comments. A reload refuses such a file: a
    /// truncated config must not fail open to "everything direct".
    pub empty: bool,
    /// The plain settings: the file's values, the defaults for the rest.
    pub settings: Settings,
    pub limits: Limits,
    /// `listen`; empty: not set.
    pub listen: Vec<Listen>,
    /// `[auth]`: the users file is read when the configuration is put together (see
    /// `runtime::merge`), so that a flag can name another.
    pub auth: Option<FileAuth>,
    pub access: FileAccess,
    /// `admin_token`, `${NAME}` expanded.
    pub admin_token: Option<String>,
    /// `[pac_credentials] "host:port" = "user:pass"` (URL userinfo form, `${NAME}` expanded).
    pub pac_credentials: HashMap<String, String>,
    /// `[tls] cert`, `key`: the `https://` listeners' certificate chain and key, relative
    /// paths taken from the config file's directory.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub router: Router,
}

/// No file: every setting at its default, routing direct.
impl Default for FileConfig {
    fn default() -> Self {
        Self {
            empty: true,
            settings: Settings::default(),
            limits: Limits::default(),
            listen: Vec::new(),
            auth: None,
            access: FileAccess::default(),
            admin_token: None,
            pac_credentials: HashMap::new(),
            tls_cert: None,
            tls_key: None,
            router: Router::direct(),
        }
    }
}

/// The `[auth]` table.
#[derive(Debug, Default, Clone)]
pub struct FileAuth {
    /// The users file, relative paths taken from the configuration file's directory.
    pub file: Option<PathBuf>,
    pub realm: Option<String>,
    pub max_connections_per_user: Option<usize>,
    pub max_failures: Option<u32>,
    pub lockout: Option<Duration>,
}

/// The `[access]` table.
#[derive(Debug, Default, Clone)]
pub struct FileAccess {
    /// `None`: not set (a flag or "anyone" applies).
    pub clients: Option<Vec<IpNet>>,
    pub deny: Vec<IpNet>,
    pub allow: Vec<IpNet>,
    pub connect_ports: Vec<u16>,
}

// === loading ===

/// The largest configuration file read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads and validates `path`: a regular file (a FIFO or a device could block or never end) of
/// at most [`MAX_FILE_BYTES`]. Blocking I/O: call it off the async runtime.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    use std::io::Read;
    let file = path.display().to_string();
    let fail = |message: String| ConfigError {
        file: file.clone(),
        line: 0,
        column: 0,
        field: "-".into(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(fail(format!("larger than {} KiB", MAX_FILE_BYTES / 1024)));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(fail(format!("larger than {} KiB", MAX_FILE_BYTES / 1024)));
    }
    parse(&text, &file)
}

/// Validates `text` (named `file` in errors).
pub fn parse(text: &str, file: &str) -> Result<FileConfig, ConfigError> {
    let at = Locator { text, file };
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        at.error(span, "-", e.message().trim())
    })?;
    // The path to the failing field comes from the deserializer's walk, not from the text of
    // toml's message; the span is toml's (the value's own, for a bad value).
    let model: FileModel = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = field_path(e.path());
        let e = e.into_inner();
        at.error(e.span().unwrap_or(0..0), &field, e.message().trim())
    })?;
    let empty = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    let mut cfg = build(&model, &at)?;
    cfg.empty = empty;
    Ok(cfg)
}

/// `rules[1].via`: a path as the other errors name fields (lists count from 1).
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{}]", index + 1)),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                out.push('.');
                out.push_str(variant);
            }
            Segment::Unknown => {}
        }
    }
    if out.is_empty() { "-".to_owned() } else { out }
}

/// The file's model, validated and built table by table.
fn build(m: &FileModel, at: &Locator) -> Result<FileConfig, ConfigError> {
    let upstreams = tables::upstreams(&m.upstreams, at)?;
    let pools = tables::pools(&m.pools, &upstreams, at)?;
    let vias = tables::Vias { upstreams, pools };
    let router = Router {
        pac: None,
        bypass: tables::bypass(m.bypass.as_ref(), at)?,
        rules: tables::rules(&m.rules, &vias, at)?,
        default: tables::default_action(m.default.as_ref(), &vias, at)?,
    };
    let mut settings = m.settings();
    // A PAC path is taken from the file's directory, as every path the file names.
    if let Some(pac) = &mut settings.pac
        && !(pac.starts_with("http://") || pac.starts_with("https://"))
        && !matches!(pac.as_str(), "system" | "auto")
    {
        *pac = beside(at.file, Path::new(pac.as_str()))
            .display()
            .to_string();
    }
    let (tls_cert, tls_key) = tables::tls_files(m.tls.as_ref(), at);
    Ok(FileConfig {
        empty: false,
        settings,
        limits: m.limits.settings(),
        listen: tables::listen(&m.listen, at)?,
        auth: tables::auth(m.auth.as_ref(), at)?,
        access: tables::access(m.access.as_ref(), at)?,
        admin_token: m
            .admin_token
            .as_ref()
            .map(|t| tables::secret(at, "admin_token", t))
            .transpose()?,
        pac_credentials: m
            .pac_credentials
            .iter()
            .map(|(k, v)| {
                tables::secret(at, &format!("pac_credentials.\"{k}\""), v).map(|c| (k.clone(), c))
            })
            .collect::<Result<_, _>>()?,
        tls_cert,
        tls_key,
        router,
    })
}

pub struct Locator<'a> {
    text: &'a str,
    pub file: &'a str,
}

impl Locator<'_> {
    pub fn error(
        &self,
        span: Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        // Messages quote the file (a key, a value, a whole line): never its credentials.
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            field: redact(field),
            message: redact(&message.into()),
        }
    }
}
/// `path` as written in `file`: relative paths are taken from the file's directory.
fn beside(file: &str, path: &Path) -> PathBuf {
    match Path::new(file).parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// Parses a CIDR; a bare address is its own /32 or /128.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.trim()
        .parse::<IpNet>()
        .or_else(|_| s.trim().parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("not a CIDR or an address: \"{s}\""))
}

/// Replaces each `${NAME}` in `s` with the environment variable `NAME`, so that secrets can
/// stay out of the file (and out of `ps`). A missing variable is an error naming it.
pub fn expand_env(s: &str) -> Result<String, String> {
    expand_with(s, |name| std::env::var(name).ok())
}

fn expand_with(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    expand_parts(s, &lookup, &|_| false).map(|(out, _)| out)
}

/// Replaces each `${NAME}` of `s`; `encode(at)` says whether the variable at byte `at` of `s`
/// stands in a URL's userinfo, where its value is percent-encoded (a secret store hands out
/// raw passwords: `p@ss:w/rd%` must stay one password). Returns the text and what was
/// substituted, by name.
fn expand_parts(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    encode: &dyn Fn(usize) -> bool,
) -> Result<(String, Vec<(String, String)>), String> {
    const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let mut out = String::with_capacity(s.len());
    let mut substituted = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let at = s.len() - rest.len() + start;
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "\"${\" without a closing \"}\"".to_owned())?;
        let name = &after[..end];
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "\"${{{name}}}\" is not an environment variable name"
            ));
        }
        let value =
            lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        let written = if encode(at) {
            percent_encoding::utf8_percent_encode(&value, USERINFO).to_string()
        } else {
            value.clone()
        };
        out.push_str(&written);
        substituted.push((name.to_owned(), written));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, substituted))
}

/// An upstream URL (one hop or a comma chain) with `${NAME}` read from the environment:
/// values in a hop's userinfo are percent-encoded; anything else is substituted as written.
/// `parse` checks the result; an error it reports names the variables, never their values.
pub fn expand_url<T, E: std::fmt::Display>(
    url: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<T, String> {
    expand_url_with(url, &|name| std::env::var(name).ok(), parse)
}

fn expand_url_with<T, E: std::fmt::Display>(
    url: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<T, String> {
    // Where each hop's userinfo lies in the template: after `://`, before the authority's
    // last `@` (a `${NAME}` holds no `@`, so the template shows the real one).
    let mut userinfo: Vec<Range<usize>> = Vec::new();
    let mut offset = 0;
    for hop in url.split(',') {
        if let Some(scheme_end) = hop.find("://") {
            let authority_start = scheme_end + 3;
            let authority_len = hop[authority_start..]
                .find(['/', '?', '#'])
                .unwrap_or(hop.len() - authority_start);
            if let Some(at) = hop[authority_start..authority_start + authority_len].rfind('@') {
                userinfo.push(offset + authority_start..offset + authority_start + at);
            }
        }
        offset += hop.len() + 1;
    }
    let (expanded, substituted) =
        expand_parts(url, lookup, &|at| userinfo.iter().any(|r| r.contains(&at)))?;
    parse(&expanded).map_err(|e| {
        let mut message = e.to_string();
        for (name, value) in &substituted {
            if !value.is_empty() {
                message = message.replace(value.as_str(), &format!("${{{name}}}"));
            }
        }
        if !substituted.is_empty() {
            let names: Vec<String> = substituted
                .iter()
                .map(|(name, _)| format!("${{{name}}}"))
                .collect();
            message.push_str(&format!(" (with {} substituted)", names.join(", ")));
        }
        message
    })
}

/// The destination a URL (`http://h/p`, `https://h`, or a bare `host:port`) would be routed
/// to: the scheme's default port when none is written. For `viaduct route`.
pub fn target_of_url(url: &str) -> Result<Target, String> {
    let authority = match url.split_once("://") {
        Some((scheme, rest)) => {
            let host_port = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, hp)| hp);
            let default_port = if scheme.eq_ignore_ascii_case("https") {
                443
            } else {
                80
            };
            let has_port = host_port.rsplit_once(':').is_some_and(|(h, p)| {
                !h.ends_with(':')
                    && p.parse::<u16>().is_ok()
                    && (!h.starts_with('[') || h.ends_with(']'))
            });
            if has_port {
                host_port.to_owned()
            } else {
                format!("{host_port}:{default_port}")
            }
        }
        None => url.to_owned(),
    };
    parse_target(&authority)
}

/// Parses `host:port` (with `[v6]`).
pub fn parse_target(s: &str) -> Result<Target, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{s}\" is not host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("\"{s}\" has an invalid port"))?;
    Target::new(host, port).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
