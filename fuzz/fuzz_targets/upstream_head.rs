//! An upstream proxy's answer to CONNECT, as raw bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((len, _))) = viaduct::upstream::http_connect::parse_head(data, "fuzz") {
        assert!(len <= data.len());
    }
});
