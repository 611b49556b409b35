#![no_main]
//! The audit record parser and verifier over arbitrary chain files.
use libfuzzer_sys::fuzz_target;

#[path = "../entry.rs"]
mod entry;

fuzz_target!(|data: &[u8]| entry::audit_verify(data));
