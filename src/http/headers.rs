//! Header rules for forwarded messages: hop-by-hop removal, `Via`, and loop detection.

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection and never travel past it (RFC 9110 7.6.1), plus the
/// proxy-auth pair, which is between the client and us (or us and our upstream), never forwarded.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// True when the message asks to switch protocols (`Connection: upgrade` plus `Upgrade: ...`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers: the fixed list and every header `Connection` names.
///
/// With `keep_upgrade`, `Upgrade` and a `Connection: upgrade` survive, so that a protocol switch
/// (WebSocket) can be negotiated end to end. `Transfer-Encoding` goes too: hyper re-frames each
/// side's body itself (Content-Length is kept, chunked is chosen when the length is unknown).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let upgrade = keep_upgrade.then(|| {
        headers
            .get_all(header::UPGRADE)
            .iter()
            .cloned()
            .collect::<Vec<_>>()
    });
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if let Some(values) = upgrade.filter(|v| !v.is_empty()) {
        for v in values {
            headers.append(header::UPGRADE, v);
        }
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Our `Via` entries, one per protocol version we receive (RFC 9110 7.6.3: the entry names the
/// protocol of the message as *received*).
#[derive(Debug, Clone)]
pub struct Via {
    pseudonym: String,
    v10: HeaderValue,
    v11: HeaderValue,
}

impl Via {
    /// `pseudonym` must be a token (letters, digits, `-._~` ...); `None` otherwise.
    pub fn new(pseudonym: &str) -> Option<Self> {
        let token = !pseudonym.is_empty()
            && pseudonym
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return None;
        }
        Some(Self {
            pseudonym: pseudonym.to_owned(),
            v10: HeaderValue::try_from(format!("1.0 {pseudonym}")).ok()?,
            v11: HeaderValue::try_from(format!("1.1 {pseudonym}")).ok()?,
        })
    }

    pub fn pseudonym(&self) -> &str {
        &self.pseudonym
    }

    /// The entry for a message received as `version`.
    pub fn value(&self, version: Version) -> &HeaderValue {
        if version == Version::HTTP_10 {
            &self.v10
        } else {
            &self.v11
        }
    }

    /// Appends our entry after any existing ones.
    pub fn append(&self, headers: &mut HeaderMap, version: Version) {
        headers.append(header::VIA, self.value(version).clone());
    }

    /// True when a `Via` entry already names us: the message went round a loop.
    pub fn seen_in(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::VIA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|entry| entry.split_whitespace().nth(1))
            .any(|by| by.eq_ignore_ascii_case(&self.pseudonym))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_fixed_and_listed_headers() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("proxy-connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eA=="),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn keeps_upgrade_pair_when_asked() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("x", "1"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn detects_loops_by_pseudonym() {
        let via = Via::new("viaduct").unwrap();
        assert!(via.seen_in(&map(&[("via", "1.1 squid, 1.1 ViaDuct (rust)")])));
        assert!(!via.seen_in(&map(&[("via", "1.1 viaduct-b")])));
        assert!(Via::new("has space").is_none());
    }
}
