//! Authenticating viaduct to upstream HTTP proxies: Basic, NTLMv2 and Negotiate (Kerberos).
//!
//! The scheme comes from the proxy's `407` challenge list, strongest first: Negotiate, NTLM,
//! Basic (curl's `--proxy-anyauth`), unless the hop pins one (`auth = "ntlm"`), in which case a
//! proxy that does not offer it is an error, never a downgrade. What a hop offered is remembered
//! for the hop ([`HopAuth`]), so later connections start with the right leg; a hop whose scheme
//! is not known yet is first asked without credentials (nothing is sent in the clear before the
//! proxy says what it takes).
//!
//! A [`Negotiation`] runs on one connection: [`Negotiation::start`] gives the first leg's
//! header, [`Negotiation::answer`] the next one from a 407's challenges. NTLM and Negotiate are
//! connection-bound: a leg marked [`Leg::bound`] must go on the connection the challenge came
//! on. The callers (the CONNECT handshake and plain forwarding) own the wire; this module only
//! decides what to say, and words every failure without the password.

pub mod gssapi;
pub mod ntlm;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use base64::Engine;
use http::HeaderValue;

use super::error::ConnectError;
use super::hop::Credentials;

/// Which scheme a hop may use toward its proxy (`--upstream-auth`, `auth = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthPolicy {
    /// The strongest the proxy offers that we can do.
    #[default]
    Any,
    /// Basic only, sent with the first request (no round trip to learn the scheme).
    Basic,
    Ntlm,
    Negotiate,
}

impl std::str::FromStr for AuthPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "any" => Ok(Self::Any),
            "basic" => Ok(Self::Basic),
            "ntlm" => Ok(Self::Ntlm),
            "negotiate" | "kerberos" => Ok(Self::Negotiate),
            _ => Err(format!(
                "unknown upstream auth \"{s}\" (any, basic, ntlm, negotiate)"
            )),
        }
    }
}

impl AuthPolicy {
    fn only(self) -> Option<Scheme> {
        match self {
            Self::Any => None,
            Self::Basic => Some(Scheme::Basic),
            Self::Ntlm => Some(Scheme::Ntlm),
            Self::Negotiate => Some(Scheme::Negotiate),
        }
    }
}

/// An authentication scheme, as a bit in an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Basic = 1,
    Ntlm = 2,
    Negotiate = 4,
}

impl Scheme {
    /// Strongest first.
    const ORDER: [Scheme; 3] = [Scheme::Negotiate, Scheme::Ntlm, Scheme::Basic];

    fn bit(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Basic => "Basic",
            Scheme::Ntlm => "NTLM",
            Scheme::Negotiate => "Negotiate",
        })
    }
}

/// `Negotiate, NTLM` for a set of scheme bits.
fn list(bits: u8) -> String {
    let names: Vec<String> = Scheme::ORDER
        .iter()
        .filter(|s| bits & s.bit() != 0)
        .map(ToString::to_string)
        .collect();
    if names.is_empty() {
        "no scheme viaduct knows".into()
    } else {
        names.join(", ")
    }
}

/// Set once a hop's offer has been seen.
const KNOWN: u8 = 0x80;

/// A hop's settings for authenticating to its proxy, and what it has learned of the proxy.
/// Clones share what was learned.
#[derive(Clone, Default)]
pub struct HopAuth {
    pub policy: AuthPolicy,
    /// The Kerberos service name, `HTTP@host` unless set (`spn = "HTTP@real-name"` when the
    /// proxy's name in the URL is an alias).
    pub spn: Option<String>,
    /// False: never ask GSSAPI (tests that must not pick up the machine's own tickets).
    kerberos_off: bool,
    learned: Arc<AtomicU8>,
    /// The NTLM channel-binding hash for the proxy's TLS (`https://` hops): the MD5 of the
    /// channel bindings carrying its `tls-server-end-point`, from the last TLS connection to
    /// it. All zeros without TLS.
    channel_binding: Arc<std::sync::Mutex<[u8; 16]>>,
}

impl fmt::Debug for HopAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HopAuth({:?})", self.policy)
    }
}

impl HopAuth {
    pub fn new(policy: AuthPolicy, spn: Option<String>) -> Self {
        Self {
            policy,
            spn,
            kerberos_off: false,
            learned: Arc::default(),
            channel_binding: Arc::default(),
        }
    }

    /// Records the `tls-server-end-point` of the TLS connection just made to the proxy.
    pub fn tls_end_point(&self, end_point: Option<&[u8]>) {
        let binding = end_point.map_or([0; 16], channel_binding);
        if let Ok(mut b) = self.channel_binding.lock() {
            *b = binding;
        }
    }

    fn channel_binding(&self) -> [u8; 16] {
        self.channel_binding.lock().map_or([0; 16], |b| *b)
    }

    /// The same settings, never using Kerberos (as on a machine without a ticket).
    pub fn without_kerberos(mut self) -> Self {
        self.kerberos_off = true;
        self
    }

    /// The schemes the proxy offered last time, if it was asked.
    fn offered(&self) -> Option<u8> {
        let v = self.learned.load(Ordering::Relaxed);
        (v & KNOWN != 0).then_some(v & !KNOWN)
    }

    fn learn(&self, bits: u8) {
        self.learned.store(bits | KNOWN, Ordering::Relaxed);
    }
}

/// MS-NLMP 2.2.2.1 MsvAvChannelBindings for TLS: the MD5 of an RFC 2744 channel-bindings
/// structure with no addresses and `tls-server-end-point:<hash>` as its application data
/// (RFC 5929, RFC 5056), as Windows and pyspnego compute it.
pub fn channel_binding(end_point: &[u8]) -> [u8; 16] {
    use md5::{Digest, Md5};
    let mut data = b"tls-server-end-point:".to_vec();
    data.extend_from_slice(end_point);
    let mut h = Md5::new();
    // initiator address type and length, acceptor address type and length: all zero.
    h.update([0u8; 16]);
    h.update((data.len() as u32).to_le_bytes());
    h.update(&data);
    h.finalize().into()
}

/// The challenges of a 407: which schemes, and the NTLM/Negotiate tokens when present.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Offer {
    pub schemes: u8,
    pub ntlm: Option<Vec<u8>>,
    pub negotiate: Option<Vec<u8>>,
}

impl Offer {
    /// Reads every `Proxy-Authenticate` value: each may hold several challenges separated by
    /// commas, with auth-params (`realm="a, b"`) after a scheme.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut offer = Offer::default();
        for value in values {
            let Ok(text) = std::str::from_utf8(value) else {
                continue;
            };
            for element in split_outside_quotes(text) {
                let element = element.trim();
                let (first, rest) = element
                    .split_once([' ', '\t'])
                    .map_or((element, ""), |(a, b)| (a, b.trim()));
                if first.is_empty() || first.contains('=') {
                    continue; // an auth-param of the previous challenge
                }
                let token = || {
                    (!rest.is_empty() && !rest.contains('='))
                        .then(|| base64::engine::general_purpose::STANDARD.decode(rest).ok())
                        .flatten()
                        .or_else(|| base64::engine::general_purpose::STANDARD.decode(rest).ok())
                        .filter(|t| !t.is_empty())
                };
                match first.to_ascii_lowercase().as_str() {
                    "basic" => offer.schemes |= Scheme::Basic.bit(),
                    "ntlm" => {
                        offer.schemes |= Scheme::Ntlm.bit();
                        offer.ntlm = offer.ntlm.take().or_else(token);
                    }
                    "negotiate" => {
                        offer.schemes |= Scheme::Negotiate.bit();
                        offer.negotiate = offer.negotiate.take().or_else(token);
                    }
                    _ => {}
                }
            }
        }
        offer
    }
}

fn split_outside_quotes(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// One leg of a handshake: what to send.
#[derive(Debug, Clone)]
pub struct Leg {
    /// The `Proxy-Authorization` value; none for a discovery request.
    pub header: Option<HeaderValue>,
    /// Must go on the connection whose 407 it answers (an NTLM type 3, a Negotiate
    /// continuation).
    pub bound: bool,
    /// Completes authentication if the proxy takes it: on plain requests this leg carries the
    /// real request (earlier legs are `HEAD` probes of the same URL).
    pub last: bool,
    /// The scheme it speaks, when any.
    pub scheme: Option<Scheme>,
}

enum State {
    /// Nothing sent on this connection yet, or the last leg's scheme failed.
    Fresh,
    /// An NTLM NEGOTIATE went out (in an `NTLM` header, or raw in a `Negotiate` one).
    NtlmNegotiate {
        message: Vec<u8>,
        as_negotiate: bool,
    },
    /// A Kerberos (SPNEGO) context is under way.
    Kerberos(Box<gssapi::Context>),
    /// A leg that completes the scheme went out.
    Sent(Scheme),
}

/// The authentication of one connection to one proxy.
pub struct Negotiation {
    auth: HopAuth,
    credentials: Option<Credentials>,
    /// `http proxy host:port` (or `hop 2 (...)`), for messages.
    peer: String,
    /// The proxy's host as written in the URL.
    host: String,
    state: State,
    /// Schemes whose completing leg the proxy refused.
    refused: u8,
    /// Why Negotiate could not start, when it could not.
    kerberos_failure: Option<String>,
    /// A leg decided after the proxy closed the connection: the next connection starts with it.
    pub pending: Option<Leg>,
    /// Each leg in words (scheme offered, scheme used, result), when asked for (`viaduct probe`).
    notes: Option<Vec<String>>,
}

impl Negotiation {
    pub fn new(auth: &HopAuth, credentials: Option<&Credentials>, peer: &str, host: &str) -> Self {
        Self {
            auth: auth.clone(),
            credentials: credentials.cloned(),
            peer: peer.to_owned(),
            host: host.to_owned(),
            state: State::Fresh,
            refused: 0,
            kerberos_failure: None,
            pending: None,
            notes: None,
        }
    }

    /// The same negotiation, keeping each leg in words for [`Negotiation::take_notes`].
    pub fn noting(mut self) -> Self {
        self.notes = Some(Vec::new());
        self
    }

    /// The legs noted so far, in words (empty unless [`Negotiation::noting`]).
    pub fn take_notes(&mut self) -> Vec<String> {
        self.notes.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn note(&mut self, words: impl FnOnce(&Self) -> String) {
        if self.notes.is_some() {
            let w = words(self);
            if let Some(n) = self.notes.as_mut() {
                n.push(w);
            }
        }
    }

    /// What `leg` sends, in words.
    fn describe(&self, leg: &Leg) -> String {
        let who = self
            .account()
            .map_or_else(String::new, |a| format!(" as {}", a.display()));
        match (leg.scheme, leg.last) {
            (None, false) => "asks without credentials (to learn the scheme)".into(),
            (None, true) => "sends no credentials".into(),
            (Some(Scheme::Ntlm), false) => "sends NTLM negotiate (type 1)".into(),
            (Some(Scheme::Ntlm), true) => format!("sends NTLMv2 authenticate (type 3){who}"),
            (Some(Scheme::Negotiate), _) => {
                format!("sends a Kerberos token for {} (Negotiate)", self.spn())
            }
            (Some(Scheme::Basic), _) => format!("sends Basic{who}"),
        }
    }

    fn fail(&self, reason: String) -> ConnectError {
        ConnectError::ProxyAuth {
            peer: self.peer.clone(),
            reason,
        }
    }

    fn account(&self) -> Option<ntlm::Account> {
        self.credentials
            .as_ref()
            .map(|c| ntlm::Account::new(&c.user, &c.pass))
    }

    fn spn(&self) -> String {
        self.auth
            .spn
            .clone()
            .unwrap_or_else(|| format!("HTTP@{}", self.host))
    }

    /// The first leg on a new connection (or the leg decided before the last one closed).
    pub async fn start(&mut self) -> Result<Leg, ConnectError> {
        let leg = self.start_leg().await;
        match &leg {
            Ok(l) => self.note(|n| n.describe(l)),
            Err(e) => self.note(|_| format!("cannot start: {e}")),
        }
        leg
    }

    async fn start_leg(&mut self) -> Result<Leg, ConnectError> {
        if let Some(leg) = self.pending.take() {
            return Ok(leg);
        }
        let offered = match (self.auth.policy, self.auth.offered()) {
            (AuthPolicy::Basic, _) => Scheme::Basic.bit(),
            (AuthPolicy::Ntlm, _) => Scheme::Ntlm.bit(),
            (AuthPolicy::Negotiate, _) => Scheme::Negotiate.bit(),
            (AuthPolicy::Any, Some(bits)) => bits,
            (AuthPolicy::Any, None) if self.credentials.is_some() => {
                // Ask first: nothing of the password goes out before the proxy names a scheme.
                return Ok(Leg {
                    header: None,
                    bound: false,
                    last: false,
                    scheme: None,
                });
            }
            (AuthPolicy::Any, None) => {
                // No credentials: Kerberos is all we could do. With a ticket, its token goes
                // with the first request (a proxy that needs none ignores it); without, the
                // request goes bare, as to any open proxy.
                return Ok(match self.kerberos_first().await {
                    Ok(leg) => leg,
                    Err(_) => Leg {
                        header: None,
                        bound: false,
                        last: true,
                        scheme: None,
                    },
                });
            }
        };
        if offered == 0 || (self.credentials.is_none() && offered & Scheme::Negotiate.bit() == 0) {
            // The proxy took us without credentials last time, or wants what we do not have
            // (its 407 then says so, as it would to any client: it may have changed its mind).
            return Ok(Leg {
                header: None,
                bound: false,
                last: true,
                scheme: None,
            });
        }
        if self.auth.policy == AuthPolicy::Basic && self.credentials.is_none() {
            return Ok(Leg {
                header: None,
                bound: false,
                last: true,
                scheme: None,
            });
        }
        self.choose(&Offer {
            schemes: offered,
            ..Offer::default()
        })
        .await
    }

    /// The proxy took a leg of `scheme` (none: a bare request): what it offered stays
    /// learned; a proxy never asked before learns what it took.
    pub fn accepted(&mut self, scheme: Option<Scheme>) {
        if self.auth.offered().is_none() {
            self.auth.learn(scheme.map_or(0, Scheme::bit));
        }
        self.note(|_| match scheme {
            Some(s) => format!("accepted ({s})"),
            None => "accepted".into(),
        });
    }

    /// The next leg after a 407 with `offer`.
    pub async fn answer(&mut self, offer: &Offer) -> Result<Leg, ConnectError> {
        self.note(|_| format!("407 offers {}", list(offer.schemes)));
        let leg = self.answer_leg(offer).await;
        if let Ok(l) = &leg {
            self.note(|n| n.describe(l));
        }
        leg
    }

    async fn answer_leg(&mut self, offer: &Offer) -> Result<Leg, ConnectError> {
        if offer.schemes == 0 {
            return Err(ConnectError::HopStatus {
                peer: self.peer.clone(),
                status: http::StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            });
        }
        self.auth.learn(offer.schemes);
        match std::mem::replace(&mut self.state, State::Fresh) {
            State::NtlmNegotiate {
                message,
                as_negotiate,
            } => {
                let (token, carrier) = if as_negotiate {
                    (offer.negotiate.as_ref(), Scheme::Negotiate)
                } else {
                    (offer.ntlm.as_ref(), Scheme::Ntlm)
                };
                if offer.schemes & carrier.bit() == 0 {
                    // The proxy no longer offers what we started: choose again from its list.
                    return self.choose(offer).await;
                }
                let Some(raw) = token else {
                    self.refused |= Scheme::Ntlm.bit();
                    return Err(
                        self.fail("answered the NTLM negotiate message without a challenge".into())
                    );
                };
                let challenge = ntlm::parse_challenge(raw)
                    .map_err(|e| self.fail(format!("sent an unusable NTLM challenge: {e}")))?;
                let Some(account) = self.account() else {
                    return Err(self.fail("asks for NTLM credentials".into()));
                };
                let target_name = self.spn().replacen('@', "/", 1);
                let inputs = ntlm::Inputs {
                    negotiate: &message,
                    challenge_raw: raw,
                    client_challenge: ntlm::client_challenge(),
                    now: ntlm::now(),
                    target_name: &target_name,
                    channel_binding: self.auth.channel_binding(),
                };
                let m = ntlm::authenticate(&account, &challenge, &inputs)
                    .map_err(|e| self.fail(format!("sent an unusable NTLM challenge: {e}")))?;
                self.state = State::Sent(Scheme::Ntlm);
                Ok(Leg {
                    header: Some(header(if as_negotiate { "Negotiate" } else { "NTLM" }, &m)?),
                    bound: true,
                    last: true,
                    scheme: Some(Scheme::Ntlm),
                })
            }
            State::Kerberos(ctx) => match offer.negotiate.clone() {
                Some(token) => {
                    let (ctx, step) = match step_blocking(ctx, Some(token)).await {
                        Ok(done) => done,
                        Err(e) => {
                            self.refused |= Scheme::Negotiate.bit();
                            return Err(self.fail(format!("Kerberos failed: {e}")));
                        }
                    };
                    match step {
                        Ok(gssapi::Step::Done(t) | gssapi::Step::Continue(t)) if !t.is_empty() => {
                            self.state = State::Kerberos(ctx);
                            Ok(Leg {
                                header: Some(header("Negotiate", &t)?),
                                bound: true,
                                last: true,
                                scheme: Some(Scheme::Negotiate),
                            })
                        }
                        Ok(_) => {
                            self.refused |= Scheme::Negotiate.bit();
                            Err(self.rejected(Scheme::Negotiate))
                        }
                        Err(e) => {
                            self.refused |= Scheme::Negotiate.bit();
                            Err(self.fail(format!("sent a Negotiate token Kerberos refused: {e}")))
                        }
                    }
                }
                None => {
                    // A bare `Negotiate` after our token: the ticket was refused.
                    drop(ctx);
                    self.refused |= Scheme::Negotiate.bit();
                    self.choose(offer).await
                }
            },
            State::Sent(scheme) => {
                self.refused |= scheme.bit();
                self.choose(offer).await
            }
            State::Fresh => self.choose(offer).await,
        }
    }

    /// The error for a 407 that answered a completing leg on a request that cannot be sent
    /// again: what the proxy refused, or what else it asks for.
    pub async fn refused_after(&mut self, offer: &Offer) -> ConnectError {
        let scheme = match &self.state {
            State::Sent(s) => Some(*s),
            State::Kerberos(_) => Some(Scheme::Negotiate),
            _ => None,
        };
        match self.answer(offer).await {
            Err(e) => e,
            Ok(_) => match scheme {
                Some(s) => self.rejected(s),
                None => self.fail("asks for authentication again".into()),
            },
        }
    }

    fn rejected(&self, scheme: Scheme) -> ConnectError {
        match (scheme, self.account()) {
            (Scheme::Negotiate, _) => self.fail(format!(
                "rejected the Kerberos ticket for {} (Negotiate)",
                self.spn()
            )),
            (_, Some(a)) => self.fail(format!("rejected {scheme} credentials for {}", a.display())),
            (_, None) => self.fail(format!("rejected {scheme} authentication")),
        }
    }

    /// The strongest scheme in `offer` we can do and have not had refused.
    async fn choose(&mut self, offer: &Offer) -> Result<Leg, ConnectError> {
        let offered = offer.schemes;
        if let Some(only) = self.auth.policy.only()
            && offered & only.bit() == 0
        {
            return Err(self.fail(format!(
                "offers {}, not {only} (the upstream's auth setting allows no other)",
                list(offered)
            )));
        }
        let allowed = self.auth.policy.only().map_or(0xff, Scheme::bit);
        let open = offered & allowed & !self.refused;
        let has_credentials = self.credentials.is_some();
        if open & Scheme::Negotiate.bit() != 0 {
            match self.kerberos_first().await {
                Ok(leg) => return Ok(leg),
                Err(e) => self.kerberos_failure = Some(e),
            }
            // No ticket: NTLM inside Negotiate when only Negotiate is offered (the acceptors
            // that offer Negotiate take a raw NTLM token in it).
            if has_credentials
                && open & Scheme::Ntlm.bit() == 0
                && offered & Scheme::Ntlm.bit() == 0
                && self.auth.policy == AuthPolicy::Any
                && self.refused & Scheme::Ntlm.bit() == 0
            {
                return self.ntlm_first(true);
            }
        }
        if open & Scheme::Ntlm.bit() != 0 && has_credentials {
            return self.ntlm_first(false);
        }
        if open & Scheme::Basic.bit() != 0
            && let Some(c) = &self.credentials
        {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.pass));
            let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
                .map_err(|_| self.fail("has credentials that do not fit a header".into()))?;
            value.set_sensitive(true);
            self.state = State::Sent(Scheme::Basic);
            return Ok(Leg {
                header: Some(value),
                bound: false,
                last: true,
                scheme: Some(Scheme::Basic),
            });
        }
        // Nothing left to try: say why.
        let last_refused = Scheme::ORDER
            .into_iter()
            .find(|s| self.refused & s.bit() != 0);
        if let Some(s) = last_refused {
            return Err(self.rejected(s));
        }
        if offered & Scheme::Negotiate.bit() != 0 && !has_credentials {
            if let Some(why) = &self.kerberos_failure {
                tracing::debug!(peer = %self.peer, reason = %why, "no Kerberos ticket");
            }
            return Err(self.fail(
                "offers Negotiate, but there is no Kerberos ticket (run kinit) and no credentials to fall back to NTLM"
                    .into(),
            ));
        }
        if offered & Scheme::Negotiate.bit() != 0 && self.auth.policy == AuthPolicy::Negotiate {
            return Err(self.fail(format!(
                "offers Negotiate, but there is no Kerberos ticket for {} (run kinit): {}",
                self.spn(),
                self.kerberos_failure.as_deref().unwrap_or("no GSSAPI")
            )));
        }
        Err(self.fail(format!(
            "asks for credentials ({}) and the upstream URL has none",
            list(offered)
        )))
    }

    fn ntlm_first(&mut self, as_negotiate: bool) -> Result<Leg, ConnectError> {
        let message = ntlm::negotiate();
        let value = header(if as_negotiate { "Negotiate" } else { "NTLM" }, &message)?;
        self.state = State::NtlmNegotiate {
            message,
            as_negotiate,
        };
        Ok(Leg {
            header: Some(value),
            bound: false,
            last: false,
            scheme: Some(Scheme::Ntlm),
        })
    }

    async fn kerberos_first(&mut self) -> Result<Leg, String> {
        if self.auth.kerberos_off {
            return Err("Kerberos is off".into());
        }
        let spn = self.spn();
        let made = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let mut ctx = Box::new(gssapi::Context::new(&spn)?);
            let step = ctx.step(None)?;
            Ok((ctx, step))
        })
        .await
        .map_err(|e| e.to_string())??;
        let (ctx, step) = made;
        let token = match step {
            gssapi::Step::Done(t) | gssapi::Step::Continue(t) => t,
        };
        if token.is_empty() {
            return Err("GSSAPI produced no token".into());
        }
        self.state = State::Kerberos(ctx);
        Ok(Leg {
            header: Some(header("Negotiate", &token).map_err(|e| e.to_string())?),
            bound: false,
            last: true,
            scheme: Some(Scheme::Negotiate),
        })
    }
}

/// Steps `ctx` on a blocking thread (the library may talk to the KDC). `Err` when the thread
/// died, which takes the context with it.
async fn step_blocking(
    mut ctx: Box<gssapi::Context>,
    token: Option<Vec<u8>>,
) -> Result<(Box<gssapi::Context>, Result<gssapi::Step, String>), String> {
    tokio::task::spawn_blocking(move || {
        let r = ctx.step(token.as_deref());
        (ctx, r)
    })
    .await
    .map_err(|e| e.to_string())
}

fn header(scheme: &str, token: &[u8]) -> Result<HeaderValue, ConnectError> {
    let mut v = HeaderValue::try_from(format!(
        "{scheme} {}",
        base64::engine::general_purpose::STANDARD.encode(token)
    ))
    .map_err(|_| ConnectError::HopProtocol {
        peer: String::new(),
        reason: "token not encodable".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_parse_in_any_order_and_form() {
        let o = Offer::parse([
            b"NTLM".as_slice(),
            b"Basic realm=\"corp, inc\", charset=\"UTF-8\"",
            b"Negotiate",
        ]);
        assert_eq!(o.schemes, 7);
        assert!(o.ntlm.is_none() && o.negotiate.is_none());
        let o = Offer::parse([b"Negotiate, NTLM, Basic realm=\"x\"".as_slice()]);
        assert_eq!(o.schemes, 7);
        let o = Offer::parse([b"NTLM TlRMTVNTUAACAAAA".as_slice()]);
        assert_eq!(o.ntlm.as_deref(), Some(&b"NTLMSSP\0\x02\0\0\0"[..]));
        let o = Offer::parse([b"Digest realm=\"x\", nonce=\"y\"".as_slice(), b"Bearer"]);
        assert_eq!(o.schemes, 0);
    }

    fn creds(user: &str) -> Credentials {
        Credentials {
            user: user.into(),
            pass: "pw".into(),
        }
    }

    fn scheme_of(leg: &Leg) -> &str {
        let h = leg
            .header
            .as_ref()
            .map(|h| h.to_str().unwrap())
            .unwrap_or("");
        h.split(' ').next().unwrap_or("")
    }

    /// Without a Kerberos ticket: NTLM is preferred over Basic, a refused NTLM is never
    /// downgraded to Basic on the same hop when pinned, and the answer names the account.
    #[tokio::test]
    async fn chooses_strongest_and_words_failures() {
        let auth = HopAuth::default().without_kerberos();
        let c = creds("CORP\\bob");
        let mut n = Negotiation::new(&auth, Some(&c), "http proxy p:1", "p");
        let first = n.start().await.unwrap();
        assert!(
            first.header.is_none(),
            "nothing before the proxy says what it takes"
        );
        let offer = Offer::parse([b"Basic realm=x".as_slice(), b"NTLM"]);
        let leg = n.answer(&offer).await.unwrap();
        assert_eq!(scheme_of(&leg), "NTLM");
        assert!(!leg.bound && !leg.last);
        // The hop remembers: the next connection starts with NTLM.
        let mut n2 = Negotiation::new(&auth, Some(&c), "http proxy p:1", "p");
        assert_eq!(scheme_of(&n2.start().await.unwrap()), "NTLM");

        // Pinned NTLM against a Basic-only proxy: an error, not Basic.
        let pinned = HopAuth::new(AuthPolicy::Ntlm, None).without_kerberos();
        let mut n = Negotiation::new(&pinned, Some(&c), "http proxy p:1", "p");
        let _ = n.start().await.unwrap();
        let e = n
            .answer(&Offer::parse([b"Basic realm=x".as_slice()]))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "http proxy p:1 offers Basic, not NTLM (the upstream's auth setting allows no other)"
        );

        // Basic refused: named with the account, never the password.
        let mut n = Negotiation::new(
            &HopAuth::default().without_kerberos(),
            Some(&creds("bob")),
            "http proxy p:1",
            "p",
        );
        let _ = n.start().await.unwrap();
        let basic = Offer::parse([b"Basic".as_slice()]);
        let leg = n.answer(&basic).await.unwrap();
        assert_eq!(scheme_of(&leg), "Basic");
        let e = n.answer(&basic).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "http proxy p:1 rejected Basic credentials for bob"
        );

        // Negotiate only, no ticket, no credentials.
        let mut n = Negotiation::new(
            &HopAuth::default().without_kerberos(),
            None,
            "http proxy p:1",
            "p",
        );
        let _ = n.start().await.unwrap();
        let e = n
            .answer(&Offer::parse([b"Negotiate".as_slice(), b"NTLM"]))
            .await
            .unwrap_err();
        assert!(
            e.to_string().ends_with("offers Negotiate, but there is no Kerberos ticket (run kinit) and no credentials to fall back to NTLM"),
            "{e}"
        );
        assert_eq!(
            e.kind(),
            crate::upstream::ConnectErrorKind::HopStatus(
                http::StatusCode::PROXY_AUTHENTICATION_REQUIRED
            )
        );
    }
}
