//! `rules test`: runs every `test_*` rule, as `opa test` does.
//!
//! Uses the tree-walking interpreter (the only engine that supports `with`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{build_engine, BundleSource, PolicyError};

/// One test's outcome.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// `data.<package>.test_<name>`.
    pub name: String,
    pub passed: bool,
    /// Why it failed: `false`, undefined, or the evaluation error.
    pub detail: Option<String>,
    pub elapsed: Duration,
}

/// Finds `test_*` rule paths in the engine's modules, in file order, deduplicated.
///
/// Rule and test files are restricted to the packages `approvalplane` and
/// `approvalplane_test`, so a package is a single name.
fn test_rules(engine: &regorus::Engine) -> Result<Vec<String>, PolicyError> {
    let ast = engine.get_ast_as_json().map_err(|e| PolicyError::Compile(e.to_string()))?;
    let ast: Value = serde_json::from_str(&ast).map_err(|e| PolicyError::Compile(e.to_string()))?;
    let mut out = Vec::new();
    for m in ast.as_array().map(Vec::as_slice).unwrap_or_default() {
        let module = m.get("ast").unwrap_or(m);
        let Some(package) = module.pointer("/package/refr/Var/value").and_then(Value::as_str) else { continue };
        let Some(rules) = module.get("rules").and_then(Value::as_array) else { continue };
        for r in rules {
            let Some(head) = r.pointer("/Spec/head").and_then(Value::as_object) else { continue };
            let name = head.values().find_map(|h| h.pointer("/refr/Var/value")).and_then(Value::as_str);
            if let Some(name) = name.filter(|n| n.starts_with("test_")) {
                let path = format!("data.{package}.{name}");
                if !out.contains(&path) {
                    out.push(path);
                }
            }
        }
    }
    Ok(out)
}

/// Runs every `test_*` rule under `dir`.
pub fn run(dir: &Path, data_file: Option<&Path>) -> Result<Vec<TestResult>, PolicyError> {
    let src = BundleSource { rules_dir: dir.to_path_buf(), data_file: data_file.map(PathBuf::from), with_tests: true };
    let (engine, _files, _hash) = build_engine(&src)?;
    run_engine(&engine)
}

/// Runs every `test_*` rule loaded in `engine` (each on its own clone).
pub fn run_engine(engine: &regorus::Engine) -> Result<Vec<TestResult>, PolicyError> {
    let names = test_rules(engine)?;
    let mut results = Vec::new();
    for name in names {
        let mut e = engine.clone();
        let start = Instant::now();
        let r = e.eval_rule(name.clone());
        let elapsed = start.elapsed();
        let (passed, detail) = match r {
            Ok(regorus::Value::Bool(true)) => (true, None),
            Ok(regorus::Value::Undefined) => (false, Some("undefined".to_string())),
            Ok(v) => (false, Some(format!("evaluated to {v}"))),
            Err(e) => (false, Some(format!("error: {e}"))),
        };
        results.push(TestResult { name, passed, detail, elapsed });
    }
    Ok(results)
}
