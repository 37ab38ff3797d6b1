//! Plain HTTP forwarding of absolute-form requests (`GET http://host/path HTTP/1.1`).
//!
//! The route is chosen first (failing over across pool members), then the request goes out on a
//! kept-alive connection for that route: origin-form with `Host` when the
//! connection ends at the origin, absolute-form plus the upstream's `Proxy-Authorization` when
//! it ends at an HTTP upstream. Bodies stream both ways untouched (hyper re-frames them);
//! hop-by-hop headers are dropped both ways and `Via` added. An `Upgrade` request keeps its
//! `Upgrade`/`Connection` pair, and a 101 answer turns the exchange into a relayed tunnel.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::client_io::ConnState;
use super::connect::client_end;
use super::headers::{is_upgrade, strip_hop_by_hop};
use super::respond::ProxyError;
use super::{Body, Http};
use crate::relay::body::{Counted, Pace, Paced, Revocable, Side, Throttled};
use crate::routing::Action;
use crate::session::{Client, Ends};
use crate::stream::BoxIo;
use crate::target::Target;
use crate::upstream::keepalive::{Conn, OutBody};
use crate::upstream::proxy_auth::{self, Offer, Scheme};
use crate::upstream::{ConnectError, Dialer, Hop, Route};

const MAX_FORWARDS: HeaderName = HeaderName::from_static("max-forwards");

/// Forwards one absolute-form request and returns the origin's (or upstream's) response.
pub async fn handle(
    http: &Arc<Http>,
    mut req: Request<Incoming>,
    client: &Client,
    conn_state: &Arc<ConnState>,
) -> Result<Response<Body>, ProxyError> {
    match req.uri().scheme_str() {
        Some("http") => {}
        Some(_) => {
            return Err(ProxyError::BadRequest(
                "only http:// URLs can be forwarded; use CONNECT for https",
            ));
        }
        None => {
            return Err(ProxyError::BadRequest(
                "this is a proxy: send absolute-form requests (GET http://host/path) or CONNECT host:port",
            ));
        }
    }
    let authority = req
        .uri()
        .authority()
        .cloned()
        .ok_or(ProxyError::BadRequest("the URL has no host"))?;
    let target = Target::from_authority(&authority, Some(80))?;
    if let Some(answer) = max_forwards(&mut req, http) {
        return Ok(answer);
    }
    let core = http.core();
    let action = core.decide(&target, client, false).await?;

    let upgrading = is_upgrade(req.headers());
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let received = req.version();
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrading);
    // RFC 9112 3.2.2: a proxy replaces Host with the authority of the absolute-form target.
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        headers.insert(header::HOST, host);
    }
    http.via().append(headers, received);
    // We speak HTTP/1.1 to the next hop whatever the client spoke (RFC 9110 2.5).
    *req.version_mut() = Version::HTTP_11;
    // The client's body may stall or dribble only so long (slowloris on bodies): past the
    // bounds it gets 408 and the origin connection is freed.
    let limits = http.limits();
    let pace = Pace {
        idle: limits.request_body_timeout,
        min_rate: limits.request_body_min_rate(),
    };
    let trail = Arc::clone(&client.trail);
    let limits = core.throttles(client);
    let req = req.map(|body| {
        let counted = Counted::new(Paced::new(body, pace, Side::Request), move |n| {
            trail.carried(true, n);
        });
        Throttled::new(counted, limits.up).boxed()
    });
    let out = Arc::new(Outgoing::new(req, &action).await?);

    // Pick the route (failing over across pool members) before the request is handed to a
    // connection: until then nothing of it is sent, so a failed dial can go elsewhere. A
    // member's 407 (the proxy refusing *us*) also moves on to the next member when the request
    // can be sent again (no body, or one small enough to keep).
    let reached = core
        .reach(&action, &target, client, |dialer, route, to| {
            Box::pin(attempt(
                Arc::clone(http),
                Arc::clone(&out),
                route,
                dialer,
                to,
            ))
        })
        .await?;
    let (answered, mut member) = (reached.value, reached.member);
    let (mut resp, conn, route) = match answered {
        Attempt::Answered(resp, conn, route) => (resp, conn, route),
        Attempt::Final(e) => return Err(e),
    };

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && client_upgrade.is_none() {
        // A 101 nobody asked for would leave the client speaking HTTP into an unknown protocol.
        return Err(ProxyError::UnsolicitedSwitch(answerer(&route, &target)));
    }
    match (switching, client_upgrade) {
        (true, Some(client_upgrade)) => {
            let remote_upgrade = hyper::upgrade::on(&mut resp);
            let admission = conn_state.tunnel_hold();
            let member = member.take();
            core.spawn_tunnel(
                crate::session::TunnelKind::Upgrade,
                101,
                target.to_string(),
                client,
                admission,
                async move {
                    let remote: BoxIo = Box::new(TokioIo::new(remote_upgrade.await?));
                    let (client, early) = client_end(client_upgrade.await?)?;
                    Ok(Ends {
                        client,
                        early,
                        target: remote,
                        member,
                    })
                },
            );
        }
        _ => core.keepalive().recycle(conn.key, conn.sender, conn.basic),
    }
    // The member's connection count (least-connections) lasts until the body has been carried;
    // a body that stalls longer than the idle timeout is cut (both connections close).
    let pace = Pace {
        idle: core.idle_timeout(),
        min_rate: None,
    };
    let received = resp.version();
    if resp.headers().contains_key(header::TRANSFER_ENCODING) {
        // The body was de-chunked and is re-framed: a Content-Length beside it (ambiguous, and
        // ignored by hyper) must not reach the client.
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    http.via().append(resp.headers_mut(), received);
    // A user removed (or whose password changed) at a reload loses this response as they
    // lose their tunnels.
    let revoked = client.grant.as_ref().map(|g| g.revoked().clone());
    Ok(resp.map(|body| {
        let paced = Paced::new(body, pace, Side::Response).holding(member);
        Revocable::new(Throttled::new(paced, limits.down), revoked).boxed()
    }))
}

/// Who answers plain requests along `route`: the absolute-form upstream, else the target.
fn answerer(route: &Route, target: &Target) -> String {
    match route.absolute_form_hop() {
        Some(hop) => hop.to_string(),
        None => format!("target {target}"),
    }
}

/// RFC 9110 7.6.2: `Max-Forwards` on TRACE and OPTIONS. At 0 we are the recipient and answer
/// ourselves (OPTIONS: what we accept; TRACE: the request as received, without credentials or
/// cookies); above 0 it is decremented on the way out.
fn max_forwards(req: &mut Request<Incoming>, http: &Http) -> Option<Response<Body>> {
    if !matches!(*req.method(), Method::TRACE | Method::OPTIONS) {
        return None;
    }
    let left: u64 = req
        .headers()
        .get(MAX_FORWARDS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if left > 0 {
        req.headers_mut()
            .insert(MAX_FORWARDS, HeaderValue::from(left - 1));
        return None;
    }
    let mut resp = if req.method() == Method::OPTIONS {
        let mut resp = Response::new(Full::new(Bytes::new()));
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static(
                "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT",
            ),
        );
        resp
    } else {
        let mut echo = format!("{} {} {:?}\r\n", req.method(), req.uri(), req.version());
        for (name, value) in req.headers() {
            if matches!(
                name.as_str(),
                "proxy-authorization" | "authorization" | "cookie"
            ) {
                continue;
            }
            echo.push_str(name.as_str());
            echo.push_str(": ");
            echo.push_str(&String::from_utf8_lossy(value.as_bytes()));
            echo.push_str("\r\n");
        }
        echo.push_str("\r\n");
        let mut resp = Response::new(Full::new(Bytes::from(echo)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("message/http"),
        );
        resp
    };
    http.via().append(resp.headers_mut(), Version::HTTP_11);
    Some(resp.map(|b| b.map_err(|never| match never {}).boxed()))
}

/// Bodies up to this size are kept, so that a request can go to another pool member after a
/// member refused us with 407.
const MAX_KEPT_BODY: u64 = 64 * 1024;

/// The request as it goes out, for each member tried.
struct Outgoing {
    /// The absolute-form target (each attempt shapes the request line for its route).
    absolute: Uri,
    /// The request itself, for the first attempt (or an attempt after one that sent nothing).
    first: std::sync::Mutex<Option<Request<OutBody>>>,
    /// Through a pool, a copy of the head and a kept body (none, or a declared one of at most
    /// [`MAX_KEPT_BODY`]): sent again to another member after a 407.
    again: Option<(http::request::Parts, Bytes)>,
}

impl Outgoing {
    async fn new(req: Request<OutBody>, action: &Action) -> Result<Self, ProxyError> {
        use http_body::Body as _;
        let absolute = req.uri().clone();
        let keep = matches!(action, Action::Pool(_))
            && (req.body().is_end_stream()
                || req
                    .body()
                    .size_hint()
                    .exact()
                    .is_some_and(|n| n <= MAX_KEPT_BODY));
        if !keep {
            return Ok(Self {
                absolute,
                first: std::sync::Mutex::new(Some(req)),
                again: None,
            });
        }
        let (parts, body) = req.into_parts();
        let kept = body
            .collect()
            .await
            .map_err(ProxyError::RequestBody)?
            .to_bytes();
        let first = Request::from_parts(parts.clone(), full(kept.clone()));
        Ok(Self {
            absolute,
            first: std::sync::Mutex::new(Some(first)),
            again: Some((parts, kept)),
        })
    }

    /// The request for one attempt; `None` when a streamed body is already gone.
    fn request(&self) -> Option<Request<OutBody>> {
        if let Some(first) = self.first.lock().ok().and_then(|mut f| f.take()) {
            return Some(first);
        }
        let (parts, kept) = self.again.as_ref()?;
        Some(Request::from_parts(parts.clone(), full(kept.clone())))
    }

    /// True when the request can be sent again after it was sent once.
    fn replayable(&self) -> bool {
        self.again.is_some()
    }

    /// Puts a request back (an attempt gave up before sending any of it).
    fn put_back(&self, req: Request<OutBody>) {
        if let Ok(mut slot) = self.first.lock() {
            *slot = Some(req);
        }
    }
}

fn full(bytes: Bytes) -> OutBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// What one attempt along a route ends with, when no other member should be tried (a reason
/// to try the next member is the attempt's `ConnectError`).
// Built and matched once per request, never stored: boxing the large variant would add an
// allocation per request for nothing (the `Result` it replaces had the same layout).
#[allow(clippy::large_enum_variant)]
enum Attempt {
    /// The response head arrived: the client gets it, whatever its status.
    Answered(Response<Incoming>, Conn, Route),
    /// A failure no other member can change (a timeout after the request went, a request
    /// that cannot be sent again): the client gets it.
    Final(ProxyError),
}

/// Sends `out` along `route`: a kept-alive connection (or a new one), the request shaped for it,
/// the response head within the response timeout.
async fn attempt(
    http: Arc<Http>,
    out: Arc<Outgoing>,
    route: Route,
    dialer: Dialer,
    target: Target,
) -> Result<Attempt, ConnectError> {
    let conns = http.core().keepalive();
    let mut conn = conns.acquire(&dialer, &route, &target, false).await?;
    let Some(mut req) = out.request() else {
        return Ok(Attempt::Final(ProxyError::BadRequest(
            "the request body was already sent to another upstream",
        )));
    };
    let hop = conn.proxied.then(|| route.absolute_form_hop()).flatten();
    // What authenticates the request: on a fresh connection to an HTTP upstream, the leg that
    // completes the upstream's scheme (after probe legs the proxy answers itself); on a kept
    // connection, Basic again or nothing (NTLM and Negotiate authenticated the connection).
    let mut negotiation = None;
    let mut authorization = None;
    if let Some(hop) = hop {
        if conn.reused {
            authorization = conn
                .basic
                .then(|| hop.proxy_authorization.clone())
                .flatten();
        } else {
            let mut n = hop.negotiation(&hop.to_string());
            match authenticate(
                &http,
                &mut conn,
                &mut n,
                &out.absolute,
                &dialer,
                &route,
                &target,
            )
            .await
            {
                Ok(leg) => {
                    conn.basic = leg.scheme == Some(Scheme::Basic);
                    authorization = leg.header;
                    negotiation = Some(n);
                }
                Err(e) => {
                    out.put_back(req);
                    return auth_failed(e, &out);
                }
            }
        }
    }
    let resp = loop {
        prepare(&mut req, &out.absolute, hop, authorization.as_ref());
        let sent =
            tokio::time::timeout(http.response_timeout(), conn.sender.try_send_request(req)).await;
        let Ok(sent) = sent else {
            return Ok(Attempt::Final(ProxyError::ResponseTimeout {
                peer: answerer(&route, &target),
                after: http.response_timeout(),
            }));
        };
        match sent {
            Ok(resp) => break resp,
            Err(mut e) => match e.take_message() {
                // A kept-alive connection the peer closed meanwhile: nothing was sent.
                Some(back) if conn.reused => {
                    match conns.acquire(&dialer, &route, &target, true).await {
                        Ok(fresh) => {
                            req = back;
                            conn = fresh;
                        }
                        Err(e) => {
                            out.put_back(back);
                            return Err(e);
                        }
                    }
                }
                _ => return Ok(Attempt::Final(ProxyError::Forward(e.into_error()))),
            },
        }
    };
    if let Some(hop) = hop.filter(|_| resp.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED) {
        // The challenge is for our credentials, not the client's: never pass it on. Another
        // member may take us, if the request can be sent again.
        let offer = offer_of(resp.headers());
        let refused = match negotiation.as_mut() {
            Some(n) if offer.schemes != 0 => n.refused_after(&offer).await,
            _ => ConnectError::HopStatus {
                peer: hop.to_string(),
                status: resp.status(),
            },
        };
        return auth_failed(refused, &out);
    }
    Ok(Attempt::Answered(resp, conn, route))
}

/// An upstream's refusal of our credentials: final, unless the request can go to another
/// member.
fn auth_failed(refused: ConnectError, out: &Outgoing) -> Result<Attempt, ConnectError> {
    if out.replayable() {
        Err(refused)
    } else {
        Ok(Attempt::Final(refused.into()))
    }
}

fn offer_of(headers: &http::HeaderMap) -> Offer {
    Offer::parse(
        headers
            .get_all(header::PROXY_AUTHENTICATE)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// The largest probe answer read to keep its connection.
const MAX_PROBE_BODY: usize = 1 << 20;

/// Runs `negotiation`'s probe legs on the fresh connection `conn` to an HTTP upstream and
/// returns the leg that completes it, for the real request to carry.
///
/// A probe is `HEAD <target>`: a proxy checks credentials before it forwards anything, and a
/// proxy that needs none forwards a safe, bodiless request (squid answers `OPTIONS` with
/// `Max-Forwards: 0` with 501 before it looks at credentials, so that cannot serve). The
/// request's body thus goes out once, with the completing leg. A proxy that closes after a
/// 407 gets the next (unbound) leg on a new connection.
async fn authenticate(
    http: &Http,
    conn: &mut Conn,
    negotiation: &mut proxy_auth::Negotiation,
    absolute: &Uri,
    dialer: &Dialer,
    route: &Route,
    target: &Target,
) -> Result<proxy_auth::Leg, ConnectError> {
    let peer = route
        .absolute_form_hop()
        .map_or_else(|| route.to_string(), ToString::to_string);
    let mut leg = negotiation.start().await?;
    let mut redials = 0;
    while !leg.last {
        let mut probe = Request::head(absolute.clone())
            .header(
                header::HOST,
                absolute.authority().map_or("", |a| a.as_str()),
            )
            .body(full(Bytes::new()))
            .map_err(|e| ConnectError::HopProtocol {
                peer: peer.clone(),
                reason: e.to_string(),
            })?;
        if let Some(value) = &leg.header {
            probe
                .headers_mut()
                .insert(header::PROXY_AUTHORIZATION, value.clone());
        }
        http.via().append(probe.headers_mut(), Version::HTTP_11);
        let sent = tokio::time::timeout(http.response_timeout(), conn.sender.send_request(probe))
            .await
            .map_err(|_| ConnectError::Timeout {
                peer: peer.clone(),
                after: http.response_timeout(),
            })?
            .map_err(|e| ConnectError::Unreachable {
                peer: peer.clone(),
                source: std::io::Error::other(e),
            })?;
        let status = sent.status();
        let offer = offer_of(sent.headers());
        // Read the answer's body so the connection can carry the next leg.
        let drained = tokio::time::timeout(
            http.response_timeout(),
            http_body_util::Limited::new(sent.into_body(), MAX_PROBE_BODY).collect(),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if status != StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            // No authentication asked for (a discovery probe answered): the request goes bare.
            negotiation.accepted(leg.scheme);
            return Ok(proxy_auth::Leg {
                header: None,
                bound: false,
                last: true,
                scheme: None,
            });
        }
        let next = negotiation.answer(&offer).await?;
        let open = drained && conn.sender.ready().await.is_ok();
        if !open {
            if next.bound || redials >= 3 {
                return Err(ConnectError::ProxyAuth {
                    peer,
                    reason: "closed the connection in the middle of the authentication handshake (it must stay open between legs)".into(),
                });
            }
            redials += 1;
            *conn = http
                .core()
                .keepalive()
                .acquire(dialer, route, target, true)
                .await?;
        }
        leg = next;
    }
    Ok(leg)
}

/// Shapes the request for the connection it goes on: absolute-form with the upstream's
/// `authorization` (when `upstream` is the absolute-form hop), else origin-form without any.
fn prepare(
    req: &mut Request<OutBody>,
    absolute: &Uri,
    upstream: Option<&Hop>,
    authorization: Option<&HeaderValue>,
) {
    match upstream {
        Some(_) => {
            *req.uri_mut() = absolute.clone();
            match authorization {
                Some(auth) => req
                    .headers_mut()
                    .insert(header::PROXY_AUTHORIZATION, auth.clone()),
                None => req.headers_mut().remove(header::PROXY_AUTHORIZATION),
            };
        }
        None => {
            // `http://host?q=1` has an empty path: origin-form is `/?q=1` (RFC 9112 3.2.1).
            let pq = absolute.path_and_query().map_or("/", |pq| pq.as_str());
            let origin_form = if pq.starts_with('/') {
                pq.parse()
            } else {
                format!("/{pq}").parse()
            };
            *req.uri_mut() = origin_form.unwrap_or_else(|_| Uri::from_static("/"));
            req.headers_mut().remove(header::PROXY_AUTHORIZATION);
        }
    }
}
