#![no_main]
//! The Slack signature check and the interaction payload parser.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Layout: timestamp \n signature \n body.
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let ts = parts.next().map(String::from_utf8_lossy);
    let sig = parts.next().map(String::from_utf8_lossy);
    let body = parts.next().unwrap_or_default();
    let _ = approvalplane::slack::verify::verify(b"secret", ts.as_deref(), sig.as_deref(), body, 1_700_000_000);
    if let Some(p) = approvalplane::slack::interactions::form_payload(body) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&p) {
            let _ = approvalplane::slack::interactions::Interaction::parse(v);
        }
    }
});
