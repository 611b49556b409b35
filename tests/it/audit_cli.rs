//! The audit log of a full run verifies; tampering is detected (through the CLI).

use crate::harness::*;

fn lines(dir: &std::path::Path) -> (std::path::PathBuf, Vec<String>) {
    let f = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    let text = std::fs::read_to_string(&f).unwrap();
    (f, text.lines().map(str::to_string).collect())
}

fn write(f: &std::path::Path, lines: &[String]) {
    std::fs::write(f, lines.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn the_log_of_a_run_verifies_and_tampering_is_detected() {
    let up = FakeUpstream::start(None).await;
    let mut app = TestApp::start(Options::new(&up)).await;
    let said = "customer asked twice, key sk_live_abcdefghijklmnop";
    let r = app.refund(2000, &[("x-approval-justification", said)]).await;
    assert_eq!(r.status, 200);
    // Once the agent has its answer, the log has the decision and the forward.
    let rid = r.headers.get("x-request-id").unwrap().to_str().unwrap().to_string();
    let recs = app.records();
    let of = |kind: &str| recs.iter().find(|x| x["kind"] == kind && x["request_id"] == rid.as_str()).cloned();
    let decision = of("decision").expect("decision record");
    assert_eq!(decision["justification"], "customer asked twice, key [redacted]", "{decision}");
    let fwd = of("forwarded").expect("forwarded record before the response");
    assert_eq!((fwd["outcome"].as_str(), fwd["status"].as_u64()), (Some("ok"), Some(200)), "{fwd}");
    let r = app.refund(240000, &[("prefer", "wait=0")]).await;
    let id = r.json()["error"]["approval_id"].as_str().unwrap().to_string();
    app.decide(ALICE, &id, "approve", Some("ok")).await;
    assert_eq!(app.refund(240000, &[]).await.status, 200);
    app.stop().await;
    let dir = app.audit_dir();
    let (code, out, err) = run_bin(&["audit", "verify", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified"), "{out}");
    let (file, orig) = lines(&dir);
    // One chain file under another name (a copy handed over as evidence) verifies
    // by its records, with a warning; a change to it is still found.
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("evidence.jsonl");
    std::fs::copy(&file, &copy).unwrap();
    let (code, out, err) = run_bin(&["audit", "verify", copy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("not named"), "{err}");
    let mut changed = orig.clone();
    let last = changed.len() - 2;
    changed[last] = changed[last].replacen("\"seq\":", "\"seq\": ", 1);
    write(&copy, &changed);
    let (code, out, err) = run_bin(&["audit", "verify", copy.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let kinds: Vec<String> = orig
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    for k in [
        "genesis",
        "policy_loaded",
        "decision",
        "forwarded",
        "approval_requested",
        "approval_decided",
        "grant_used",
        "shutdown",
    ] {
        assert!(kinds.iter().any(|x| x == k), "a {k} record: {kinds:?}");
    }
    let all = orig.join("\n");
    assert!(
        !all.contains(UPSTREAM_SECRET) && !all.contains("sk_live") && !all.contains(AGENT_TOKEN),
        "no secrets in the log"
    );
    for l in &orig {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        for k in ["v", "chain", "seq", "ts", "kind", "prev", "hash"] {
            assert!(v.get(k).is_some(), "{k} in {l}");
        }
    }
    // Each tampering is detected, naming the finding.
    let mid = orig.len() / 2;
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "flipped byte",
            {
                let mut v = orig.clone();
                v[mid] =
                    v[mid].replacen("\"decision\"", "\"decisioN\"", 1).replacen("\"forwarded\"", "\"forwardeD\"", 1);
                if v[mid] == orig[mid] {
                    v[mid] = v[mid].replacen("1", "2", 1);
                }
                v
            },
            "hash mismatch",
        ),
        (
            "deleted record",
            {
                let mut v = orig.clone();
                v.remove(mid);
                v
            },
            "sequence gap",
        ),
        (
            "swapped records",
            {
                let mut v = orig.clone();
                v.swap(mid, mid + 1);
                v
            },
            "sequence gap",
        ),
        (
            "inserted record",
            {
                let mut v = orig.clone();
                v.insert(mid, orig[mid].clone());
                v
            },
            "sequence gap",
        ),
        (
            "reformatted",
            {
                let mut v = orig.clone();
                v[mid] = v[mid].replacen(",", ", ", 1);
                v
            },
            "non-canonical",
        ),
    ];
    for (name, tampered, finding) in cases {
        write(&file, &tampered);
        let (code, out, _) = run_bin(&["audit", "verify", dir.to_str().unwrap()]);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains(finding), "{name}: expected {finding}: {out}");
    }
    // A torn tail (no final newline) is a warning only.
    let mut text = orig.join("\n") + "\n";
    text.push_str("{\"v\":1,\"chain\":");
    std::fs::write(&file, text).unwrap();
    let (code, out, err) = run_bin(&["audit", "verify", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("torn tail"), "{err}");
}
