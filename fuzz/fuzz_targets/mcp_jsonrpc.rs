#![no_main]
//! MCP JSON-RPC message parsing and the protocol-revision checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
