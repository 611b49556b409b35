//! Replays the committed fuzz corpora (fuzz/corpus/<target>) through the same entry
//! points the cargo-fuzz targets use: nothing may panic.

use std::path::Path;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!out.is_empty(), "{target}: empty corpus");
    out.sort();
    out
}

#[test]
fn qs_form_corpus() {
    for data in corpus("qs_form") {
        if let Ok(s) = std::str::from_utf8(&data) {
            let _ = approvalplane::policy::qs::parse(s);
        }
    }
}

#[test]
fn policy_input_corpus() {
    for data in corpus("policy_input") {
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
        let _ = approvalplane::policy::input::http_input(&view, approvalplane::clock::Timestamp(0));
    }
}

#[test]
fn audit_verify_corpus() {
    for data in corpus("audit_verify") {
        let chain = data
            .split(|&b| b == b'\n')
            .next()
            .and_then(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
            .and_then(|v| v.get("chain").and_then(|c| c.as_str()).map(str::to_string))
            .filter(|c| !c.is_empty() && c.len() < 64 && c.bytes().all(|b| b.is_ascii_alphanumeric()))
            .unwrap_or_else(|| "0".repeat(20));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{chain}-00000000000000000000.jsonl")), &data).unwrap();
        let _ = approvalplane::audit::verify::verify_path(dir.path(), &Default::default());
    }
}

#[test]
fn config_corpus() {
    for data in corpus("config") {
        if let Ok(s) = std::str::from_utf8(&data) {
            let _ = approvalplane::config::Config::parse(Path::new("/fuzz/config.toml"), s);
        }
    }
}

#[test]
fn slack_interaction_corpus() {
    for data in corpus("slack_interaction") {
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
}

#[test]
fn mcp_jsonrpc_corpus() {
    use approvalplane::mcp::protocol;
    for data in corpus("mcp_jsonrpc") {
        if let Ok(v) = approvalplane::policy::json::parse_strict(&data) {
            let _ = protocol::classify(&v);
            let method = v.get("method").and_then(|m| m.as_str()).unwrap_or("");
            let params = v.get("params").cloned().unwrap_or(serde_json::Value::Null);
            let _ = protocol::is_modern(method, &params, Some("2026-07-28"));
            let _ = protocol::check_name_header(method, &params, v.get("name").and_then(|n| n.as_str()));
            let _ = protocol::meta(&params);
        }
        if let Ok(s) = std::str::from_utf8(&data) {
            let _ = protocol::decode_header_value(s);
        }
    }
}
