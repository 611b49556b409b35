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
