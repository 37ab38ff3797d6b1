//! Request smuggling and ambiguous messages: a corpus of requests from public smuggling
//! research (CL.TE, TE.CL, TE.TE obfuscations, duplicate lengths, bad chunk sizes, obs-fold,
//! whitespace tricks, bare LF, Host/URI disagreement), each sent through viaduct to a recording
//! origin. Each is either refused with 400 before anything reaches the origin, or forwarded in
//! one unambiguous form; in no case does the origin see a second, smuggled request.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// 400, and nothing reached the origin.
    Refused,
    /// Forwarded as exactly one request whose body the origin echoed back as given.
    Forwarded(&'static str),
    /// The body is broken mid-way: whatever the client sees, the origin completes no request
    /// beyond the one (at most) that was started.
    NoSecondRequest,
}

const CORPUS: &[(&str, &str, Expect)] = &[
    // hyper lets Transfer-Encoding win and drops the Content-Length (RFC 9112 6.3): the body goes
    // on chunked-decoded and re-framed; the CL.TE tail is then a separate client request (400).
    (
        "CL.TE",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        Expect::Forwarded(""),
    ),
    (
        "TE.CL",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        Expect::Forwarded("SMUGGLED"),
    ),
    (
        "TE.TE obfuscated value",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: xchunked\r\nContent-Length: 3\r\n\r\nabc",
        Expect::Refused,
    ),
    (
        "TE.TE duplicate header",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        Expect::Refused,
    ),
    (
        "TE list ending in identity",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        Expect::Refused,
    ),
    (
        "TE gzip, chunked (coding we cannot pass on)",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        Expect::Refused,
    ),
    (
        "TE with space before colon",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc",
        Expect::Refused,
    ),
    (
        "CL with space before colon",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nContent-Length : 3\r\n\r\nabc",
        Expect::Refused,
    ),
    (
        "CL with tab before colon",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nContent-Length\t: 3\r\n\r\nabc",
        Expect::Refused,
    ),
    (
        "differing duplicate CL",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        Expect::Refused,
    ),
    (
        "differing CL list",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nContent-Length: 3, 4\r\n\r\nabcd",
        Expect::Refused,
    ),
    (
        "CL with plus sign",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nContent-Length: +3\r\n\r\nabc",
        Expect::Refused,
    ),
    (
        "negative CL",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nContent-Length: -1\r\n\r\nabc",
        Expect::Refused,
    ),
    (
        "CL overflow",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nContent-Length: 18446744073709551616\r\n\r\nabc",
        Expect::Refused,
    ),
    (
        "CL with trailing junk",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nContent-Length: 3abc\r\n\r\nabc",
        Expect::Refused,
    ),
    (
        "obs-fold",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nX-Folded: a\r\n b\r\nContent-Length: 3\r\n\r\nabc",
        Expect::Refused,
    ),
    (
        "obs-fold hiding TE",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\nabc",
        Expect::Refused,
    ),
    (
        "space in header name",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nTransfer Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
        Expect::Refused,
    ),
    (
        "NUL in header value",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nX-Nul: a\0b\r\nContent-Length: 3\r\n\r\nabc",
        Expect::Refused,
    ),
    (
        "HTTP/1.0 with Transfer-Encoding",
        "POST {T}/echo HTTP/1.0\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        Expect::Refused,
    ),
    (
        "invalid chunk size",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        Expect::NoSecondRequest,
    ),
    (
        "chunk size with plus",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n+3\r\nabc\r\n0\r\n\r\n",
        Expect::NoSecondRequest,
    ),
    (
        "chunk size overflow",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        Expect::NoSecondRequest,
    ),
    (
        "chunk data longer than its size",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcGET /smuggled HTTP/1.1\r\n\r\n0\r\n\r\n",
        Expect::NoSecondRequest,
    ),
    (
        "plain chunked is fine",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        Expect::Forwarded("abcde"),
    ),
    (
        "chunk extensions are fine",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\n\r\n",
        Expect::Forwarded("abc"),
    ),
    (
        "equal duplicate CL",
        "POST {T}/echo HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        Expect::Forwarded("abc"),
    ),
    (
        "Host disagreeing with the URI",
        "POST {T}/echo HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 3\r\n\r\nabc",
        Expect::Forwarded("abc"),
    ),
];

/// Sends `raw` (then half-closes) and returns the first response's status line and decoded
/// body, or empty strings when the proxy closed without answering.
async fn first_response(proxy: std::net::SocketAddr, raw: &str) -> (String, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let _ = s.write_all(raw.as_bytes()).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    if out.is_empty() {
        return (String::new(), String::new());
    }
    let mut cursor = std::io::Cursor::new(out);
    let head = read_head(&mut cursor).await;
    let body = read_body(&mut cursor, &head).await;
    (
        format!("HTTP/1.1 {}", head.status),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn smuggling_corpus() {
    let mut failures = Vec::new();
    for (name, template, expect) in CORPUS {
        // A fresh origin and proxy per case: what the origin records is this case's alone.
        let mut o = origin().await;
        let p = start_proxy(config()).await;
        let raw = template.replace("{T}", &format!("http://{}", o.addr));
        let (status, got) = first_response(p.addr, &raw).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut seen = Vec::new();
        while let Ok(s) = o.seen.try_recv() {
            seen.push(s);
        }
        // Whatever happened, the proxy goes on serving others.
        let (after, _) = get_hello(p.addr, o.addr).await;
        if after.status != 200 {
            failures.push(format!("{name}: the next client got {}", after.status));
        }
        let ok = match expect {
            Expect::Refused => status.starts_with("HTTP/1.1 400") && seen.is_empty(),
            Expect::Forwarded(body) => {
                status.starts_with("HTTP/1.1 200")
                    && got == *body
                    && seen.len() == 1
                    && seen[0].uri == "/echo"
                    && seen[0].headers["host"] == o.addr.to_string()
            }
            Expect::NoSecondRequest => seen.len() <= 1 && seen.iter().all(|s| s.uri == "/echo"),
        };
        if !ok {
            let uris: Vec<_> = seen.iter().map(|s| s.uri.clone()).collect();
            failures.push(format!(
                "{name}: expected {expect:?}, got {status:?}, origin saw {uris:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CORPUS.len(),
        failures.join("\n")
    );
}
