//! `viaduct probe URL`: walks the real route for a URL and prints each step with its time: the
//! routing decision, every pool member tried, DNS, TCP to the first hop, each hop's handshake
//! and what it answered, then (for `https://`) the TLS handshake with the origin and its
//! certificate, then the status of a GET. The failing step is named in `Proxy-Status` words,
//! so "Proxy CONNECT aborted" becomes "hop 2 ...: refused the connection".

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;
use crate::failure::{Failure, verdict};
use crate::routing::Action;
use crate::stream::BoxIo;
use crate::target::{Host, Target};
use crate::upstream::tls::{TlsOptions, connector};
use crate::upstream::trace::Tracer;
use crate::upstream::{Resolve, Route};

/// Probes `url` under `config`; writes the steps to `out`. True when the GET got a 2xx or 3xx.
pub async fn run(
    config: Config,
    resolver: Arc<dyn Resolve>,
    url: &str,
    cacert: Vec<PathBuf>,
    out: &mut (dyn Write + Send),
) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        let _ = writeln!(out, "FAILED  not a URL: {url}");
        return false;
    };
    let https = parsed.scheme() == "https";
    let target = match crate::config::target_of_url(url) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "FAILED  {e}");
            return false;
        }
    };
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_owned(),
    };
    let dialer = match crate::proxy::dialer(&config, Arc::clone(&resolver)) {
        Ok((_, d)) => d,
        Err(e) => {
            let _ = writeln!(out, "FAILED  {e}");
            return false;
        }
    };
    let decision = config.router.decide(&target, None, &*resolver).await;
    line(
        out,
        "route",
        &format!("{} -> {}", decision.reason, decision.action),
        None,
    );
    let routes: Vec<(Option<String>, Route)> = match decision.action {
        Action::Block => {
            fail(
                out,
                Failure::Blocked,
                &format!("blocked by {}", decision.reason),
            );
            return false;
        }
        Action::Direct(r) => vec![(None, r.clone())],
        Action::Upstream(u) => vec![(None, u.route.clone())],
        Action::Pool(p) => {
            let order = p.candidates(None);
            if order.is_empty() {
                fail(
                    out,
                    Failure::NoHealthyMember,
                    &format!("pool {} has no healthy member", p.name),
                );
                return false;
            }
            order
                .into_iter()
                .map(|i| (Some(p.members[i].name.clone()), p.members[i].route.clone()))
                .collect()
        }
    };
    let mut opened = None;
    let mut route_used: Option<Route> = None;
    for (member, route) in routes {
        if let Some(m) = &member {
            line(out, "member", &format!("{m} ({route})"), None);
        }
        let tracer = Tracer::detailed();
        let d = dialer.traced(tracer.clone());
        let started = Instant::now();
        let res = if https {
            d.tunnel(&route, &target).await.map(|s| (s, false))
        } else {
            d.forward(&route, &target, d.source_for(&route)).await
        };
        for step in tracer.get().steps {
            line(out, &step.what, &step.outcome, Some(step.took));
        }
        match res {
            Ok(s) => {
                line(out, "dial", "ok", Some(started.elapsed()));
                opened = Some(s);
                route_used = Some(route);
                break;
            }
            Err(e) => {
                let v = verdict(Failure::Connect(e.kind()));
                fail(out, Failure::Connect(e.kind()), &e.to_string());
                if !v.retry || member.is_none() {
                    return false;
                }
            }
        }
    }
    let Some((stream, absolute)) = opened else {
        return false;
    };
    let stream = if https {
        match origin_tls(stream, &target, cacert, out).await {
            Some(s) => s,
            None => return false,
        }
    } else {
        stream
    };
    let request_target = if absolute { url.to_owned() } else { path };
    let within = config.settings.connect_timeout.max(Duration::from_secs(10));
    match absolute.then(|| {
        route_used
            .as_ref()
            .and_then(|r| r.absolute_form_hop().cloned())
    }) {
        Some(Some(hop)) => get_via(stream, &hop, &target, &request_target, within, out).await,
        _ => get(stream, &target, &request_target, within, out).await,
    }
}

/// The GET in absolute-form to an HTTP upstream, authenticating as the proxy would (each leg
/// printed).
async fn get_via(
    mut stream: BoxIo,
    hop: &crate::upstream::Hop,
    target: &Target,
    request_target: &str,
    within: Duration,
    out: &mut (dyn Write + Send),
) -> bool {
    let started = Instant::now();
    let peer = hop.to_string();
    let mut auth = hop.negotiation(&peer).noting();
    let request = crate::upstream::http_connect::RequestHead {
        line: format!("GET {request_target}"),
        host: target.to_string(),
        extra: "User-Agent: viaduct-probe\r\nAccept: */*\r\n",
    };
    let via = http::HeaderValue::from_static("1.1 viaduct-probe");
    let res = tokio::time::timeout(
        within,
        crate::upstream::http_connect::exchange(&mut stream, &peer, &request, &mut auth, &via),
    )
    .await;
    for words in auth.take_notes() {
        line(out, &format!("{peer}: auth"), &words, None);
    }
    let status = match res {
        Ok(Ok(crate::upstream::http_connect::Answer::Final { status, .. })) => status,
        Ok(Ok(crate::upstream::http_connect::Answer::Again)) => {
            let _ = writeln!(
                out,
                "FAILED  error=http_request_denied; details=\"{peer} closed the connection after its 407 (a real request dials again; the probe does not)\""
            );
            return false;
        }
        Ok(Err(e)) => {
            fail(out, Failure::Connect(e.kind()), &e.to_string());
            return false;
        }
        Err(_) => {
            let _ = writeln!(
                out,
                "FAILED  error=http_response_timeout; details=\"{peer} sent no response head within {}\"",
                humantime::format_duration(within)
            );
            return false;
        }
    };
    line(
        out,
        &format!("GET {request_target}"),
        &status.to_string(),
        Some(started.elapsed()),
    );
    verdict_of_get(out, status.as_u16())
}

/// The probe's last line for the GET's status: `ok` for 2xx/3xx, else what answered.
fn verdict_of_get(out: &mut (dyn Write + Send), code: u16) -> bool {
    if (200..400).contains(&code) {
        let _ = writeln!(out, "ok");
        true
    } else {
        let _ = writeln!(out, "FAILED  the origin answered {code}");
        false
    }
}

fn line(out: &mut (dyn Write + Send), what: &str, outcome: &str, took: Option<Duration>) {
    let took = took.map_or_else(String::new, |t| {
        format!("{:>9.1} ms", t.as_secs_f64() * 1000.0)
    });
    let _ = writeln!(out, "  {what:<58} {took:>12}  {outcome}");
}

fn fail(out: &mut (dyn Write + Send), failure: Failure, details: &str) {
    let v = verdict(failure);
    let _ = writeln!(
        out,
        "FAILED  {} error={}; details=\"{details}\"",
        v.status.as_u16(),
        v.error
    );
}

/// The TLS handshake with the origin through the tunnel: version, certificate, verification.
async fn origin_tls(
    stream: BoxIo,
    target: &Target,
    cacert: Vec<PathBuf>,
    out: &mut (dyn Write + Send),
) -> Option<BoxIo> {
    let options = TlsOptions {
        ca_files: cacert,
        insecure: false,
    };
    let tls = match connector(&options) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "FAILED  --cacert: {e}");
            return None;
        }
    };
    let name = match &target.host {
        Host::Name(n) => rustls::pki_types::ServerName::try_from(n.clone()).ok()?,
        Host::Ip(ip) => rustls::pki_types::ServerName::IpAddress((*ip).into()),
    };
    let started = Instant::now();
    match tls.connect(name, stream).await {
        Ok(s) => {
            let (_, conn) = s.get_ref();
            let version = conn
                .protocol_version()
                .map_or_else(|| "?".to_owned(), |v| format!("{v:?}"));
            let cert = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| describe(c.as_ref()))
                .unwrap_or_default();
            line(
                out,
                &format!("tls with origin {target}"),
                &format!("{version}, verified; {cert}"),
                Some(started.elapsed()),
            );
            Some(Box::new(s))
        }
        Err(e) => {
            let words = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map_or_else(|| e.to_string(), crate::upstream::error::tls_words)
                .replace("the proxy's", "the origin's")
                .replace("the proxy ", "the origin ");
            line(
                out,
                &format!("tls with origin {target}"),
                &words,
                Some(started.elapsed()),
            );
            let _ = writeln!(
                out,
                "FAILED  error=tls_certificate_error; details=\"TLS with origin {target}: {words}\" (trust its CA with --cacert)"
            );
            None
        }
    }
}

/// `subject ..., issuer ...` of a DER certificate.
fn describe(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => format!("subject {}, issuer {}", cert.subject(), cert.issuer()),
        Err(_) => "an unreadable certificate".into(),
    }
}

/// A GET over the opened stream; prints the status line.
async fn get(
    mut stream: BoxIo,
    target: &Target,
    request_target: &str,
    within: Duration,
    out: &mut (dyn Write + Send),
) -> bool {
    let started = Instant::now();
    let req = format!(
        "GET {request_target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: viaduct-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let exchange = async {
        stream.write_all(req.as_bytes()).await?;
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(head)
    };
    match tokio::time::timeout(within, exchange).await {
        Ok(Ok(head)) => {
            let status_line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            let code = status_line
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok());
            line(
                out,
                &format!("GET {request_target}"),
                if status_line.is_empty() {
                    "no answer"
                } else {
                    &status_line
                },
                Some(started.elapsed()),
            );
            match code {
                Some(c) => verdict_of_get(out, c),
                None => {
                    let _ = writeln!(
                        out,
                        "FAILED  error=http_protocol_error; details=\"no HTTP response from {target}\""
                    );
                    false
                }
            }
        }
        Ok(Err(e)) => {
            let _ = writeln!(
                out,
                "FAILED  error=connection_terminated; details=\"{target}: {e}\""
            );
            false
        }
        Err(_) => {
            let _ = writeln!(
                out,
                "FAILED  error=http_response_timeout; details=\"{target} sent no response head within {}\"",
                humantime::format_duration(within)
            );
            false
        }
    }
}
