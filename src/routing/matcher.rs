//! Destination matchers: domain patterns, CIDRs, ports, users, and the NO_PROXY syntax.
//!
//! Domain patterns are matched label by label, never as free text: `*.example.com` matches
//! `a.example.com` and `a.b.example.com` but not `example.com` or `badexample.com`, and a `*`
//! inside a label (`api-*.example.com`) never crosses a dot. (globset's `*` crosses dots, which
//! is why this is written here.)

use std::net::IpAddr;

use ipnet::IpNet;

use crate::target::{Host, Target};

/// One domain pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    /// `example.com`: that name only.
    Exact(String),
    /// `*.example.com` (`.example.com` in NO_PROXY also matches the name itself).
    Suffix { suffix: String, include_self: bool },
    /// Labels with `*` / `?` wildcards that stay within their label.
    Glob(Vec<String>),
}

impl DomainPattern {
    /// Parses a pattern; `None` when it is empty or has characters a host name cannot have.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.*?".contains(&b))
                && !p.split('.').any(str::is_empty)
        };
        if let Some(suffix) = s.strip_prefix("*.") {
            return (valid(suffix) && !suffix.contains(['*', '?'])).then(|| Self::Suffix {
                suffix: suffix.to_owned(),
                include_self: false,
            });
        }
        if let Some(suffix) = s.strip_prefix('.') {
            return (valid(suffix) && !suffix.contains(['*', '?'])).then(|| Self::Suffix {
                suffix: suffix.to_owned(),
                include_self: true,
            });
        }
        if !valid(&s) {
            return None;
        }
        if s.contains(['*', '?']) {
            Some(Self::Glob(s.split('.').map(str::to_owned).collect()))
        } else {
            Some(Self::Exact(s))
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match self {
            Self::Exact(e) => name.eq_ignore_ascii_case(e),
            Self::Suffix {
                suffix,
                include_self,
            } => {
                let (n, s) = (name.len(), suffix.len());
                (*include_self && name.eq_ignore_ascii_case(suffix))
                    || (n > s + 1
                        && name.as_bytes()[n - s - 1] == b'.'
                        && name[n - s..].eq_ignore_ascii_case(suffix))
            }
            Self::Glob(labels) => {
                let parts: Vec<&str> = name.split('.').collect();
                parts.len() == labels.len()
                    && labels
                        .iter()
                        .zip(parts)
                        .all(|(p, l)| glob_label(p.as_bytes(), l.to_ascii_lowercase().as_bytes()))
            }
        }
    }
}

/// `*` (any run) and `?` (one character) within a single label. Iterative, with one backtrack
/// point: O(pattern x label) at worst. (The recursive form backtracks exponentially on patterns
/// like `a*a*a*...b`; cargo fuzz found that.)
fn glob_label(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry from there.
                Some((sp, ss)) => {
                    star = Some((sp, ss + 1));
                    pi = sp + 1;
                    si = ss + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// What a rule's `match` asks for. Every non-empty criterion must hold (AND); within one
/// criterion any entry may match (OR). An empty matcher matches everything.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub domains: Vec<DomainPattern>,
    pub cidrs: Vec<IpNet>,
    pub ports: Vec<u16>,
    pub users: Vec<String>,
}

impl Matcher {
    /// True when `target` (with the client's `user`, and the target's resolved addresses when
    /// the rule resolves names) satisfies this matcher. Domains and CIDRs together form one
    /// "destination" criterion: a name matches by pattern, an address by CIDR.
    pub fn matches(&self, target: &Target, user: Option<&str>, resolved: &[IpAddr]) -> bool {
        let destination = (self.domains.is_empty() && self.cidrs.is_empty())
            || match &target.host {
                Host::Name(n) => {
                    self.domains.iter().any(|d| d.matches(n))
                        || resolved.iter().any(|ip| self.in_cidrs(*ip))
                }
                Host::Ip(ip) => self.in_cidrs(*ip),
            };
        let port = self.ports.is_empty() || self.ports.contains(&target.port);
        let user = self.users.is_empty() || user.is_some_and(|u| self.users.iter().any(|x| x == u));
        destination && port && user
    }

    fn in_cidrs(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.cidrs.iter().any(|net| net.contains(&ip))
    }

    /// True when the matcher needs the target's addresses (it has CIDRs).
    pub fn wants_addresses(&self) -> bool {
        !self.cidrs.is_empty()
    }

    /// Whether only the destination is left to decide (the port and user criteria hold):
    /// resolving a name for this matcher can change its answer only then.
    pub fn needs_addresses_for(&self, target: &Target, user: Option<&str>) -> bool {
        self.wants_addresses()
            && matches!(target.host, Host::Name(_))
            && (self.ports.is_empty() || self.ports.contains(&target.port))
            && (self.users.is_empty() || user.is_some_and(|u| self.users.iter().any(|x| x == u)))
    }
}

/// Parses NO_PROXY syntax (`localhost,.internal,10.0.0.0/8`): names (a leading `.` or `*.`
/// also matches subdomains; a bare name matches itself and its subdomains, as curl does),
/// CIDRs and IP literals; `*` matches everything. `None` for an empty list. On error, returns
/// the entry that failed.
pub fn parse_no_proxy(s: &str) -> Result<Option<Matcher>, String> {
    let entries: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return Ok(None);
    }
    if entries.contains(&"*") {
        return Ok(Some(Matcher::default()));
    }
    let mut m = Matcher::default();
    for entry in entries {
        if let Ok(net) = entry.parse::<IpNet>() {
            m.cidrs.push(net);
        } else if let Ok(ip) = entry
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            m.cidrs.push(IpNet::from(ip));
        } else {
            let pattern = DomainPattern::parse(entry).ok_or_else(|| entry.to_owned())?;
            m.domains.push(match pattern {
                DomainPattern::Exact(name) => DomainPattern::Suffix {
                    suffix: name,
                    include_self: true,
                },
                other => other,
            });
        }
    }
    Ok(Some(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        let (h, p) = s.rsplit_once(':').unwrap();
        Target::new(h, p.parse().unwrap()).unwrap()
    }

    #[test]
    fn domain_patterns_respect_labels() {
        let suffix = DomainPattern::parse("*.onion").unwrap();
        assert!(suffix.matches("abc.onion") && suffix.matches("a.b.ONION"));
        assert!(!suffix.matches("onion") && !suffix.matches("xonion"));
        let exact = DomainPattern::parse("localhost").unwrap();
        assert!(exact.matches("localhost") && !exact.matches("a.localhost"));
        let glob = DomainPattern::parse("api-*.example.com").unwrap();
        assert!(glob.matches("api-eu.example.com"));
        assert!(
            !glob.matches("api-eu.x.example.com"),
            "* must not cross a dot"
        );
        assert!(DomainPattern::parse("bad domain").is_none());
        let q = DomainPattern::parse("a?c-*.example.com").unwrap();
        assert!(
            q.matches("abc-x.example.com")
                && q.matches("abc-.example.com")
                && !q.matches("ac-x.example.com")
        );
        // Found by cargo fuzz: many stars used to backtrack exponentially (this never finished).
        let stars = DomainPattern::parse(&format!("{}b.x", "*a".repeat(40))).unwrap();
        assert!(!stars.matches(&format!("{}.x", "a".repeat(60))));
        assert!(stars.matches(&format!("{}b.x", "a".repeat(60))));
        assert!(DomainPattern::parse("a..b").is_none());
    }

    #[test]
    fn matcher_ands_criteria() {
        let m = Matcher {
            domains: vec![DomainPattern::parse("*.internal").unwrap()],
            cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            ports: vec![443],
            ..Default::default()
        };
        assert!(m.matches(&t("db.internal:443"), None, &[]));
        assert!(m.matches(&t("10.1.2.3:443"), None, &[]));
        assert!(!m.matches(&t("10.1.2.3:80"), None, &[]));
        assert!(!m.matches(&t("example.com:443"), None, &[]));
        assert!(
            m.matches(&t("example.com:443"), None, &["10.9.9.9".parse().unwrap()]),
            "resolved address"
        );
        let users = Matcher {
            users: vec!["alice".into()],
            ..Default::default()
        };
        assert!(users.matches(&t("x.com:1"), Some("alice"), &[]));
        assert!(
            !users.matches(&t("x.com:1"), Some("bob"), &[])
                && !users.matches(&t("x.com:1"), None, &[])
        );
        assert!(Matcher::default().matches(&t("x.com:1"), None, &[]));
    }

    #[test]
    fn no_proxy_syntax() {
        let m = parse_no_proxy("localhost, .internal,10.0.0.0/8, 192.0.2.1,[::1]")
            .unwrap()
            .unwrap();
        for yes in [
            "localhost:80",
            "a.localhost:80",
            "internal:1",
            "x.internal:1",
            "10.2.3.4:5",
            "192.0.2.1:1",
            "[::1]:1",
        ] {
            assert!(m.matches(&t(yes), None, &[]), "{yes}");
        }
        for no in ["example.com:80", "192.0.2.2:1", "xinternal:1"] {
            assert!(!m.matches(&t(no), None, &[]), "{no}");
        }
        assert!(
            parse_no_proxy("*")
                .unwrap()
                .unwrap()
                .matches(&t("anything.example:1"), None, &[])
        );
        assert!(parse_no_proxy(" , ").unwrap().is_none());
        assert_eq!(parse_no_proxy("ok.com,bad name").unwrap_err(), "bad name");
    }
}
