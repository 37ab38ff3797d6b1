//! A proxy auto-config (PAC) file from the routing in force: what the rules surely send
//! `direct` (and the bypass list) is `DIRECT`, everything else goes to this proxy.
//!
//! A PAC file cannot know everything the proxy knows (the authenticated user, a name's
//! resolved addresses, IPv6 networks in every browser). Where it cannot decide, it sends the
//! request to the proxy, which decides with the full rules: so a rule that *surely* matches is
//! needed to answer `DIRECT`, and a rule that *may* match is enough to answer `PROXY`, in the
//! rules' own order.

use std::fmt::Write;

use ipnet::IpNet;

use super::{DomainPattern, Matcher, Router};

/// The PAC file for `router`, sending proxied requests to `proxy` (`host:port`).
pub fn pac(router: &Router, proxy: &str) -> String {
    let mut out = String::new();
    let proxy = js_string(&format!("PROXY {proxy}"));
    let _ = writeln!(
        out,
        "// viaduct: generated from the routing in force; requests it cannot decide go to the proxy.\n\
         function FindProxyForURL(url, host) {{\n\
         \x20 var proxy = {proxy};\n\
         \x20 host = host.toLowerCase();\n\
         \x20 if (host.charAt(0) == \"[\") host = host.substring(1, host.length - 1);\n\
         \x20 var m = url.match(/^[a-z][a-z0-9+.-]*:\\/\\/(?:[^@\\/?#]*@)?(\\[[^\\]]*\\]|[^:\\/?#]*)(?::(\\d+))?/i);\n\
         \x20 var port = m && m[2] ? parseInt(m[2], 10) : (/^(https|wss):/i.test(url) ? 443 : 80);\n\
         \x20 var v4 = /^\\d+\\.\\d+\\.\\d+\\.\\d+$/.test(host);\n\
         \x20 var v6 = host.indexOf(\":\") >= 0;"
    );
    if let Some(bypass) = &router.bypass
        && let Some(sure) = condition(bypass, Certainty::Sure)
    {
        let _ = writeln!(out, "  if ({sure}) return \"DIRECT\"; // bypass");
    }
    for (i, rule) in router.rules.iter().enumerate() {
        let n = i + 1;
        let direct = rule.action.is_plain_direct();
        let resolving = rule.resolve && !rule.matcher.cidrs.is_empty();
        if direct
            && !resolving
            && let Some(sure) = condition(&rule.matcher, Certainty::Sure)
        {
            let _ = writeln!(out, "  if ({sure}) return \"DIRECT\"; // rule {n}");
        }
        let maybe = if resolving {
            // The proxy resolves the name to decide: any name may match.
            condition(&rule.matcher, Certainty::Maybe).map(|c| format!("!v4 && !v6 || ({c})"))
        } else {
            condition(&rule.matcher, Certainty::Maybe)
        };
        if let Some(maybe) = maybe {
            let _ = writeln!(
                out,
                "  if ({maybe}) return proxy; // rule {n}: {}",
                rule.action.label()
            );
        }
    }
    let last = if router.default.is_plain_direct() {
        "\"DIRECT\""
    } else {
        "proxy"
    };
    let _ = writeln!(out, "  return {last}; // default\n}}");
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Certainty {
    /// True only when the proxy's rule surely matches.
    Sure,
    /// True whenever the proxy's rule may match.
    Maybe,
}

/// The matcher as a JavaScript condition; `None` when it can never be true (as `Sure`).
fn condition(m: &Matcher, certainty: Certainty) -> Option<String> {
    let mut all = Vec::new();
    if !m.domains.is_empty() || !m.cidrs.is_empty() {
        let mut any: Vec<String> = m.domains.iter().map(domain).collect();
        for net in &m.cidrs {
            match (net, certainty) {
                (IpNet::V4(v4), _) => any.push(format!(
                    "v4 && isInNet(host, \"{}\", \"{}\")",
                    v4.network(),
                    v4.netmask()
                )),
                // IPv6 networks: not every browser has isInNetEx. Unknown: the proxy decides.
                (IpNet::V6(_), Certainty::Maybe) => any.push("v6".into()),
                (IpNet::V6(_), Certainty::Sure) => {}
            }
        }
        if any.is_empty() {
            return None;
        }
        all.push(format!("({})", any.join(" || ")));
    }
    if !m.ports.is_empty() {
        let ports: Vec<String> = m.ports.iter().map(|p| format!("port == {p}")).collect();
        all.push(format!("({})", ports.join(" || ")));
    }
    if !m.users.is_empty() && certainty == Certainty::Sure {
        // Only the proxy knows who the user is.
        return None;
    }
    Some(if all.is_empty() {
        "true".into()
    } else {
        all.join(" && ")
    })
}

fn domain(d: &DomainPattern) -> String {
    match d {
        DomainPattern::Exact(e) => format!("host == {}", js_string(e)),
        DomainPattern::Suffix {
            suffix,
            include_self,
        } => {
            let sub = format!("dnsDomainIs(host, {})", js_string(&format!(".{suffix}")));
            if *include_self {
                format!("({sub} || host == {})", js_string(suffix))
            } else {
                sub
            }
        }
        DomainPattern::Glob(labels) => {
            let mut re = String::from("^");
            for (i, label) in labels.iter().enumerate() {
                if i > 0 {
                    re.push_str("\\.");
                }
                for c in label.chars() {
                    match c {
                        '*' => re.push_str("[^.]*"),
                        '?' => re.push_str("[^.]"),
                        c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => re.push(c),
                        c => {
                            re.push('\\');
                            re.push(c);
                        }
                    }
                }
            }
            re.push('$');
            format!("/{re}/.test(host)")
        }
    }
}

/// A JavaScript string literal (names and addresses are plain ASCII; quotes escaped anyway).
fn js_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    crate::failure::push_quoted(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::super::Action;
    use super::*;
    use crate::routing::{Rule, parse_no_proxy};

    fn rule(m: Matcher, action: Action) -> Rule {
        Rule {
            matcher: m,
            resolve: false,
            action,
        }
    }

    #[test]
    fn direct_rules_bypass_and_default() {
        let up = Action::Upstream(std::sync::Arc::new(crate::routing::Upstream {
            name: "corp".into(),
            route: crate::upstream::Route::direct(),
        }));
        let router = Router {
            pac: None,
            bypass: parse_no_proxy("localhost,.internal").unwrap(),
            rules: vec![
                rule(
                    Matcher {
                        domains: vec![DomainPattern::parse("*.ads.example").unwrap()],
                        ..Default::default()
                    },
                    Action::Block,
                ),
                rule(
                    Matcher {
                        domains: vec![DomainPattern::parse("api-*.example.com").unwrap()],
                        cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                        ..Default::default()
                    },
                    Action::direct(),
                ),
                rule(
                    Matcher {
                        users: vec!["bob".into()],
                        ..Default::default()
                    },
                    Action::direct(),
                ),
            ],
            default: up,
        };
        let js = pac(&router, "proxy.corp.example:8083");
        assert!(
            js.contains("var proxy = \"PROXY proxy.corp.example:8083\";"),
            "{js}"
        );
        assert!(js.contains("return \"DIRECT\"; // bypass"), "{js}");
        assert!(
            js.contains(
                "if ((dnsDomainIs(host, \".ads.example\"))) return proxy; // rule 1: block"
            ),
            "{js}"
        );
        assert!(js.contains("if ((/^api-[^.]*\\.example\\.com$/.test(host) || v4 && isInNet(host, \"10.0.0.0\", \"255.0.0.0\"))) return \"DIRECT\"; // rule 2"), "{js}");
        // A user rule cannot be decided by the browser: it goes to the proxy, never DIRECT.
        assert!(!js.contains("// rule 3\n  if"), "{js}");
        assert!(
            js.contains("if (true) return proxy; // rule 3: direct"),
            "{js}"
        );
        assert!(
            js.trim_end().ends_with("return proxy; // default\n}"),
            "{js}"
        );
    }
}
