//! Property tests for every parser we wrote: no panic on any input, bounded work, and
//! round-trips where they exist. (The cargo-fuzz targets in fuzz/ explore the same functions
//! for longer.)

use proptest::prelude::*;
use viaduct::routing::{DomainPattern, parse_no_proxy};
use viaduct::target::Target;
use viaduct::upstream::http_connect::parse_head;
use viaduct::upstream::{Hop, Route};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any request-target: a Target or a clean error; an accepted one prints and re-parses to
    /// itself.
    #[test]
    fn connect_target_round_trips(s in "\\PC{0,40}|[a-z0-9.\\[\\]:-]{1,30}") {
        if let Ok(uri) = s.parse::<http::Uri>()
            && let Ok(t) = Target::from_connect_uri(&uri)
        {
            let again: http::Uri = t.to_string().parse().unwrap();
            prop_assert_eq!(Target::from_connect_uri(&again).unwrap(), t);
        }
    }

    /// Any bytes as an upstream's answer: complete, partial or an error, never a panic, and a
    /// complete head never claims more bytes than it was given.
    #[test]
    fn upstream_head_parser_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(Some((len, _))) = parse_head(&bytes, "p") {
            prop_assert!(len <= bytes.len());
        }
    }

    /// Heads that look like HTTP: the status we parse is the one written.
    #[test]
    fn upstream_status_is_read_exactly(code in 100u16..600, reason in "[A-Za-z ]{0,20}", extra in "[a-z]{0,8}") {
        let head = format!("HTTP/1.1 {code} {reason}\r\nX: y\r\n\r\n{extra}");
        let (len, status) = parse_head(head.as_bytes(), "p").unwrap().unwrap();
        prop_assert_eq!(status.as_u16(), code);
        prop_assert_eq!(&head[len..], extra.as_str());
    }

    /// Upstream URLs: never a panic, and never a password in what is shown.
    #[test]
    fn hop_urls_never_leak_passwords(scheme in "(http|https|socks5|socks5h|socks4a|ftp)", pass in "[a-zA-Z0-9%@:]{4,12}", host in "[a-z0-9.]{1,20}", port in proptest::option::of(0u32..70000)) {
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let url = format!("{scheme}://user:{pass}@{host}{port}");
        let shown = match Hop::parse(&url) {
            Ok(hop) => format!("{hop} {hop:?}"),
            Err(e) => e.to_string(),
        };
        prop_assert!(!shown.contains(&format!(":{pass}@")), "{}", shown);
        let _ = Route::parse(&format!("{url},{url}"));
    }

    /// Domain patterns and NO_PROXY lists: total, and `*.suffix` matches exactly the subdomains.
    #[test]
    fn domain_patterns(pattern in "\\PC{0,30}", name in "[a-z0-9.-]{0,30}", label in "[a-z0-9]{1,10}", suffix in "[a-z]{1,8}\\.[a-z]{2,4}") {
        if let Some(p) = DomainPattern::parse(&pattern) {
            let _ = p.matches(&name);
        }
        let _ = parse_no_proxy(&pattern);
        let p = DomainPattern::parse(&format!("*.{suffix}")).unwrap();
        let sub = format!("{label}.{suffix}");
        prop_assert!(p.matches(&sub));
        prop_assert!(!p.matches(&suffix));
        let glued = format!("{label}{suffix}");
        prop_assert!(!p.matches(&glued));
    }

    /// Config files: any text gives a config or a located error, never a panic.
    #[test]
    fn config_parser_is_total(text in "\\PC{0,200}") {
        if let Err(e) = viaduct::config::parse(&text, "p.toml") {
            prop_assert!(e.line >= 1);
        }
    }

    /// Config files made of plausible keys and values.
    #[test]
    fn config_parser_on_plausible_files(lines in proptest::collection::vec(
        "(listen = \\[\"127.0.0.1:[0-9]{1,5}\"\\]|connect_timeout = \"[0-9]{1,3}(ms|s|m|x)\"|\\[upstreams\\]|a = \"(http|socks5h)://127.0.0.1:[0-9]{1,5}\"|\\[pools.p\\]|members = \\[\"a\"\\]|strategy = \"[a-z-]{4,18}\"|\\[\\[rules\\]\\]|match = \\{ ports = \\[25\\] \\}|via = \"(a|p|block|direct|zz)\"|\\[default\\])",
        0..12,
    )) {
        let text = lines.join("\n");
        let _ = viaduct::config::parse(&text, "p.toml");
    }
}
