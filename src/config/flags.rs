//! The command line of `viaduct` (run): the flags that shape tables (upstreams, bypass, bind,
//! users, clients, the TLS listener's files) written here, and every plain setting's flag
//! from `settings` (flattened in). `main` parses it; `runtime::merge` puts it over the file.

use std::path::PathBuf;

use super::settings::{LimitsFlags, SettingsFlags};
use crate::server::Listen;

/// What the command line (or the environment) sets; each `None` / empty: not given, the file
/// or the default applies.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunFlags {
    /// TOML configuration file (see examples/viaduct.toml). Flags override it. SIGHUP re-reads
    /// it.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,

    /// Address to accept clients on, [KIND://]HOST:PORT; repeatable. Default 127.0.0.1:8083
    /// (loopback: pass 0.0.0.0:PORT deliberately).
    #[arg(long, env = "VIADUCT_LISTEN", value_parser = parse_listen)]
    pub listen: Vec<Listen>,

    /// Send everything through this upstream proxy, or a chain of them separated by commas
    /// (first to last): http://, https://, socks5://, socks5h://, socks4a://, each
    /// [user:pass@]host[:port]. Percent-encode special characters (and commas) in credentials.
    /// Repeat it to make a pool of upstreams (see --strategy). Overrides the file's routing.
    /// VIADUCT_UPSTREAM carries one such value (a hop or a chain), keeping passwords out of
    /// the process list.
    // Parsed after clap, not by a value_parser: clap echoes a rejected value in its error, and
    // this one may carry a password (hence also no env value in --help).
    #[arg(long, env = "VIADUCT_UPSTREAM", hide_env_values = true)]
    pub upstream: Vec<String>,

    /// How --upstream's HTTP proxies are authenticated to: any (the strongest the proxy
    /// offers: Negotiate, NTLM, Basic), or one of basic, ntlm, negotiate (a proxy that does not
    /// offer it is an error, never a downgrade). NTLM takes user:pass from the URL (write the
    /// domain as DOMAIN%5Cuser); Negotiate uses the Kerberos ticket cache (kinit).
    #[arg(long, value_name = "SCHEME")]
    pub upstream_auth: Option<String>,

    /// How a pool made of repeated --upstream picks: failover, round-robin, random,
    /// least-connections, sticky.
    #[arg(long)]
    pub strategy: Option<String>,

    /// Hosts that always go direct, in NO_PROXY syntax: "localhost,.internal,10.0.0.0/8".
    #[arg(long)]
    pub bypass: Option<String>,

    /// Where direct connections (or those to the first upstream) of the default route leave
    /// from: an address, or a prefix (IPv4 or IPv6) to pick one from per session. The prefix
    /// need only be routed to this host (IP_FREEBIND).
    #[arg(long, value_name = "ADDR|CIDR")]
    pub bind: Option<String>,

    /// With a --bind prefix: `sticky` (one address per session, or per client without a
    /// -session-ID suffix) or `random` (a fresh address per connection unless the client
    /// names a session).
    #[arg(long, value_name = "MODE")]
    pub bind_mode: Option<String>,

    /// Users file (htpasswd: htpasswd -B / -m, openssl passwd -apr1 / -5 / -6): clients must
    /// send Proxy-Authorization: Basic with one of its users. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,

    /// Only these client addresses may connect: CIDR[,CIDR...]; others get 403.
    #[arg(long, value_name = "CIDRS")]
    pub allow_clients: Option<String>,

    /// Certificate chain (PEM, leaf first) for https:// listeners; re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) for https:// listeners; re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    #[command(flatten)]
    pub settings: SettingsFlags,

    #[command(flatten)]
    pub limits: LimitsFlags,
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    s.parse()
}

impl RunFlags {
    /// Every plain setting's flag shaped and its default shown in `--help`.
    pub fn annotate(cmd: clap::Command) -> clap::Command {
        LimitsFlags::annotate(SettingsFlags::annotate(cmd))
    }
}

/// Flags parsed alone (tests, and `viaduct probe`'s own reading of them).
#[derive(Debug, clap::Parser)]
#[command(name = "viaduct")]
pub struct FlagsOnly {
    #[command(flatten)]
    pub flags: RunFlags,
}

impl RunFlags {
    /// Parses `args` (without the program name) as the command line would.
    ///
    /// # Errors
    /// clap's error for an unknown flag or a bad value.
    pub fn parse_args<I, S>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let argv = std::iter::once(std::ffi::OsString::from("viaduct"))
            .chain(args.into_iter().map(Into::into));
        let matches = Self::annotate(FlagsOnly::command()).try_get_matches_from(argv)?;
        FlagsOnly::from_arg_matches(&matches).map(|f| f.flags)
    }
}
