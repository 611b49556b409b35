//! Policy: Rego rules compiled once into a bundle, evaluated per request.
//!
//! Owns loading (`.rego` files and the data file), the bundle hash, evaluation with
//! regorus (the bytecode VM, one per thread; the interpreter with strict builtin
//! errors as fallback, see [`EngineKind`]) and the policy input document. Combining the three rule sets into a
//! decision is the pure [`combine`] module; running `test_*` rules is [`testing`].
//!
//! It does not know about HTTP, the store or the audit log.

pub mod combine;
pub mod input;
pub mod json;
pub mod qs;
pub mod testing;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use combine::{combine, ApprovalPlan, Decision, RuleSets, Verdict};

use crate::config::{DefaultDecision, PolicyMode};

/// Why rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Compile(String),
    #[error("data file {path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("rule file {path} declares package {package:?}; rule files declare `package approvalplane`, tests `package approvalplane_test`")]
    Package { path: PathBuf, package: String },
}

/// The package rule files declare.
pub const PACKAGE: &str = "approvalplane";
/// The package test files declare.
pub const TEST_PACKAGE: &str = "approvalplane_test";

/// The synthetic entry point: all three sets in one evaluation.
const ENTRY_MODULE: &str = r#"package approvalplane_entry

result := {
    "deny": [x | some x in data.approvalplane.deny],
    "approval": [x | some x in data.approvalplane.approval],
    "allow": [x | some x in data.approvalplane.allow],
}
"#;
const ENTRY_RULE: &str = "data.approvalplane_entry.result";

/// What a bundle is built from.
#[derive(Debug, Clone)]
pub struct BundleSource {
    pub rules_dir: PathBuf,
    pub data_file: Option<PathBuf>,
    /// Include `*_test.rego` files (for `rules test`).
    pub with_tests: bool,
}

/// Lists `.rego` files under `dir`, sorted, optionally without `*_test.rego`.
pub fn rego_files(dir: &Path, with_tests: bool) -> Result<Vec<PathBuf>, PolicyError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| PolicyError::Read { path: d.clone(), source })?;
        for e in rd {
            let e = e.map_err(|source| PolicyError::Read { path: d.clone(), source })?;
            // Hidden entries are not rules: editors' swap files, and the `..data`
            // and `..<timestamp>` folders of a mounted Kubernetes ConfigMap (which
            // would load every file twice).
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = e.path();
            let ft = e.file_type().map_err(|source| PolicyError::Read { path: p.clone(), source })?;
            if ft.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rego") {
                let is_test = p.file_stem().and_then(|s| s.to_str()).is_some_and(|s| s.ends_with("_test"));
                if with_tests || !is_test {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The two evaluators.
///
/// Requests are decided by regorus's bytecode VM (RVM) when it can compile the
/// bundle and every rule file carries [`VM_SAFE_MARKER`]: compiled once, one VM
/// per thread. Otherwise the interpreter decides. The tree-walking interpreter runs
/// `rules test` (the VM does not compile `with`), serves a bundle the VM cannot
/// compile, and decides again any single request on which the VM failed or
/// produced an undefined value; an error of the interpreter is a deny.
///
/// Two differences of regorus 0.14.1's VM shape the shipped library (and are
/// documented for rule writers in docs/policy.md): `x := <undefined>` does not
/// fail a rule body (bind with `=` where a value may be missing), and a builtin
/// error inside a rule body ends that body as a false condition would, instead of
/// failing the evaluation (guard every builtin argument's type). The marker is a
/// file author's statement that neither matters for that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// regorus's bytecode VM: compiled once, one VM per thread.
    Rvm,
    /// The tree-walking interpreter.
    Interpreter,
}

/// The line by which a rule file's author states that it is safe for the VM:
/// every builtin argument is type-guarded (so no builtin error can occur) and
/// every value that may be missing is bound with `=`. The VM serves a bundle
/// only when every rule file carries it; otherwise the interpreter does.
pub const VM_SAFE_MARKER: &str = "# approvalplane: vm-safe";

/// Whether a rule file's text carries [`VM_SAFE_MARKER`] on a line of its own.
fn is_vm_safe(text: &str) -> bool {
    text.lines().any(|l| l.trim_end() == VM_SAFE_MARKER)
}

/// Most VM instructions one decision may execute (regorus's default is 25,000).
const RVM_MAX_INSTRUCTIONS: usize = 10_000_000;

static BUNDLE_IDS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's VM and the bundle it was loaded with.
    static VM: RefCell<Option<(u64, RegoVM)>> = const { RefCell::new(None) };
}

/// Converts the input document without cloning it first.
fn to_regorus(input: &Value) -> Result<regorus::Value, String> {
    use serde::Deserialize;
    regorus::Value::deserialize(input).map_err(|e| format!("input document: {e}"))
}

/// Whether an undefined value hides anywhere in `v`, as a value or as the text
/// `<undefined>` (what a builtin makes of one). The VM can bind a variable to an
/// undefined value (`x := missing` does not fail a body there) and carry it into
/// an element that the interpreter would not have produced.
fn has_undefined(v: &regorus::Value) -> bool {
    match v {
        regorus::Value::Undefined => true,
        regorus::Value::String(s) => s.contains("<undefined>"),
        regorus::Value::Array(a) => a.iter().any(has_undefined),
        regorus::Value::Set(s) => s.iter().any(has_undefined),
        regorus::Value::Object(o) => o.iter().any(|(k, v)| has_undefined(k) || has_undefined(v)),
        _ => false,
    }
}

/// The three sets out of the entry rule's value. Only the sets' elements are
/// converted to JSON (the combiner and the audit read them).
fn sets_of(out: &regorus::Value) -> Result<RuleSets, String> {
    if has_undefined(out) {
        return Err("the rules produced an undefined value".into());
    }
    let regorus::Value::Object(members) = out else {
        let shown = serde_json::to_value(out).map_err(|e| e.to_string())?;
        return Err(format!("rules did not evaluate to the three sets (got {shown})"));
    };
    let take = |k: &str| -> Result<Vec<Value>, String> {
        match members.get(&regorus::Value::from(k)) {
            Some(regorus::Value::Array(a)) => {
                a.iter().map(|x| serde_json::to_value(x).map_err(|e| e.to_string())).collect()
            }
            None | Some(regorus::Value::Null) => Ok(Vec::new()),
            Some(o) => Err(format!(
                "data.approvalplane.{k} is not a set: {}",
                serde_json::to_value(o).map_err(|e| e.to_string())?
            )),
        }
    };
    Ok(RuleSets { deny: take("deny")?, approval: take("approval")?, allow: take("allow")? })
}

/// Compiled rules plus what is needed to evaluate and describe them.
pub struct PolicyBundle {
    id: u64,
    hash: String,
    files: Vec<PathBuf>,
    template: Engine,
    pool: Mutex<Vec<Engine>>,
    program: Option<Arc<Program>>,
    /// Every rule file carries [`VM_SAFE_MARKER`].
    vm_safe: bool,
    data: regorus::Value,
    default: DefaultDecision,
    mode: PolicyMode,
    routes: BTreeSet<String>,
}

impl std::fmt::Debug for PolicyBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyBundle").field("hash", &self.hash).field("files", &self.files).finish()
    }
}

/// Builds an engine with the files of `src` loaded, strict, with data.
pub fn build_engine(src: &BundleSource) -> Result<(Engine, Vec<PathBuf>, String), PolicyError> {
    build_engine_with_data(src).map(|(e, f, h, _, _)| (e, f, h))
}

/// Also returns the data and whether every rule file (tests aside) is marked safe
/// for the VM.
#[allow(clippy::type_complexity)]
fn build_engine_with_data(
    src: &BundleSource,
) -> Result<(Engine, Vec<PathBuf>, String, regorus::Value, bool), PolicyError> {
    let files = rego_files(&src.rules_dir, src.with_tests)?;
    let mut engine = Engine::new();
    engine.set_strict_builtin_errors(true);
    engine.set_rego_v0(false);
    let mut hasher = Sha256::new();
    hasher.update(b"approvalplane-policy-bundle-v1\n");
    let mut vm_safe = true;
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|source| PolicyError::Read { path: f.clone(), source })?;
        let is_test = f.file_stem().and_then(|s| s.to_str()).is_some_and(|s| s.ends_with("_test"));
        vm_safe &= is_test || is_vm_safe(&text);
        let rel = f.strip_prefix(&src.rules_dir).unwrap_or(f);
        hasher.update(format!("file {} {}\n", rel.display(), text.len()).as_bytes());
        hasher.update(text.as_bytes());
        let package =
            engine.add_policy(f.display().to_string(), text).map_err(|e| PolicyError::Compile(e.to_string()))?;
        let package = package.trim_start_matches("data.").to_string();
        let expected = if is_test { TEST_PACKAGE } else { PACKAGE };
        if package != expected {
            return Err(PolicyError::Package { path: f.clone(), package });
        }
    }
    check_rule_kinds(&engine)?;
    let mut data = regorus::Value::new_object();
    if let Some(d) = &src.data_file {
        let text = std::fs::read_to_string(d).map_err(|source| PolicyError::Read { path: d.clone(), source })?;
        hasher.update(format!("data {}\n", text.len()).as_bytes());
        hasher.update(text.as_bytes());
        let v = json::parse_strict(text.as_bytes())
            .map_err(|e| PolicyError::Data { path: d.clone(), message: e.to_string() })?;
        if !v.is_object() {
            return Err(PolicyError::Data { path: d.clone(), message: "must hold a JSON object".into() });
        }
        if v.get(PACKAGE).is_some() || v.get(TEST_PACKAGE).is_some() {
            return Err(PolicyError::Data {
                path: d.clone(),
                message: format!("top-level keys {PACKAGE:?} and {TEST_PACKAGE:?} are reserved for rules"),
            });
        }
        data = regorus::Value::from(v);
        engine.add_data(data.clone()).map_err(|e| PolicyError::Data { path: d.clone(), message: e.to_string() })?;
    }
    Ok((engine, files, format!("sha256:{}", hex::encode(hasher.finalize())), data, vm_safe))
}

/// Refuses a name defined both as a function and as a value (or set) in one
/// package. regorus 0.14.1 accepts such a bundle, and its bytecode VM then recurses
/// without end on the first request that reaches the name, which would take the
/// whole process down: the load fails instead, naming both places.
fn check_rule_kinds(engine: &Engine) -> Result<(), PolicyError> {
    fn root(v: &Value) -> Option<(&str, u64)> {
        if let Some(var) = v.get("Var") {
            return Some((var.get("value")?.as_str()?, var.get("span")?.get("line")?.as_u64()?));
        }
        ["RefDot", "RefBrack"].iter().find_map(|k| root(v.get(*k)?.get("refr")?))
    }
    let ast = engine.get_ast_as_json().map_err(|e| PolicyError::Compile(e.to_string()))?;
    let modules: Value = serde_json::from_str(&ast).map_err(|e| PolicyError::Compile(e.to_string()))?;
    // (package, name) -> (a function?, "file:line")
    let mut seen: std::collections::HashMap<(String, String), (bool, String)> = Default::default();
    for m in modules.as_array().into_iter().flatten() {
        let file = m["source"]["file"].as_str().unwrap_or("?");
        let package = root(&m["ast"]["package"]["refr"]).map_or(String::new(), |(p, _)| p.to_string());
        for r in m["ast"]["rules"].as_array().into_iter().flatten() {
            let (refr, function) = if let Some(head) = r.get("Spec").map(|s| &s["head"]) {
                match (head.get("Func"), head.get("Compr").or_else(|| head.get("Set"))) {
                    (Some(f), _) => (&f["refr"], true),
                    (None, Some(v)) => (&v["refr"], false),
                    (None, None) => continue,
                }
            } else if let Some(d) = r.get("Default") {
                (&d["refr"], d["args"].as_array().is_some_and(|a| !a.is_empty()))
            } else {
                continue;
            };
            let Some((name, line)) = root(refr) else { continue };
            let here = format!("{file}:{line}");
            match seen.get(&(package.clone(), name.to_string())) {
                Some((f, there)) if *f != function => {
                    return Err(PolicyError::Compile(format!(
                        "{here}: {name} is defined both as a function and as a value (also at {there}); \
                         give one of them another name"
                    )));
                }
                Some(_) => {}
                None => {
                    seen.insert((package.clone(), name.to_string()), (function, here));
                }
            }
        }
    }
    Ok(())
}

impl PolicyBundle {
    /// Loads and compiles the serving rules (without tests).
    pub fn load(
        rules_dir: &Path,
        data_file: Option<&Path>,
        default: DefaultDecision,
        mode: PolicyMode,
        routes: BTreeSet<String>,
    ) -> Result<PolicyBundle, PolicyError> {
        let src = BundleSource {
            rules_dir: rules_dir.to_path_buf(),
            data_file: data_file.map(Path::to_path_buf),
            with_tests: false,
        };
        let (mut engine, files, hash, data, vm_safe) = build_engine_with_data(&src)?;
        engine
            .add_policy("<approvalplane-entry>".to_string(), ENTRY_MODULE.to_string())
            .map_err(|e| PolicyError::Compile(e.to_string()))?;
        // Compile now so semantic errors (unknown functions, bad references) fail the
        // load, not the first request.
        let compiled =
            engine.compile_with_entrypoint(&ENTRY_RULE.into()).map_err(|e| PolicyError::Compile(e.to_string()))?;
        let program = match Compiler::compile_from_policy(&compiled, &[ENTRY_RULE]) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "the bytecode VM cannot compile these rules; using the interpreter");
                None
            }
        };
        if program.is_some() && !vm_safe {
            tracing::info!("not every rule file is marked {VM_SAFE_MARKER:?}; the interpreter decides requests");
        }
        Ok(PolicyBundle {
            id: BUNDLE_IDS.fetch_add(1, Ordering::Relaxed),
            hash,
            files,
            template: engine,
            pool: Mutex::new(Vec::new()),
            program,
            vm_safe,
            data,
            default,
            mode,
            routes,
        })
    }

    /// Whether the bytecode VM could compile these rules.
    pub fn has_program(&self) -> bool {
        self.program.is_some()
    }

    /// `sha256:<hex>` over every rule file and the data file.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn routes(&self) -> &BTreeSet<String> {
        &self.routes
    }

    /// The engine that decides requests: the VM when it compiled the bundle.
    pub fn serving_engine(&self) -> EngineKind {
        if self.program.is_some() && self.vm_safe {
            EngineKind::Rvm
        } else {
            EngineKind::Interpreter
        }
    }

    /// Evaluates the rules on `input` as requests are decided and returns the raw
    /// sets: with the serving engine, and with the interpreter again when the VM
    /// failed or produced an undefined value.
    pub fn eval_sets(&self, input: &Value) -> Result<RuleSets, String> {
        self.eval_sets_value(to_regorus(input)?)
    }

    fn eval_sets_value(&self, input: regorus::Value) -> Result<RuleSets, String> {
        if let (EngineKind::Rvm, Some(program)) = (self.serving_engine(), &self.program) {
            // A clone of the document is a reference count, kept for the fallback.
            match self.eval_rvm(program, input.clone()).and_then(|out| sets_of(&out)) {
                Ok(sets) => return Ok(sets),
                Err(e) => tracing::debug!(error = %e, "bytecode VM failed; deciding with the interpreter"),
            }
        }
        sets_of(&self.eval_interpreter(input)?)
    }

    /// Evaluates with one engine only, without falling back (the differential test
    /// and the benchmark compare the two).
    pub fn eval_sets_with(&self, input: &Value, kind: EngineKind) -> Result<RuleSets, String> {
        let converted = to_regorus(input)?;
        let out = match (kind, &self.program) {
            (EngineKind::Rvm, Some(program)) => self.eval_rvm(program, converted)?,
            (EngineKind::Rvm, None) => return Err("the bytecode VM could not compile these rules".into()),
            (EngineKind::Interpreter, _) => self.eval_interpreter(converted)?,
        };
        sets_of(&out)
    }

    fn eval_rvm(&self, program: &Arc<Program>, input: regorus::Value) -> Result<regorus::Value, String> {
        VM.with(|cell| {
            let mut slot = cell.borrow_mut();
            let vm = match &mut *slot {
                Some((id, vm)) if *id == self.id => vm,
                slot => {
                    let mut vm = RegoVM::new();
                    vm.load_program(program.clone());
                    vm.set_data(self.data.clone()).map_err(|e| e.to_string())?;
                    vm.set_strict_builtin_errors(true);
                    vm.set_max_instructions(RVM_MAX_INSTRUCTIONS);
                    &mut slot.insert((self.id, vm)).1
                }
            };
            vm.set_input(input);
            let out = vm.execute().map_err(|e| e.to_string());
            // Do not keep this request's document alive until the next one.
            vm.set_input(regorus::Value::Null);
            out
        })
    }

    fn eval_interpreter(&self, input: regorus::Value) -> Result<regorus::Value, String> {
        let mut engine = self
            .pool
            .lock()
            .map_err(|_| "policy engine pool poisoned".to_string())?
            .pop()
            .unwrap_or_else(|| self.template.clone());
        engine.set_input(input);
        let out = engine.eval_rule(ENTRY_RULE.to_string());
        if let Ok(mut pool) = self.pool.lock() {
            if pool.len() < 64 {
                pool.push(engine);
            }
        }
        out.map_err(|e| e.to_string())
    }

    /// Evaluates and combines. Never fails: any error is a deny verdict.
    pub fn evaluate(&self, input: &Value) -> (Verdict, RuleSets) {
        self.verdict(to_regorus(input).and_then(|doc| self.eval_sets_value(doc)))
    }

    /// [`PolicyBundle::evaluate`] on a document already built as regorus values
    /// ([`input::http_input`] builds it so on the request path).
    pub fn evaluate_value(&self, input: regorus::Value) -> (Verdict, RuleSets) {
        self.verdict(self.eval_sets_value(input))
    }

    fn verdict(&self, sets: Result<RuleSets, String>) -> (Verdict, RuleSets) {
        match sets {
            Ok(sets) => (combine(&sets, self.default, self.mode, &self.routes), sets),
            Err(e) => (Verdict::error(e), RuleSets::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle(rules: &[(&str, &str)]) -> Result<PolicyBundle, PolicyError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in rules {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let routes = ["finance-oncall".to_string()].into_iter().collect();
        PolicyBundle::load(dir.path(), None, DefaultDecision::Deny, PolicyMode::Enforce, routes)
    }

    const REFUNDS: &str = r#"package approvalplane

approval contains {"id": "stripe.refund.large", "reason": "over $500", "route": "finance-oncall", "risk": "high"} if {
    input.request.method == "POST"
    input.request.path == "/v1/refunds"
    to_number(input.request.parsed_body.amount) > 50000
}

allow contains {"id": "get", "reason": "reads are fine"} if input.request.method == "GET"
"#;

    fn req(method: &str, amount: &str) -> Value {
        json!({"kind": "http", "request": {"method": method, "path": "/v1/refunds", "parsed_body": {"amount": amount}}})
    }

    /// regorus accepts a name used for a function and a value, and its VM then
    /// recurses without end: the load refuses it, naming the file and line.
    #[test]
    fn a_name_defined_as_function_and_value_is_refused() {
        let text = "package approvalplane\n\nentry(e) if is_object(e)\n\nentry := e if {\n    e = input.x\n}\n";
        let e = bundle(&[("bad.rego", text)]).expect_err("refused");
        let msg = e.to_string();
        assert!(msg.contains("bad.rego:5") && msg.contains("entry is defined both"), "{msg}");
        assert!(bundle(&[("ok.rego", REFUNDS)]).is_ok());
    }

    #[test]
    fn evaluates_and_combines() {
        let b = bundle(&[("stripe.rego", REFUNDS)]).unwrap();
        assert!(b.hash().starts_with("sha256:"));
        assert_eq!(b.evaluate(&req("POST", "240000")).0.decision, Decision::RequireApproval);
        assert_eq!(b.evaluate(&req("GET", "1")).0.decision, Decision::Allow);
        assert_eq!(b.evaluate(&req("POST", "100")).0.decision, Decision::Deny);
    }

    #[test]
    fn runtime_errors_deny() {
        let b = bundle(&[("stripe.rego", REFUNDS)]).unwrap();
        // Not marked vm-safe: the interpreter decides, and to_number("lots") is a
        // builtin error under strict mode, which denies.
        assert_eq!(b.serving_engine(), EngineKind::Interpreter);
        let (v, _) = b.evaluate(&req("POST", "lots"));
        assert_eq!(v.decision, Decision::Deny);
        assert!(v.error.is_some(), "{v:?}");
        // regorus 0.14.1's VM ends a rule body that raises as if its condition
        // were false: the rule does not match. That is why the VM serves only
        // files whose authors mark every builtin argument as type-guarded.
        assert_eq!(b.eval_sets_with(&req("POST", "lots"), EngineKind::Rvm).unwrap(), RuleSets::default());
    }

    #[test]
    fn the_vm_serves_files_marked_safe_for_it() {
        let marked = format!("{VM_SAFE_MARKER}\n{REFUNDS}");
        let b = bundle(&[("stripe.rego", &marked)]).unwrap();
        assert_eq!(b.serving_engine(), EngineKind::Rvm);
        assert_eq!(b.evaluate(&req("POST", "240000")).0.decision, Decision::RequireApproval);
        assert_eq!(b.evaluate(&req("GET", "1")).0.decision, Decision::Allow);
        // One unmarked file puts the whole bundle on the interpreter.
        let b = bundle(&[("stripe.rego", &marked), ("site.rego", "package approvalplane\n")]).unwrap();
        assert_eq!(b.serving_engine(), EngineKind::Interpreter);
        // Test files need no marker.
        let b = bundle(&[("stripe.rego", &marked), ("stripe_test.rego", "package approvalplane_test\n")]).unwrap();
        assert_eq!(b.serving_engine(), EngineKind::Rvm);
    }

    #[test]
    fn undefined_values_from_the_vm_are_decided_by_the_interpreter() {
        // On the VM, `x := missing` binds x to an undefined value instead of
        // failing the body; an object comprehension then carries it.
        let rules = r#"package approvalplane
# approvalplane: vm-safe

approval contains {"id": "a", "reason": "r", "route": "finance-oncall", "summary": {"n": n | n := input.request.parsed_body.missing}} if {
    input.request.method == "POST"
}
"#;
        let b = bundle(&[("a.rego", rules)]).unwrap();
        assert_eq!(b.serving_engine(), EngineKind::Rvm);
        let vm = b.eval_sets_with(&req("POST", "1"), EngineKind::Rvm).unwrap_err();
        assert!(vm.contains("undefined"), "{vm}");
        let (v, sets) = b.evaluate(&req("POST", "1"));
        assert_eq!(v.decision, Decision::RequireApproval);
        assert_eq!(sets, b.eval_sets_with(&req("POST", "1"), EngineKind::Interpreter).unwrap());
        assert_eq!(sets.approval[0]["summary"], json!({}));
    }

    #[test]
    fn the_vm_agrees_on_simple_rules() {
        let b = bundle(&[("stripe.rego", REFUNDS)]).unwrap();
        for (m, a) in [("POST", "240000"), ("GET", "1"), ("POST", "100")] {
            let input = req(m, a);
            assert_eq!(
                b.eval_sets_with(&input, EngineKind::Rvm).unwrap(),
                b.eval_sets_with(&input, EngineKind::Interpreter).unwrap()
            );
        }
    }

    #[test]
    fn invalid_rego_names_file_and_line() {
        let e = bundle(&[("broken.rego", "package approvalplane\n\nallow contains x if {\n  input.a ==\n}\n")])
            .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("broken.rego:"), "{s}");
    }

    #[test]
    fn wrong_package_is_refused() {
        let e = bundle(&[("x.rego", "package other\nallow contains 1 if true\n")]).unwrap_err();
        assert!(matches!(e, PolicyError::Package { .. }), "{e}");
    }

    #[test]
    fn hidden_folders_of_a_mounted_config_map_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let hidden = dir.path().join("..2026_11_23_00_00_00.1");
        std::fs::create_dir_all(&hidden).unwrap();
        std::fs::write(hidden.join("stripe.rego"), REFUNDS).unwrap();
        std::fs::write(dir.path().join("stripe.rego"), REFUNDS).unwrap();
        std::fs::write(dir.path().join(".stripe.rego.swp"), "not rego").unwrap();
        assert_eq!(rego_files(dir.path(), true).unwrap(), vec![dir.path().join("stripe.rego")]);
    }

    #[test]
    fn no_rules_means_default() {
        let b = bundle(&[]).unwrap();
        assert_eq!(b.evaluate(&req("GET", "1")).0.decision, Decision::Deny);
    }
}
