//! Shadow mode and safe reload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

const SHADOW_RULES: &str = r#"package approvalplane

approval contains {"id": "refund.shadowed", "reason": "trying out a stricter threshold", "route": "finance-oncall",
                   "mode": "shadow"} if {
    input.request.path == "/v1/refunds"
}
allow contains {"id": "all", "reason": "everything else"} if true
"#;

#[tokio::test]
async fn a_shadowed_approval_rule_lets_the_request_through_and_records_it() {
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.rules = vec![("s.rego", SHADOW_RULES.to_string())];
    let app = TestApp::start(o).await;
    let r = app.refund(240000, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count(), 1);
    assert!(app.pending().await.is_empty());
    let rec = app
        .records()
        .into_iter()
        .find(|v| v["kind"] == "decision" && v["shadow"] == true)
        .expect("a shadow decision record");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["matched"], "require_approval");
    assert_eq!(
        rec["rule_ids"],
        serde_json::json!(["all", "refund.shadowed"]),
        "the allow that acted, then the shadowed approval"
    );
    let m = call("GET", &format!("{}/metrics", app.control), &[], "").await.text();
    assert!(
        m.contains("approvalplane_shadow_decisions_total{upstream=\"stripe\",decision=\"require_approval\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn policy_mode_shadow_never_holds_or_denies() {
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.policy_toml = "mode = \"shadow\"\n".into();
    let app = TestApp::start(o).await;
    assert_eq!(app.refund(240000, &[]).await.status, 200, "would be held");
    let r = call("POST", &format!("{}/stripe/v1/payouts", app.agent), &[("authorization", "Bearer agent-token-1")], "")
        .await;
    assert_eq!(r.status, 200, "would be denied");
    let shadow: Vec<_> = app.records().into_iter().filter(|v| v["kind"] == "decision" && v["shadow"] == true).collect();
    let matched: Vec<&str> = shadow.iter().map(|v| v["matched"].as_str().unwrap()).collect();
    assert_eq!(matched, ["require_approval", "deny"]);
}

fn versioned(v: &str) -> Vec<(String, String)> {
    vec![
        ("a.rego".into(), format!("package approvalplane\nallow contains {{\"id\": \"a.{v}\", \"reason\": \"a\"}} if true\n")),
        ("b.rego".into(), format!("package approvalplane\nallow contains {{\"id\": \"b.{v}\", \"reason\": \"b\"}} if true\n")),
        (
            "a_test.rego".into(),
            format!("package approvalplane_test\ntest_a if {{ \"a.{v}\" in {{e.id | some e in data.approvalplane.allow}} }}\n"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_is_atomic_and_a_broken_change_is_refused() {
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.rules = versioned("v1").into_iter().map(|(n, t)| (Box::leak(n.into_boxed_str()) as &'static str, t)).collect();
    let app = Arc::new(TestApp::start(o).await);
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for c in 0..4 {
        let (app, stop) = (app.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let r = call(
                    "GET",
                    &format!("{}/stripe/v1/charges/{c}-{n}", app.agent),
                    &[("authorization", "Bearer agent-token-1")],
                    "",
                )
                .await;
                statuses.push(r.status);
            }
            statuses
        }));
    }
    let rules = app.rules_dir();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A broken rule file: refused, the old bundle stays.
    std::fs::write(rules.join("broken.rego"), "package approvalplane\nallow contains x if {\n").unwrap();
    let e = app.reloader.reload("test").await.unwrap_err();
    assert!(e.to_string().contains("broken.rego"), "{e}");
    std::fs::remove_file(rules.join("broken.rego")).unwrap();
    // A bundle whose own tests fail: refused too.
    std::fs::write(rules.join("a_test.rego"), "package approvalplane_test\ntest_fails if false\n").unwrap();
    let e = app.reloader.reload("test").await.unwrap_err();
    assert!(e.to_string().contains("test_fails"), "{e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A valid new version.
    for (n, t) in versioned("v2") {
        std::fs::write(rules.join(n), t).unwrap();
    }
    let ok = app.reloader.reload("test").await.unwrap();
    assert!(ok.policy_bundle.starts_with("sha256:"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for l in load {
        let s = l.await.unwrap();
        total += s.len();
        assert!(s.iter().all(|&x| x == 200), "no request failed during reloads");
    }
    assert!(total > 20);
    let recs = app.records();
    let mut seen = std::collections::BTreeSet::new();
    for r in recs.iter().filter(|v| v["kind"] == "decision") {
        let ids: Vec<&str> = r["rule_ids"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        assert!(ids == ["a.v1", "b.v1"] || ids == ["a.v2", "b.v2"], "a mixed bundle: {ids:?}");
        seen.insert(ids[0].to_string());
    }
    assert_eq!(seen.len(), 2, "both bundles served: {seen:?}");
    assert_eq!(recs.iter().filter(|v| v["kind"] == "policy_rejected").count(), 2);
    assert_eq!(recs.iter().filter(|v| v["kind"] == "policy_loaded").count(), 2, "start and one reload");
}

#[tokio::test]
async fn held_requests_keep_their_decision_across_a_reload_and_approver_changes_apply() {
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.watch_rules = true;
    o.policy_toml = "watch_interval = \"100ms\"\n".into();
    let app = TestApp::start(o).await;
    let agent = app.agent.clone();
    let held = tokio::spawn(async move {
        call(
            "POST",
            &format!("{agent}/stripe/v1/refunds"),
            &[("authorization", "Bearer agent-token-1"), ("content-type", "application/x-www-form-urlencoded")],
            "charge=ch_1&amount=240000",
        )
        .await
    });
    let id = app.wait_pending(1).await[0]["id"].as_str().unwrap().to_string();
    // New rules allow every refund; the watcher picks them up.
    std::fs::write(
        app.rules_dir().join("stripe.rego"),
        "package approvalplane\nallow contains {\"id\": \"everything\", \"reason\": \"r\"} if true\n",
    )
    .unwrap();
    let mut switched = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if app.refund(990000, &[("prefer", "wait=0")]).await.status == 200 {
            switched = true;
            break;
        }
    }
    assert!(switched, "the rules watcher reloaded");
    // The held request still waits for its approval under the old decision.
    assert!(app.pending().await.iter().any(|a| a["id"] == id.as_str()));
    // Change an approver: bob leaves finance-oncall, carol joins.
    let cfg = app.dir.path().join("config.toml");
    let text =
        std::fs::read_to_string(&cfg).unwrap().replace("approvers = [\"alice\", \"bob\"]", "approvers = [\"carol\"]");
    std::fs::write(&cfg, text).unwrap();
    app.reloader.reload("sighup").await.unwrap();
    assert_eq!(app.decide(BOB, &id, "approve", None).await.status, 403, "bob was removed");
    assert_eq!(app.decide(CAROL, &id, "approve", None).await.status, 200, "carol was added");
    assert_eq!(held.await.unwrap().status, 200);
    // A broken config is refused and the old one stays active.
    std::fs::write(&cfg, "[server]\nbroken = true\n").unwrap();
    assert!(app.reloader.reload("sighup").await.is_err());
    assert_eq!(app.refund(990000, &[("idempotency-key", "z")]).await.status, 200);
}
