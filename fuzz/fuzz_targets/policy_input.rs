#![no_main]
//! The policy input builder over arbitrary bodies, content types and queries.
use libfuzzer_sys::fuzz_target;

#[path = "../entry.rs"]
mod entry;

fuzz_target!(|data: &[u8]| entry::policy_input(data));
