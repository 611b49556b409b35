//! Replays the committed fuzz corpora (fuzz/corpus/<target>) through the same entry
//! points the cargo-fuzz targets use: nothing may panic.

use std::path::Path;

#[path = "../../fuzz/entry.rs"]
mod entry;

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
        entry::qs_form(&data);
    }
}

#[test]
fn policy_input_corpus() {
    for data in corpus("policy_input") {
        entry::policy_input(&data);
    }
}

#[test]
fn audit_verify_corpus() {
    for data in corpus("audit_verify") {
        entry::audit_verify(&data);
    }
}

#[test]
fn config_corpus() {
    for data in corpus("config") {
        entry::config(&data);
    }
}

#[test]
fn slack_interaction_corpus() {
    for data in corpus("slack_interaction") {
        entry::slack_interaction(&data);
    }
}

#[test]
fn mcp_jsonrpc_corpus() {
    for data in corpus("mcp_jsonrpc") {
        entry::mcp_jsonrpc(&data);
    }
}
