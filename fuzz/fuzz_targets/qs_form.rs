#![no_main]
//! The qs-style form parser: never panics; what it accepts has no repeated leaf.
use libfuzzer_sys::fuzz_target;

#[path = "../entry.rs"]
mod entry;

fuzz_target!(|data: &[u8]| entry::qs_form(data));
