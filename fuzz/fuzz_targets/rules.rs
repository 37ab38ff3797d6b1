//! Rule matching: domain patterns and NO_PROXY lists against names.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, name) = s.split_once('\n').unwrap_or((s, "www.example.com"));
    if let Some(p) = viaduct::routing::DomainPattern::parse(pattern) {
        let _ = p.matches(name);
    }
    if let Ok(Some(m)) = viaduct::routing::parse_no_proxy(pattern)
        && let Ok(t) = viaduct::target::Target::new(name, 443)
    {
        let _ = m.matches(&t, None, &[]);
    }
});
