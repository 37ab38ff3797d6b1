//! What an upstream proxy sends during authentication: the first half of the input as
//! `Proxy-Authenticate` values (one per line), the second as an NTLM CHALLENGE; an
//! AUTHENTICATE is built for every challenge that parses, and must verify.
#![no_main]
use libfuzzer_sys::fuzz_target;
use viaduct::upstream::proxy_auth::{Offer, ntlm};

fuzz_target!(|data: &[u8]| {
    let (values, challenge) = data.split_at(data.len() / 2);
    let _ = Offer::parse(values.split(|b| *b == b'\n'));
    if let Ok(c) = ntlm::parse_challenge(challenge) {
        let negotiate = ntlm::negotiate();
        let inputs = ntlm::Inputs {
            negotiate: &negotiate,
            challenge_raw: challenge,
            client_challenge: [7; 8],
            now: 0,
            target_name: "HTTP/proxy",
            channel_binding: [0; 16],
        };
        let account = ntlm::Account::new("CORP\\bob", "pw");
        if let Ok(m) = ntlm::authenticate(&account, &c, &inputs) {
            let a = ntlm::parse_authenticate(&m).expect("our own message parses");
            assert!(ntlm::verify_v2(&account, &c.server_challenge, a.nt_response));
        }
    }
});
