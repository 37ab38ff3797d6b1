//! NTLMv2 client messages (MS-NLMP): NEGOTIATE (type 1), reading a CHALLENGE (type 2), and an
//! AUTHENTICATE (type 3) with the NTLMv2 response, the MIC and the channel-binding and
//! target-name pairs a modern acceptor checks. LM and NTLMv1 are never produced.
//!
//! Hand-written on RustCrypto's `md4`, `hmac` and `md-5`: the crates that do NTLM are either
//! unmaintained and incomplete for our use (`ntlmclient`: no MIC, no empty-TargetInfo path) or
//! pull a whole SSPI stack with pre-release crypto (`sspi`). The message layouts are small and
//! pinned by the specification's test vectors (section 4.2.4, in the tests below).

use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;

type HmacMd5 = Hmac<Md5>;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

// Negotiate flags (MS-NLMP 2.2.2.5).
const UNICODE: u32 = 0x0000_0001;
const OEM: u32 = 0x0000_0002;
const REQUEST_TARGET: u32 = 0x0000_0004;
const NTLM: u32 = 0x0000_0200;
const ALWAYS_SIGN: u32 = 0x0000_8000;
const EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
const TARGET_INFO: u32 = 0x0080_0000;
const VERSION: u32 = 0x0200_0000;
const N128: u32 = 0x2000_0000;
const N56: u32 = 0x8000_0000;

/// What we ask for: NTLM with extended session security (never LM), Unicode strings.
const REQUESTED: u32 =
    UNICODE | OEM | REQUEST_TARGET | NTLM | ALWAYS_SIGN | EXTENDED_SESSIONSECURITY | N128 | N56;

// AV pair ids (MS-NLMP 2.2.2.1).
const AV_EOL: u16 = 0;
const AV_FLAGS: u16 = 6;
const AV_TIMESTAMP: u16 = 7;
const AV_TARGET_NAME: u16 = 9;
const AV_CHANNEL_BINDINGS: u16 = 10;
/// MsvAvFlags bit: the AUTHENTICATE message carries a MIC.
const AV_FLAG_MIC: u32 = 0x2;

/// An account for NTLM: `DOMAIN\user` (or `user@domain`, or a bare user) and its password.
#[derive(Clone)]
pub struct Account {
    pub domain: String,
    pub user: String,
    pub password: String,
}

impl Account {
    /// Splits `CORP\bob` / `bob@corp.example` / `bob` as Windows does.
    pub fn new(user: &str, password: &str) -> Self {
        let (domain, user) = match user.split_once('\\') {
            Some((d, u)) => (d, u),
            None => match user.rsplit_once('@') {
                Some((u, d)) => (d, u),
                None => ("", user),
            },
        };
        Self {
            domain: domain.to_owned(),
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }

    /// `CORP\bob` (or `bob`), for messages: never the password.
    pub fn display(&self) -> String {
        if self.domain.is_empty() {
            self.user.clone()
        } else {
            format!("{}\\{}", self.domain, self.user)
        }
    }
}

/// Why a CHALLENGE message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("the NTLM challenge is not an NTLMSSP type 2 message")]
    NotChallenge,
    #[error("the NTLM challenge is truncated or a field points outside it")]
    Truncated,
    #[error(
        "the proxy offers only NTLMv1 or LM (no extended session security); viaduct speaks NTLMv2 only"
    )]
    Weak,
}

/// A parsed CHALLENGE (type 2) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub flags: u32,
    pub server_challenge: [u8; 8],
    /// The raw TargetInfo AV pairs; empty when the server sent none.
    pub target_info: Vec<u8>,
}

/// The NEGOTIATE (type 1) message: 32 bytes, no domain or workstation (they would be OEM).
pub fn negotiate() -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&REQUESTED.to_le_bytes());
    // Empty DomainNameFields and WorkstationFields, pointing at the end.
    for _ in 0..2 {
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&32u32.to_le_bytes());
    }
    m
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, ChallengeError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(ChallengeError::Truncated)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, ChallengeError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(ChallengeError::Truncated)
}

/// Reads a CHALLENGE message (it comes from the network: every offset is checked).
pub fn parse_challenge(b: &[u8]) -> Result<Challenge, ChallengeError> {
    if b.get(..8) != Some(SIGNATURE.as_slice()) || u32_at(b, 8)? != 2 {
        return Err(ChallengeError::NotChallenge);
    }
    let flags = u32_at(b, 20)?;
    let server_challenge: [u8; 8] = b
        .get(24..32)
        .and_then(|s| s.try_into().ok())
        .ok_or(ChallengeError::Truncated)?;
    if flags & EXTENDED_SESSIONSECURITY == 0 && flags & TARGET_INFO == 0 {
        // Neither extended session security nor target info: an LM/NTLMv1-only server. NTLMv2
        // answers need neither, but such a server cannot check one; refuse rather than downgrade.
        return Err(ChallengeError::Weak);
    }
    // TargetInfoFields exist from offset 40 when the message is long enough (older servers and
    // squid's fake helper send the 32-byte form).
    let target_info = if b.len() >= 48 && flags & TARGET_INFO != 0 {
        let len = usize::from(u16_at(b, 40)?);
        let off = u32_at(b, 44)? as usize;
        b.get(off..off.checked_add(len).ok_or(ChallengeError::Truncated)?)
            .ok_or(ChallengeError::Truncated)?
            .to_vec()
    } else {
        Vec::new()
    };
    // The pairs must be well formed: they are echoed back inside our response.
    av_pairs(&target_info)?;
    Ok(Challenge {
        flags,
        server_challenge,
        target_info,
    })
}

/// The AV pairs of a TargetInfo (without the terminator), checked.
fn av_pairs(info: &[u8]) -> Result<Vec<(u16, &[u8])>, ChallengeError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < info.len() {
        let id = u16_at(info, at)?;
        let len = usize::from(u16_at(info, at + 2)?);
        let value = info
            .get(at + 4..at + 4 + len)
            .ok_or(ChallengeError::Truncated)?;
        if id == AV_EOL {
            return Ok(out);
        }
        out.push((id, value));
        at += 4 + len;
    }
    // A list without its terminator: take what is there.
    Ok(out)
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut mac) = <HmacMd5 as KeyInit>::new_from_slice(key) else {
        return [0; 16];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// NTOWFv2 (MS-NLMP 3.3.2): HMAC-MD5 keyed by MD4(UTF-16LE(password)) over the upper-cased
/// user name and the domain.
pub fn ntowf_v2(account: &Account) -> [u8; 16] {
    use md4::{Digest, Md4};
    let nt_hash: [u8; 16] = Md4::digest(utf16le(&account.password)).into();
    let who = utf16le(&(account.user.to_uppercase() + &account.domain));
    hmac_md5(&nt_hash, &[&who])
}

/// Windows FILETIME now: 100 ns ticks since 1601-01-01.
fn filetime_now() -> u64 {
    const EPOCH_DIFF_SECS: u64 = 11_644_473_600;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_secs() + EPOCH_DIFF_SECS) * 10_000_000 + u64::from(since.subsec_nanos() / 100)
}

/// What the AUTHENTICATE message depends on besides the account and challenge.
pub struct Inputs<'a> {
    /// The NEGOTIATE message as sent (the MIC covers it).
    pub negotiate: &'a [u8],
    /// The CHALLENGE message as received.
    pub challenge_raw: &'a [u8],
    /// Eight random bytes.
    pub client_challenge: [u8; 8],
    /// The time to put in the response when the server sent none.
    pub now: u64,
    /// The service principal (`HTTP/proxy.example`), sent as MsvAvTargetName.
    pub target_name: &'a str,
    /// MsvAvChannelBindings: all zeros without TLS to the proxy, else the hash of its
    /// `tls-server-end-point` bindings.
    pub channel_binding: [u8; 16],
}

/// The pieces of an NTLMv2 answer, exposed for the tests against the specification's vectors.
pub struct V2 {
    pub lm_response: Vec<u8>,
    pub nt_response: Vec<u8>,
    pub session_base_key: [u8; 16],
}

/// The NTLMv2 and LMv2 responses (MS-NLMP 3.3.2) over `target_info` (the AV pairs as they go
/// into the response) and `time`.
pub fn v2_responses(
    account: &Account,
    server_challenge: &[u8; 8],
    client_challenge: &[u8; 8],
    time: u64,
    target_info: &[u8],
    lm: bool,
) -> V2 {
    let key = ntowf_v2(account);
    let mut temp = Vec::with_capacity(28 + target_info.len() + 4);
    temp.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
    temp.extend_from_slice(&time.to_le_bytes());
    temp.extend_from_slice(client_challenge);
    temp.extend_from_slice(&[0; 4]);
    temp.extend_from_slice(target_info);
    temp.extend_from_slice(&[0; 4]);
    let proof = hmac_md5(&key, &[server_challenge, &temp]);
    let mut nt_response = proof.to_vec();
    nt_response.extend_from_slice(&temp);
    let lm_response = if lm {
        let mut r = hmac_md5(&key, &[server_challenge, client_challenge]).to_vec();
        r.extend_from_slice(client_challenge);
        r
    } else {
        vec![0; 24]
    };
    V2 {
        lm_response,
        nt_response,
        session_base_key: hmac_md5(&key, &[&proof]),
    }
}

/// The AV pairs we send back: the server's, with MsvAvFlags saying a MIC follows (when
/// `mic`), MsvAvChannelBindings (all zeros without TLS to the proxy), our MsvAvTargetName,
/// then the terminator. An empty list (the server sent no TargetInfo) stays empty, as curl
/// does.
fn response_target_info(
    server: &[u8],
    mic: bool,
    target_name: &str,
    channel_binding: &[u8; 16],
) -> Result<Vec<u8>, ChallengeError> {
    if server.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(server.len() + 64);
    let push = |out: &mut Vec<u8>, id: u16, value: &[u8]| {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
    };
    let mut had_flags = false;
    for (id, value) in av_pairs(server)? {
        match id {
            AV_FLAGS if value.len() == 4 => {
                had_flags = true;
                let mut f = u32::from_le_bytes([value[0], value[1], value[2], value[3]]);
                if mic {
                    f |= AV_FLAG_MIC;
                }
                push(&mut out, AV_FLAGS, &f.to_le_bytes());
            }
            AV_TARGET_NAME | AV_CHANNEL_BINDINGS => {}
            _ => push(&mut out, id, value),
        }
    }
    if mic && !had_flags {
        push(&mut out, AV_FLAGS, &AV_FLAG_MIC.to_le_bytes());
    }
    push(&mut out, AV_CHANNEL_BINDINGS, channel_binding);
    let name = utf16le(target_name);
    if name.len() <= usize::from(u16::MAX) {
        push(&mut out, AV_TARGET_NAME, &name);
    }
    push(&mut out, AV_EOL, &[]);
    Ok(out)
}

/// The AUTHENTICATE (type 3) message for `challenge`.
pub fn authenticate(
    account: &Account,
    challenge: &Challenge,
    inputs: &Inputs<'_>,
) -> Result<Vec<u8>, ChallengeError> {
    let server_time = av_pairs(&challenge.target_info)?
        .into_iter()
        .find(|(id, v)| *id == AV_TIMESTAMP && v.len() == 8)
        .map(|(_, v)| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
    // With the server's timestamp the MIC is required and the LM response is zeros (3.1.5.1.2).
    let mic = server_time.is_some();
    let info = response_target_info(
        &challenge.target_info,
        mic,
        inputs.target_name,
        &inputs.channel_binding,
    )?;
    let v2 = v2_responses(
        account,
        &challenge.server_challenge,
        &inputs.client_challenge,
        server_time.unwrap_or(inputs.now),
        &info,
        !mic,
    );
    let unicode = challenge.flags & UNICODE != 0;
    let text = |s: &str| {
        if unicode {
            utf16le(s)
        } else {
            s.as_bytes().to_vec()
        }
    };
    let flags =
        (challenge.flags & REQUESTED & !OEM) | if unicode { UNICODE } else { OEM } | VERSION;
    let domain = text(&account.domain);
    let user = text(&account.user);
    let workstation = Vec::new();
    let session_key: [u8; 0] = [];

    // Header: signature, type, six fields, flags, version, MIC; then the payload.
    const HEADER: usize = 88;
    let mut payload = Vec::new();
    let mut fields = Vec::with_capacity(48);
    for part in [
        &v2.lm_response[..],
        &v2.nt_response[..],
        &domain[..],
        &user[..],
        &workstation[..],
        &session_key[..],
    ] {
        let len = u16::try_from(part.len()).map_err(|_| ChallengeError::Truncated)?;
        fields.extend_from_slice(&len.to_le_bytes());
        fields.extend_from_slice(&len.to_le_bytes());
        fields.extend_from_slice(&((HEADER + payload.len()) as u32).to_le_bytes());
        payload.extend_from_slice(part);
    }
    let mut m = Vec::with_capacity(HEADER + payload.len());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&3u32.to_le_bytes());
    m.extend_from_slice(&fields);
    m.extend_from_slice(&flags.to_le_bytes());
    // Version: 10.0, build 0, NTLM revision 15 (what current Windows sends).
    m.extend_from_slice(&[10, 0, 0, 0, 0, 0, 0, 15]);
    let mic_at = m.len();
    m.extend_from_slice(&[0; 16]);
    m.extend_from_slice(&payload);
    if mic {
        // Without key exchange the exported session key is the key-exchange key, which for
        // NTLMv2 is the session base key.
        let code = hmac_md5(
            &v2.session_base_key,
            &[inputs.negotiate, inputs.challenge_raw, &m],
        );
        m[mic_at..mic_at + 16].copy_from_slice(&code);
    }
    Ok(m)
}

/// Eight random bytes for the client challenge, from the system.
pub fn client_challenge() -> [u8; 8] {
    let mut b = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        // The challenge need only be unpredictable to an attacker replaying responses; the
        // clock's nanoseconds are a poor but non-constant fallback.
        b = filetime_now().to_le_bytes();
    }
    b
}

/// The current time for the response.
pub fn now() -> u64 {
    filetime_now()
}

/// Fields of an AUTHENTICATE message, for acceptors in tests and for checking our own output.
#[derive(Debug)]
pub struct Authenticate<'a> {
    pub lm_response: &'a [u8],
    pub nt_response: &'a [u8],
    pub domain: String,
    pub user: String,
    pub flags: u32,
    pub mic: &'a [u8],
}

/// Reads an AUTHENTICATE message (Unicode strings), as an acceptor would.
pub fn parse_authenticate(b: &[u8]) -> Result<Authenticate<'_>, ChallengeError> {
    if b.get(..8) != Some(SIGNATURE.as_slice()) || u32_at(b, 8)? != 3 {
        return Err(ChallengeError::NotChallenge);
    }
    let field = |i: usize| -> Result<&[u8], ChallengeError> {
        let at = 12 + i * 8;
        let len = usize::from(u16_at(b, at)?);
        let off = u32_at(b, at + 4)? as usize;
        b.get(off..off + len).ok_or(ChallengeError::Truncated)
    };
    let text = |s: &[u8]| {
        let units: Vec<u16> = s
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    };
    Ok(Authenticate {
        lm_response: field(0)?,
        nt_response: field(1)?,
        domain: text(field(2)?),
        user: text(field(3)?),
        flags: u32_at(b, 60)?,
        mic: b.get(72..88).ok_or(ChallengeError::Truncated)?,
    })
}

/// An acceptor's check of an NTLMv2 response: recomputes NTProofStr from the password.
pub fn verify_v2(account: &Account, server_challenge: &[u8; 8], nt_response: &[u8]) -> bool {
    if nt_response.len() < 16 + 28 {
        return false;
    }
    let key = ntowf_v2(account);
    let expected = hmac_md5(&key, &[server_challenge, &nt_response[16..]]);
    expected[..] == nt_response[..16]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn spec_account() -> Account {
        Account {
            domain: "Domain".into(),
            user: "User".into(),
            password: "Password".into(),
        }
    }

    /// MS-NLMP 4.2.4: the NTLMv2 vectors (User/Domain/Password, server challenge
    /// 0123456789abcdef, client challenge aa x 8, time 0, TargetInfo Domain/Server).
    #[test]
    fn ms_nlmp_4_2_4_vectors() {
        let account = spec_account();
        assert_eq!(
            ntowf_v2(&account).to_vec(),
            hex("0c868a403bfd7a93a3001ef22ef02e3f")
        );
        let server = hex("0123456789abcdef").try_into().unwrap();
        let client = [0xaa; 8];
        let mut info = Vec::new();
        for (id, name) in [(2u16, "Domain"), (1, "Server")] {
            let v = utf16le(name);
            info.extend_from_slice(&id.to_le_bytes());
            info.extend_from_slice(&(v.len() as u16).to_le_bytes());
            info.extend_from_slice(&v);
        }
        info.extend_from_slice(&[0; 4]);
        let v2 = v2_responses(&account, &server, &client, 0, &info, true);
        assert_eq!(
            v2.lm_response,
            hex("86c35097ac9cec102554764a57cccc19 aaaaaaaaaaaaaaaa")
        );
        assert_eq!(
            v2.nt_response[..16].to_vec(),
            hex("68cd0ab851e51c96aabc927bebef6a1c")
        );
        assert_eq!(
            v2.session_base_key.to_vec(),
            hex("8de40ccadbc14a82f15cb0ad0de95ca3")
        );
        assert!(verify_v2(&account, &server, &v2.nt_response));
        let wrong = Account {
            password: "password".into(),
            ..spec_account()
        };
        assert!(!verify_v2(&wrong, &server, &v2.nt_response));
    }

    /// The challenge of MS-NLMP 4.2.4.3 parses, and an AUTHENTICATE for it carries a v2
    /// response an acceptor verifies, the account in Unicode, and (the server sent a time) a
    /// MIC with a zero LM response.
    #[test]
    fn challenge_to_authenticate() {
        let raw = hex(
            "4e544c4d53535000020000000c000c003800000033828ae20123456789abcdef\
             00000000000000002400240044000000060070170000000f53006500720076006500\
             72000200 0c0044006f006d00610069006e0001000c00530065007200760065007200\
             0000 0000",
        );
        let c = parse_challenge(&raw).unwrap();
        assert_eq!(c.server_challenge.to_vec(), hex("0123456789abcdef"));
        assert_eq!(c.target_info.len(), 0x24);
        // Add a timestamp to the target info, so the MIC path runs.
        let mut with_time = c.clone();
        let mut info = vec![7u8, 0, 8, 0];
        info.extend_from_slice(&42u64.to_le_bytes());
        info.extend_from_slice(&c.target_info);
        with_time.target_info = info;
        let neg = negotiate();
        let inputs = Inputs {
            negotiate: &neg,
            challenge_raw: &raw,
            client_challenge: [0xaa; 8],
            now: 7,
            target_name: "HTTP/proxy.test",
            channel_binding: [0; 16],
        };
        let m = authenticate(&spec_account(), &with_time, &inputs).unwrap();
        let a = parse_authenticate(&m).unwrap();
        assert_eq!((a.domain.as_str(), a.user.as_str()), ("Domain", "User"));
        assert_eq!(a.lm_response, [0; 24]);
        assert!(verify_v2(
            &spec_account(),
            &c.server_challenge,
            a.nt_response
        ));
        // The server's time went into the response, not ours.
        assert_eq!(&a.nt_response[24..32], &42u64.to_le_bytes());
        assert_ne!(a.mic, [0; 16]);
        // The MIC is HMAC-MD5 over the three messages with the MIC zeroed.
        let v2_key = {
            let proof = &a.nt_response[..16];
            hmac_md5(&ntowf_v2(&spec_account()), &[proof])
        };
        let mut zeroed = m.clone();
        zeroed[72..88].fill(0);
        assert_eq!(hmac_md5(&v2_key, &[&neg, &raw, &zeroed]).to_vec(), a.mic);
        // Without a server time: the LMv2 response and no MIC.
        let m = authenticate(&spec_account(), &c, &inputs).unwrap();
        let a = parse_authenticate(&m).unwrap();
        assert_eq!(a.lm_response.len(), 24);
        assert_ne!(a.lm_response, [0; 24]);
        assert_eq!(a.mic, [0; 16]);
        assert_eq!(a.flags & UNICODE, UNICODE);
    }

    /// squid's fake helper (and some gateways) send a 32-byte challenge without TargetInfo: it
    /// is answered with NTLMv2 over an empty TargetInfo, as curl does.
    #[test]
    fn challenge_without_target_info() {
        let mut raw = Vec::new();
        raw.extend_from_slice(SIGNATURE);
        raw.extend_from_slice(&2u32.to_le_bytes());
        raw.extend_from_slice(&[0, 0, 0, 0, 32, 0, 0, 0]);
        raw.extend_from_slice(&(UNICODE | NTLM | EXTENDED_SESSIONSECURITY).to_le_bytes());
        raw.extend_from_slice(&[9; 8]);
        let c = parse_challenge(&raw).unwrap();
        assert!(c.target_info.is_empty());
        let neg = negotiate();
        let inputs = Inputs {
            negotiate: &neg,
            challenge_raw: &raw,
            client_challenge: [1; 8],
            now: 5,
            target_name: "HTTP/p",
            channel_binding: [0; 16],
        };
        let a_raw = authenticate(&spec_account(), &c, &inputs).unwrap();
        let a = parse_authenticate(&a_raw).unwrap();
        // 16 (proof) + 28 (fixed part) + 0 (target info) + 4: a v2 response, not 24 bytes.
        assert_eq!(a.nt_response.len(), 16 + 28 + 4);
        assert!(verify_v2(&spec_account(), &[9; 8], a.nt_response));
    }

    #[test]
    fn refuses_bad_challenges() {
        assert_eq!(
            parse_challenge(b"NTLMSSP\0"),
            Err(ChallengeError::Truncated)
        );
        assert_eq!(
            parse_challenge(b"hello world"),
            Err(ChallengeError::NotChallenge)
        );
        let mut raw = Vec::new();
        raw.extend_from_slice(SIGNATURE);
        raw.extend_from_slice(&2u32.to_le_bytes());
        raw.extend_from_slice(&[0; 8]);
        raw.extend_from_slice(&(UNICODE | NTLM).to_le_bytes());
        raw.extend_from_slice(&[0; 8]);
        assert_eq!(parse_challenge(&raw), Err(ChallengeError::Weak));
        // TargetInfo pointing past the end.
        let mut raw2 = raw.clone();
        raw2[20..24]
            .copy_from_slice(&(NTLM | EXTENDED_SESSIONSECURITY | TARGET_INFO).to_le_bytes());
        raw2.extend_from_slice(&[0; 8]);
        raw2.extend_from_slice(&[16, 0, 16, 0, 200, 0, 0, 0]);
        assert_eq!(parse_challenge(&raw2), Err(ChallengeError::Truncated));
    }

    #[test]
    fn accounts_split_like_windows() {
        let a = Account::new("CORP\\bob", "x");
        assert_eq!((a.domain.as_str(), a.user.as_str()), ("CORP", "bob"));
        let a = Account::new("bob@corp.example", "x");
        assert_eq!(
            (a.domain.as_str(), a.user.as_str()),
            ("corp.example", "bob")
        );
        assert_eq!(Account::new("bob", "x").display(), "bob");
        assert_eq!(Account::new("CORP\\bob", "x").display(), "CORP\\bob");
    }

    proptest::proptest! {
        /// Whatever the network sends as a challenge: an answer or an error, never a panic.
        #[test]
        fn challenge_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut raw = SIGNATURE.to_vec();
            raw.extend_from_slice(&2u32.to_le_bytes());
            raw.extend_from_slice(&bytes);
            if let Ok(c) = parse_challenge(&raw) {
                let neg = negotiate();
                let inputs = Inputs { negotiate: &neg, challenge_raw: &raw, client_challenge: [0; 8], now: 0, target_name: "HTTP/x", channel_binding: [0; 16] };
                let _ = authenticate(&spec_account(), &c, &inputs);
            }
            let _ = parse_challenge(&bytes);
        }
    }
}
