//! Differential test of the two policy engines: the bytecode VM (RVM), which
//! serves requests, and the tree-walking interpreter (`rules test`, and the
//! fallback when the VM cannot compile a bundle) must give the same combined
//! verdict — decision, rule ids, reason, routes, risk, action, summary,
//! durations, quorum, error — on every input the library is tested with: the
//! `rules explain` cases, the input of every `test_*` rule of the library, and a
//! few odd documents.

use std::path::Path;
use std::sync::{Arc, Mutex};

use approvalplane::clock::Timestamp;
use approvalplane::config::Config;
use approvalplane::explain::{explain, parse_request};
use approvalplane::policy::{combine, BundleSource, EngineKind, RuleSets, Verdict};
use serde_json::{json, Value};

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/explain")
}

/// The input document of every `rules explain` case.
fn explain_inputs(cfg: &Config, policy: &approvalplane::policy::PolicyBundle) -> Vec<(String, Value)> {
    let mut names: Vec<_> = std::fs::read_dir(root().join("cases")).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    let mut out = Vec::new();
    for p in names {
        if p.extension().is_some_and(|x| x == "http" || x == "json" || x == "skip") {
            let Ok(req) = parse_request(&std::fs::read(&p).unwrap()) else { continue };
            let Ok(v) = explain(cfg, policy, &req, Timestamp(1_795_466_193_000)) else { continue };
            if !v["input"].is_null() {
                out.push((p.file_name().unwrap().to_string_lossy().into_owned(), v["input"].clone()));
            }
        }
    }
    out
}

/// Every input document the library's own tests evaluate the rules with.
///
/// Runs the `test_*` rules with the interpreter after putting a recording call in
/// front of every `with input as X` of the test files, so the inputs are exactly
/// the documents the tests build, whatever helper built them.
fn library_test_inputs() -> Vec<(String, Value)> {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let dir = tempfile::tempdir().unwrap();
    for f in approvalplane::policy::rego_files(&rules, true).unwrap() {
        let mut text = std::fs::read_to_string(&f).unwrap();
        if f.file_stem().unwrap().to_string_lossy().ends_with("_test") {
            text = text
                .lines()
                .map(|line| match line.find(" with input as ") {
                    Some(i) if !line.trim_start().starts_with('#') => {
                        let indent = &line[..line.len() - line.trim_start().len()];
                        let expr = line[i + " with input as ".len()..].split(" with ").next().unwrap();
                        format!("{indent}record_input({expr})\n{line}")
                    }
                    _ => line.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        std::fs::write(dir.path().join(f.file_name().unwrap()), text).unwrap();
    }
    let src = BundleSource {
        rules_dir: dir.path().to_path_buf(),
        data_file: Some(rules.join("data.json")),
        with_tests: true,
    };
    let (mut engine, _, _) = approvalplane::policy::build_engine(&src).unwrap();
    let seen: Arc<Mutex<Vec<regorus::Value>>> = Arc::default();
    let sink = seen.clone();
    engine
        .add_extension(
            "record_input".into(),
            1,
            Box::new(move |args: Vec<regorus::Value>| {
                sink.lock().unwrap().extend(args);
                Ok(regorus::Value::Bool(true))
            }),
        )
        .unwrap();
    let results = approvalplane::policy::testing::run_engine(&engine).unwrap();
    assert!(results.len() > 100, "the library has its tests: {}", results.len());
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).map(|r| &r.name).collect();
    assert!(failed.is_empty(), "library tests fail with inputs recorded: {failed:?}");
    let mut out: Vec<(String, Value)> = Vec::new();
    for v in seen.lock().unwrap().iter() {
        let v: Value = serde_json::to_value(v).unwrap();
        if !out.iter().any(|(_, o)| *o == v) {
            out.push((format!("library test input #{}", out.len()), v));
        }
    }
    out
}

/// Documents the rules must survive: other kinds, missing and mistyped fields.
fn odd_inputs() -> Vec<(String, Value)> {
    [
        json!({}),
        json!({"kind": "api", "action": "issue_refund", "payload": {"amount": 2400.0}}),
        json!({"kind": "mcp", "mcp": {"server": "github", "tool": "merge", "arguments": {}}}),
        json!({"kind": "http", "upstream": "stripe", "request": null}),
        json!({"kind": "http", "upstream": "stripe", "request": {"method": "POST", "path": "/v1/refunds", "parsed_body": {"amount": "12x"}}}),
        json!({"kind": "http", "upstream": "stripe", "request": {"method": "POST", "path": "/v1/refunds", "parsed_body": {"amount": 7}}}),
        json!({"kind": "http", "upstream": "stripe", "request": {"method": "POST", "path": "/v1/refunds", "parsed_body": {"charge": "ch_1"}}}),
        json!({"kind": "http", "upstream": "stripe", "request": {"method": "POST", "path": "/v1/refunds", "parsed_body": {"amount": "0070000"}}}),
        json!({"kind": "http", "upstream": "stripe", "request": {"method": "POST", "path": "/v1/refunds", "parsed_body": {"amount": "000"}}}),
        json!({"kind": "http", "upstream": "stripe", "request": {"method": "POST", "path": "/v1/refunds", "parsed_body": {"amount": "١٢"}}}),
        json!({"kind": "http", "upstream": "stripe", "request": {"method": "POST", "path": "/v1/refunds", "parsed_body": null}}),
        json!({"kind": "http", "upstream": "stripe", "request": {"method": "POST", "path": "/v1/payouts", "parsed_body": {"amount": "x"}}}),
        json!({"kind": "http", "upstream": "github", "request": {"method": "DELETE", "path": 5}}),
        json!({"kind": "http", "upstream": "github", "request": {"method": 5, "path": "/repos/a/b"}}),
        json!({"kind": "http", "upstream": 7, "request": {"method": "DELETE", "path": "/x"}}),
        json!({"kind": "http", "upstream": "sendgrid", "request": {"method": "POST", "path": "/v3/mail/send", "parsed_body": {"personalizations": "x"}}}),
        json!({"kind": "http", "upstream": "postgrest", "request": {"method": "DELETE", "path": "/orders", "query": []}}),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, v)| (format!("odd input #{i}"), v))
    .collect()
}

#[test]
fn both_engines_give_the_same_verdict_on_every_library_input() {
    let cfg = Config::load(&root().join("config.toml")).unwrap();
    let policy = approvalplane::app::load_policy(&cfg).unwrap();
    assert!(policy.has_program(), "the shipped library compiles to the VM");
    assert_eq!(policy.serving_engine(), EngineKind::Rvm, "the VM serves the shipped library");
    let mut inputs = explain_inputs(&cfg, &policy);
    assert!(inputs.len() >= 38, "explain cases: {}", inputs.len());
    let n_explain = inputs.len();
    inputs.extend(library_test_inputs());
    assert!(inputs.len() > n_explain + 100, "library test inputs: {}", inputs.len() - n_explain);
    inputs.extend(odd_inputs());
    if let Some(p) = std::env::var_os("DUMP_INPUTS") {
        std::fs::write(p, serde_json::to_string(&inputs).unwrap()).unwrap();
    }
    let routes = cfg.route_names();
    let verdict = |r: Result<RuleSets, String>| -> Verdict {
        match r {
            Ok(sets) => combine(&sets, cfg.policy.default, cfg.policy.mode, &routes),
            Err(e) => Verdict::error(e),
        }
    };
    let mut diverging = Vec::new();
    for (name, input) in &inputs {
        let vm = verdict(policy.eval_sets_with(input, EngineKind::Rvm));
        let interp = verdict(policy.eval_sets_with(input, EngineKind::Interpreter));
        // Error texts differ between the engines; that both failed is what counts.
        let same = match (&vm.error, &interp.error) {
            (Some(_), Some(_)) => vm.decision == interp.decision,
            _ => vm == interp,
        };
        if !same {
            diverging.push(format!("{name}: {input}\n  vm:          {vm:?}\n  interpreter: {interp:?}"));
        }
        // The serving path (the VM, falling back to the interpreter) agrees too.
        let (served, _) = policy.evaluate(input);
        let served_same = match (&served.error, &interp.error) {
            (Some(_), Some(_)) => true,
            _ => served == interp,
        };
        if !served_same {
            diverging.push(format!("{name} (served): {input}\n  served:      {served:?}\n  interpreter: {interp:?}"));
        }
    }
    assert!(diverging.is_empty(), "{} of {} inputs diverge:\n{}", diverging.len(), inputs.len(), diverging.join("\n"));
}
