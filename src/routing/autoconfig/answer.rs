//! A `FindProxyForURL` answer (`"PROXY a:8080; SOCKS5 b:1080; DIRECT"`) as the routes to try,
//! in order. Entry kinds follow Chromium: `PROXY`/`HTTP` (an HTTP proxy), `HTTPS` (an HTTP
//! proxy over TLS), `SOCKS`/`SOCKS4` (SOCKS4a), `SOCKS5` (SOCKS5, names resolved by the proxy),
//! `DIRECT`. Unknown or malformed entries are skipped, as browsers do; an answer with no
//! usable entry is an error.

use crate::target::Target;

/// One entry of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Entry {
    Direct,
    /// `scheme` is the upstream URL scheme it stands for (`http`, `https`, `socks4a`,
    /// `socks5h`), `addr` the proxy.
    Proxy {
        scheme: &'static str,
        addr: Target,
    },
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Direct => f.write_str("direct"),
            Entry::Proxy { scheme, addr } => {
                let kind = match *scheme {
                    "socks5h" => "socks5",
                    "socks4a" => "socks4a",
                    s => s,
                };
                write!(f, "{kind} proxy {addr}")
            }
        }
    }
}

/// Why an answer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "FindProxyForURL answered {answer:?}: no entry viaduct can use (PROXY, HTTPS, SOCKS, SOCKS4, SOCKS5 host:port, or DIRECT)"
)]
pub struct Unusable {
    pub answer: String,
}

/// Parses an answer into its usable entries, in order, without duplicates.
pub fn parse(answer: &str) -> Result<Vec<Entry>, Unusable> {
    let mut out: Vec<Entry> = Vec::new();
    for part in answer.split(';') {
        let mut words = part.split_whitespace();
        let Some(kind) = words.next() else {
            continue;
        };
        let entry = match kind.to_ascii_uppercase().as_str() {
            "DIRECT" => Some(Entry::Direct),
            k => {
                let scheme = match k {
                    "PROXY" | "HTTP" => Some("http"),
                    "HTTPS" => Some("https"),
                    "SOCKS" | "SOCKS4" => Some("socks4a"),
                    "SOCKS5" => Some("socks5h"),
                    _ => None,
                };
                let addr = words.next().and_then(|hp| {
                    let (host, port) = hp.rsplit_once(':')?;
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    Target::new(host, port.parse().ok()?).ok()
                });
                scheme
                    .zip(addr)
                    .map(|(scheme, addr)| Entry::Proxy { scheme, addr })
            }
        };
        if let Some(e) = entry
            && !out.contains(&e)
        {
            out.push(e);
        }
    }
    if out.is_empty() {
        return Err(Unusable {
            answer: answer.chars().take(200).collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(scheme: &'static str, hp: &str) -> Entry {
        let (h, p) = hp.rsplit_once(':').unwrap();
        Entry::Proxy {
            scheme,
            addr: Target::new(h, p.parse().unwrap()).unwrap(),
        }
    }

    #[test]
    fn entry_kinds_follow_chromium() {
        assert_eq!(
            parse(
                "PROXY a.corp:8080; HTTPS b.corp:443;SOCKS c:1080; SOCKS4 d:1; SOCKS5 e:2;  DIRECT"
            )
            .unwrap(),
            vec![
                proxy("http", "a.corp:8080"),
                proxy("https", "b.corp:443"),
                proxy("socks4a", "c:1080"),
                proxy("socks4a", "d:1"),
                proxy("socks5h", "e:2"),
                Entry::Direct,
            ]
        );
        assert_eq!(parse("direct").unwrap(), vec![Entry::Direct]);
        assert_eq!(
            parse("HTTP [::1]:3128").unwrap(),
            vec![proxy("http", "::1:3128")]
        );
    }

    #[test]
    fn skips_what_it_cannot_use() {
        // No port, an unknown kind, duplicates: skipped, the rest kept.
        assert_eq!(
            parse("PROXY nohost; QUIC q:443; PROXY a:1; PROXY a:1; DIRECT").unwrap(),
            vec![proxy("http", "a:1"), Entry::Direct]
        );
        assert!(parse("").is_err());
        assert!(parse("BLAH x:1").is_err());
        assert!(parse("PROXY a:99999").is_err());
    }
}
