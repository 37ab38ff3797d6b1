//! A SOCKS5 server's side of the handshake, as raw bytes: the client must finish with a
//! stream or an error, never panic or hang.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use viaduct::upstream::Credentials;
use viaduct::upstream::socks::{SocksTarget, socks4a, socks5};

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let creds = Credentials {
            user: "u".into(),
            pass: "p".into(),
        };
        let target = SocksTarget::Name("example.com".into(), 443);
        for v4 in [false, true] {
            let (near, mut far) = tokio::io::duplex(4096);
            let _ = far.write_all(data).await;
            drop(far); // then EOF
            let _ = if v4 {
                socks4a(Box::new(near), "fuzz", &target, Some(&creds)).await
            } else {
                socks5(Box::new(near), "fuzz", &target, Some(&creds)).await
            };
        }
    });
});
