//! The fuzz targets' entry points, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and by the corpus replay in `tests/it/fuzz_corpus.rs`,
//! so that CI replays the corpora through exactly the code the fuzzer runs.
#![allow(dead_code)]

/// The qs-style form parser: never panics; what it accepts has no repeated leaf.
pub fn qs_form(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = approvalplane::policy::qs::parse(s);
    }
}

/// The policy input builder over arbitrary bodies, content types and queries:
/// never panics, and the document built as regorus values (what the request path
/// evaluates) is the JSON document (what `rules explain` shows) converted.
pub fn policy_input(data: &[u8]) {
    // Layout: content-type \0 query \0 body.
    let mut parts = data.splitn(3, |&b| b == 0);
    let ct = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let headers = vec![("content-type".to_string(), ct)];
    let view = approvalplane::policy::input::HttpView {
        agent: "fuzz",
        upstream: "u",
        method: "POST",
        path: "/x",
        query: Some(&query),
        headers: &headers,
        body,
        justification: None,
        inject_header: None,
    };
    let now = approvalplane::clock::Timestamp(0);
    let json = approvalplane::policy::input::http_input::<serde_json::Value>(&view, now);
    let direct = approvalplane::policy::input::http_input::<regorus::Value>(&view, now);
    match (json, direct) {
        (Ok(json), Ok(direct)) => assert_eq!(direct, regorus::Value::from(json)),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("the two forms disagree: {a:?} / {b:?}"),
    }
}

/// The audit record parser and verifier over arbitrary chain files.
pub fn audit_verify(data: &[u8]) {
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
}

/// The config parser and validator over arbitrary TOML.
pub fn config(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = approvalplane::config::Config::parse(std::path::Path::new("/fuzz/config.toml"), s);
    }
}

/// The Slack signature check and the interaction payload parser.
pub fn slack_interaction(data: &[u8]) {
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
}

/// MCP JSON-RPC message parsing and the protocol-revision checks.
pub fn mcp_jsonrpc(data: &[u8]) {
    use approvalplane::mcp::protocol;
    if let Ok(v) = approvalplane::policy::json::parse_strict(data) {
        let _ = protocol::classify(&v);
        let method = v.get("method").and_then(|m| m.as_str()).unwrap_or("");
        let params = v.get("params").cloned().unwrap_or(serde_json::Value::Null);
        let _ = protocol::is_modern(method, &params, Some("2026-07-28"));
        let _ = protocol::check_name_header(method, &params, v.get("name").and_then(|n| n.as_str()));
        let _ = protocol::meta(&params);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = protocol::decode_header_value(s);
    }
}
