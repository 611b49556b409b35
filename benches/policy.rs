//! Rego evaluation cost per decision for the shipped rules library, with the
//! bytecode VM (RVM) and with the tree-walking interpreter.
//!
//! `cargo bench --bench policy`

use std::path::Path;

use approvalplane::clock::Timestamp;
use approvalplane::config::Config;
use approvalplane::explain::{explain, parse_request};
use approvalplane::policy::EngineKind;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn inputs() -> (approvalplane::policy::PolicyBundle, Vec<(String, serde_json::Value)>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/explain");
    let cfg = Config::load(&root.join("config.toml")).unwrap();
    let policy = approvalplane::app::load_policy(&cfg).unwrap();
    let mut v = Vec::new();
    let mut cases: Vec<_> = std::fs::read_dir(root.join("cases")).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    for p in cases {
        if p.extension().is_some_and(|x| x == "http" || x == "json") {
            let req = parse_request(&std::fs::read(&p).unwrap()).unwrap();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            v.push((name, explain(&cfg, &policy, &req, Timestamp(1_795_466_193_000)).unwrap()["input"].clone()));
        }
    }
    (policy, v)
}

fn bench(c: &mut Criterion) {
    let (policy, cases) = inputs();
    let inputs: Vec<serde_json::Value> = cases.iter().map(|(_, v)| v.clone()).collect();
    let mut g = c.benchmark_group("shipped_library_per_decision");
    for (name, kind) in [("rvm", EngineKind::Rvm), ("interpreter", EngineKind::Interpreter)] {
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                let r = policy.eval_sets_with(black_box(&inputs[i % inputs.len()]), kind);
                i += 1;
                black_box(r)
            })
        });
    }
    // The whole decision: input document in, combined verdict out.
    g.bench_function("evaluate_and_combine", |b| {
        let mut i = 0;
        b.iter(|| {
            let r = policy.evaluate(black_box(&inputs[i % inputs.len()]));
            i += 1;
            black_box(r)
        })
    });
    g.finish();
    // Each case on its own, to find the rules that cost the most.
    let mut g = c.benchmark_group("shipped_library_per_case_rvm");
    for (name, input) in &cases {
        g.bench_function(name.as_str(), |b| {
            b.iter(|| black_box(policy.eval_sets_with(black_box(input), EngineKind::Rvm)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
