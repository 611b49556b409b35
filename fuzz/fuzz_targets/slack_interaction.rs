#![no_main]
//! The Slack signature check and the interaction payload parser.
use libfuzzer_sys::fuzz_target;

#[path = "../entry.rs"]
mod entry;

fuzz_target!(|data: &[u8]| entry::slack_interaction(data));
