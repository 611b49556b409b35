#![no_main]
//! The config parser and validator over arbitrary TOML.
use libfuzzer_sys::fuzz_target;

#[path = "../entry.rs"]
mod entry;

fuzz_target!(|data: &[u8]| entry::config(data));
