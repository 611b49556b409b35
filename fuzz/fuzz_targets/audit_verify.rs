#![no_main]
//! The audit record parser and verifier over arbitrary chain files.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Name the file after the first record's chain, so fuzzing reaches past it.
    let chain = data
        .split(|&b| b == b'\n')
        .next()
        .and_then(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .and_then(|v| v.get("chain").and_then(|c| c.as_str()).map(str::to_string))
        .filter(|c| !c.is_empty() && c.len() < 64 && c.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "0".repeat(20));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{chain}-00000000000000000000.jsonl")), data).unwrap();
    let _ = approvalplane::audit::verify::verify_path(dir.path(), &Default::default());
});
