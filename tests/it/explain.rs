//! `rules explain` snapshots: one request per library rule (tests/explain/cases),
//! each checked to name its rule, and compared with its reviewed snapshot
//! (tests/explain/snapshots). `UPDATE_SNAPSHOTS=1` rewrites the snapshots.

use std::path::Path;

use approvalplane::clock::Timestamp;
use approvalplane::config::Config;
use approvalplane::explain::{explain, parse_request};

#[test]
fn explain_snapshots_one_per_library_rule() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/explain");
    let cfg = Config::load(&root.join("config.toml")).unwrap();
    let policy = approvalplane::app::load_policy(&cfg).unwrap();
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let snaps = root.join("snapshots");
    std::fs::create_dir_all(&snaps).unwrap();
    let mut cases: Vec<_> = std::fs::read_dir(root.join("cases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "http" || x == "json"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 30, "one case per library rule: found {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let rule = case.file_stem().unwrap().to_str().unwrap().to_string();
        let req = parse_request(&std::fs::read(case).unwrap()).unwrap();
        let mut v = explain(&cfg, &policy, &req, Timestamp(1_795_466_193_000)).unwrap();
        let ids: Vec<String> =
            v["rule_ids"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
        if !ids.contains(&rule) {
            failures.push(format!("{}: expected rule {rule}, got {ids:?} ({})", case.display(), v["decision"]));
            continue;
        }
        // The input document is large and stable; the snapshot keeps what a reviewer reads.
        v.as_object_mut().unwrap().remove("input");
        let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
        let snap = snaps.join(format!("{rule}.json"));
        if update {
            std::fs::write(&snap, &text).unwrap();
        } else {
            match std::fs::read_to_string(&snap) {
                Ok(want) if want == text => {}
                Ok(_) => failures
                    .push(format!("{rule}: explanation changed; review and run with UPDATE_SNAPSHOTS=1\n{text}")),
                Err(_) => failures.push(format!("{rule}: no snapshot {}; run with UPDATE_SNAPSHOTS=1", snap.display())),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
