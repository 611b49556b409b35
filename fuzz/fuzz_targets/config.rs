#![no_main]
//! The config parser and validator over arbitrary TOML.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = approvalplane::config::Config::parse(std::path::Path::new("/fuzz/config.toml"), s);
    }
});
