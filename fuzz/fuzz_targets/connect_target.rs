//! CONNECT request-targets: any bytes that make a URI must give a Target or a clean error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(uri) = http::Uri::try_from(data)
        && let Ok(t) = viaduct::target::Target::from_connect_uri(&uri)
    {
        let again: http::Uri = t
            .to_string()
            .parse()
            .expect("a parsed target prints as a URI");
        assert_eq!(
            viaduct::target::Target::from_connect_uri(&again).ok(),
            Some(t)
        );
    }
});
