//! Every plain setting, defined once: its doc, its type and its default. From that one line
//! `settings!` makes the field of the running configuration, the key of the file (read with its
//! line and column), the `--flag` that overrides it (its `--help` shows the default), and the
//! row the reference docs must carry (checked by a test).
//!
//! Adding a setting: one line below with its doc and default, one line where it is used, and
//! its row in `docs/configuration.md` (the test prints the row it expects).
//!
//! What is not a plain value lives in tables built by `config::tables`: upstreams, pools,
//! rules, `[auth]`, `[access]`, `[tls]`; their flags (`--upstream`, `--auth-file`, ...) are in
//! `config::flags`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::tables::{RawAccess, RawAuth, RawDefault, RawPool, RawRule, RawTls};
use super::value::{Bandwidth, List, Maybe, PerPeriod, Setting};
use crate::session::access_log::Format;

/// A setting as the reference docs list it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The file's key, with its table (`limits.max_headers`).
    pub key: String,
    /// The flag (`--max-headers`).
    pub flag: String,
    /// The default, as the file and the flag write it.
    pub default: String,
    pub doc: &'static str,
}

/// Defines a settings struct (`$name`), its file model (`$file`: the settings, absent ones at
/// their default, plus the raw `tables`) and its flags (`$flags`: each setting as an optional
/// `--flag`).
macro_rules! settings {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident / $file:ident / $flags:ident in $section:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $default:expr;
            )*
        }
        tables {
            $( $(#[doc = $tdoc:literal])* $tfield:ident : $tty:ty; )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $name {
            /// The file's tables at this level (not plain settings), for the reference docs.
            pub const TABLES: &'static [&'static str] = &[$( stringify!($tfield), )*];

            /// Each setting: key, flag, default and doc, for the reference docs.
            pub fn reference() -> Vec<Entry> {
                let d = Self::default();
                vec![$(
                    Entry {
                        key: format!("{}{}", $section, stringify!($field)),
                        flag: format!("--{}", stringify!($field).replace('_', "-")),
                        default: Setting::show(&d.$field),
                        doc: concat!($($doc, "\n"),*),
                    },
                )*]
            }
        }

        /// The file's model of this table: settings at their defaults unless written, and
        /// the tables `config::tables` builds.
        #[derive(Debug, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $file {
            $(
                #[serde(deserialize_with = "crate::config::value::de")]
                pub $field: $ty,
            )*
            $( $(#[doc = $tdoc])* pub $tfield: $tty, )*
        }

        impl Default for $file {
            fn default() -> Self {
                let d = $name::default();
                Self { $( $field: d.$field, )* $( $tfield: Default::default(), )* }
            }
        }

        impl $file {
            /// The settings it holds.
            pub fn settings(&self) -> $name {
                $name { $( $field: self.$field.clone(), )* }
            }
        }

        /// The settings as flags: each `None` unless given.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct $flags {
            $(
                $(#[doc = $doc])*
                #[arg(long, value_parser = crate::config::value::flag::<$ty>)]
                pub $field: Option<$ty>,
            )*
        }

        impl $flags {
            /// Puts every given flag over `s`.
            pub fn apply(&self, s: &mut $name) {
                $( if let Some(v) = &self.$field { s.$field = v.clone(); } )*
            }

            /// Gives each flag its shape (see [`Setting::arg`]) and shows its default in
            /// `--help`.
            pub fn annotate(mut cmd: clap::Command) -> clap::Command {
                let d = $name::default();
                $(
                    let shown = Setting::show(&d.$field);
                    cmd = cmd.mut_arg(stringify!($field), |a| {
                        let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                        <$ty as Setting>::arg(a).help(format!("{help} [default: {shown}]"))
                    });
                )*
                cmd
            }
        }
    };
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// This host's loopback, the default balancer for the PROXY protocol (a sidecar).
fn loopback() -> Vec<IpNet> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    vec![
        IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    ]
}

settings! {
    /// The file's top-level settings.
    pub struct Settings / FileModel / SettingsFlags in "" {
        /// Bound on reaching a target: DNS, TCP and every upstream hop's handshake together
        /// (for a pool: all attempts together). Past it: 504.
        connect_timeout: Duration = secs(10);
        /// A tunnel with no bytes in either direction for this long is closed.
        idle_timeout: Duration = secs(600);
        /// A forwarded plain request whose response head does not arrive within this gets 504
        /// (nginx's proxy_read_timeout).
        response_timeout: Duration = secs(60);
        /// Our name in Via and Proxy-Status headers; a request whose Via already has it is a
        /// loop (508). Give chained viaducts different names.
        via_name: String = "viaduct".to_owned();
        /// On SIGINT/SIGTERM, how long open requests and tunnels may finish before they are
        /// cut.
        shutdown_grace: Duration = secs(5);
        /// Listening beyond loopback with neither [auth] nor allowed clients: an open proxy,
        /// meant.
        open: bool = false;
        /// Access records: text (a log line on stderr), json (one object per line), off.
        access_log: Format = Format::Text;
        /// Write JSON access records to this file (reopened on SIGHUP) instead of stdout.
        access_log_file: Maybe<PathBuf> = None;
        /// The admin listener (HOST:PORT): /metrics, /healthz, /readyz, /status,
        /// /status.json, /proxy.pac. Beyond loopback it needs admin_token or admin_allow.
        admin: Maybe<SocketAddr> = None;
        /// Client addresses (CIDRs) that may use the admin listener (none: any that reaches
        /// it).
        admin_allow: List<IpNet> = Vec::new();
        /// The host:port the served PAC file tells clients to use (off: the first listener).
        pac_proxy: Maybe<String> = None;
        /// Serve /proxy.pac without the admin token (browsers cannot send one); admin_allow
        /// still applies, and every other admin page keeps needing the token.
        pac_public: bool = false;
        /// Route what no rule matches by a proxy auto-config script: PATH, http(s)://URL,
        /// "system" (the desktop's setting) or "auto" (WPAD). Re-read on SIGHUP.
        pac: Maybe<String> = None;
        /// How often a PAC URL is fetched again.
        pac_refresh: Duration = crate::routing::autoconfig::DEFAULT_REFRESH;
        /// Listeners expect a PROXY protocol (v1/v2) header from a load balancer.
        proxy_protocol: bool = false;
        /// The balancers (CIDRs) whose PROXY headers are believed.
        proxy_protocol_from: List<IpNet> = loopback();
        /// Extra CA certificates (PEM files) trusted for https:// upstreams and PAC URLs,
        /// besides the webpki roots.
        upstream_ca: List<PathBuf> = Vec::new();
        /// Do not verify https:// upstreams' certificates. Only for throwaway test setups.
        upstream_insecure: bool = false;
    }
    tables {
        listen: Vec<Spanned<String>>;
        bypass: Option<Spanned<String>>;
        /// Each a URL (one hop or a comma chain), or a table `{ via, bind, bind_mode,
        /// sticky_ttl, auth, spn }`.
        upstreams: BTreeMap<String, Spanned<toml::Value>>;
        pools: BTreeMap<String, RawPool>;
        rules: Vec<RawRule>;
        default: Option<RawDefault>;
        limits: LimitsFile;
        auth: Option<RawAuth>;
        access: Option<RawAccess>;
        admin_token: Option<Spanned<String>>;
        pac_credentials: BTreeMap<String, Spanned<String>>;
        tls: Option<RawTls>;
    }
}

settings! {
    /// What one client may cost: the `[limits]` table. Defaults suit a proxy on a
    /// workstation or a small server.
    pub struct Limits / LimitsFile / LimitsFlags in "limits." {
        /// Largest request head accepted (bytes); past it: 431 and the connection is closed.
        max_header_bytes: usize = 64 * 1024;
        /// Most header fields in a request head; past it: 431.
        max_headers: usize = 100;
        /// A request head must arrive within this (slowloris); else 408 and close. Also
        /// closes idle keep-alive client connections, and bounds a PROXY protocol header.
        header_read_timeout: Duration = secs(10);
        /// Open client connections (and tunnels) at most; more are answered 503 and closed.
        max_connections: usize = 10_000;
        /// Open client connections per client IP at most (0: no limit).
        max_connections_per_ip: usize = 0;
        /// A forwarded request body that sends nothing for this long: 408, and the origin
        /// connection is freed.
        request_body_timeout: Duration = secs(30);
        /// How long a request body may take before request_body_min_rate applies.
        request_body_grace: Duration = secs(20);
        /// After request_body_grace a request body must average this many bytes/s, else 408
        /// (0: off; Apache mod_reqtimeout's defaults).
        request_body_min_rate: u64 = 500;
        /// Kept-alive upstream connections held idle in all, at most (the oldest are closed
        /// first; 0 keeps none).
        max_idle_upstream: usize = 256;
        /// An idle kept-alive upstream connection is closed after this.
        upstream_idle_timeout: Duration = secs(90);
        /// HTTP/2: streams (requests and tunnels) open at once on one client connection.
        max_concurrent_streams: u32 = 100;
        /// A SOCKS5 UDP association with no datagram either way for this long is closed (the
        /// 2 minutes NATs keep a UDP mapping, RFC 4787).
        udp_idle_timeout: Duration = secs(120);
        /// Bytes per second each way, shared by all flows of one authenticated user
        /// (10MB/s, 512KiB/s, 100Mbit/s). Reloadable.
        bandwidth_per_user: Maybe<Bandwidth> = None;
        /// Bytes per second each way, shared by all flows from one client address.
        /// Reloadable.
        bandwidth_per_ip: Maybe<Bandwidth> = None;
        /// Users with their own rate: user=RATE or user=unlimited (file: the
        /// [limits.user_bandwidth] table).
        user_bandwidth: HashMap<String, Maybe<Bandwidth>> = HashMap::new();
        /// New connections per client address (50/s, 600/m), with a burst of that count;
        /// past it, 429 with Retry-After.
        new_connections_per_ip: Maybe<PerPeriod> = None;
    }
    tables {}
}

impl Limits {
    /// `(grace, bytes per second)` a request body must keep up; `None`: no rate bound.
    pub fn request_body_min_rate(&self) -> Option<(Duration, u64)> {
        (self.request_body_min_rate > 0)
            .then_some((self.request_body_grace, self.request_body_min_rate))
    }
}

/// Every plain setting, the top level's then `[limits]`'.
pub fn reference() -> Vec<Entry> {
    let mut all = Settings::reference();
    all.extend(Limits::reference());
    all
}

/// The reference docs' row for `e` (what `docs/configuration.md` must carry).
pub fn doc_row(e: &Entry) -> String {
    let doc = e.doc.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("| `{}` | `{}` | `{}` | {} |", e.key, e.flag, e.default, doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &str = include_str!("../../docs/configuration.md");

    /// Every setting has its row in the reference, with the default the code has; every flag
    /// of `--help` and every table of the file is documented there. On a miss, the rows the
    /// docs need are printed (paste them).
    #[test]
    fn reference_docs_match_the_code() {
        let rows: Vec<&str> = DOCS.lines().filter(|l| l.starts_with("| `")).collect();
        let mut missing = Vec::new();
        for e in reference() {
            let key = format!("| `{}` | `{}` | `{}` |", e.key, e.flag, e.default);
            if !rows.iter().any(|r| r.starts_with(&key)) {
                missing.push(doc_row(&e));
            }
        }
        assert!(
            missing.is_empty(),
            "docs/configuration.md lacks (or has another default for):\n{}",
            missing.join("\n")
        );
        let cmd = crate::cli::Cli::full_command();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            assert!(
                DOCS.contains(&format!("`--{long}")),
                "docs/configuration.md does not document --{long}"
            );
        }
        for table in Settings::TABLES {
            assert!(
                ["`{t}`", "`[{t}", "`[[{t}"]
                    .iter()
                    .any(|f| DOCS.contains(&f.replace("{t}", table))),
                "docs/configuration.md does not document `{table}`"
            );
        }
        // Every documented key is one the code has: no row outlives its setting.
        let keys: Vec<String> = reference().iter().map(|e| e.key.clone()).collect();
        for row in rows.iter().filter(|r| r.contains("` | `--")) {
            let key = row
                .trim_start_matches("| `")
                .split('`')
                .next()
                .unwrap_or("");
            assert!(
                keys.iter().any(|k| k == key),
                "documented but not a setting: {key}"
            );
        }
    }

    /// `--help` shows each setting's default, from the same definition.
    #[test]
    fn help_shows_the_defaults() {
        let help = crate::cli::Cli::full_command()
            .render_long_help()
            .to_string();
        for e in reference() {
            let at = help
                .find(&format!("{} <", e.flag))
                .or_else(|| help.find(&format!("{}[=", e.flag)))
                .unwrap_or_else(|| panic!("{} not in --help", e.flag));
            let next = help[at..].find("[default: ").map(|i| at + i);
            let shown = next
                .map(|i| &help[i + 10..])
                .and_then(|t| t.split(']').next());
            assert_eq!(shown, Some(e.default.as_str()), "{}", e.flag);
        }
    }
}
