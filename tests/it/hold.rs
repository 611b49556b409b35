//! Held requests: exactly one forward of exactly the approved bytes.

use std::time::Duration;

use bytes::Bytes;

use crate::harness::*;

const BODY: &str = "charge=ch_1&amount=240000";

#[tokio::test]
async fn held_request_is_forwarded_once_after_approval() {
    let up = FakeUpstream::start(None).await;
    let app = TestApp::start(Options::new(&up)).await;
    let agent = app.agent.clone();
    let held = tokio::spawn(async move {
        call(
            "POST",
            &format!("{agent}/stripe/v1/refunds"),
            &[
                ("authorization", "Bearer agent-token-1"),
                ("content-type", "application/x-www-form-urlencoded"),
                ("idempotency-key", "first"),
                ("x-approval-justification", "duplicate charge"),
            ],
            BODY,
        )
        .await
    });
    let p = app.wait_pending(1).await;
    let a = &p[0];
    assert_eq!(a["status"], "pending");
    assert_eq!(a["route"], "finance-oncall");
    assert_eq!(a["routes"], serde_json::json!(["finance-oncall"]));
    assert_eq!(a["agent"], "support-agent");
    assert_eq!(a["action"], "issue_refund");
    assert_eq!(a["risk"], "high");
    assert_eq!(a["justification"], "duplicate charge");
    assert_eq!(a["rule_ids"], serde_json::json!(["stripe.refund.large"]));
    assert_eq!(a["summary"]["amount"], "240000");
    assert_eq!(a["quorum"], 1);
    assert_eq!(a["approvals"], serde_json::json!([]));
    assert_eq!(a["body_sha256"].as_str().unwrap().len(), 64);
    for k in ["id", "created_at", "decided_by", "decided_at", "reason"] {
        assert!(a.get(k).is_some(), "{k}");
    }
    assert_eq!(up.count(), 0, "held, not forwarded");
    let id = a["id"].as_str().unwrap();
    // An agent token cannot decide; an approver of another route cannot either.
    assert_eq!(app.decide(AGENT_TOKEN, id, "approve", None).await.status, 403);
    assert_eq!(app.decide(CAROL, id, "approve", None).await.status, 403);
    assert_eq!(app.decide(ALICE, "apr_00000000000000000000", "approve", None).await.status, 404);
    assert_eq!(app.decide(ALICE, id, "maybe", None).await.status, 400);
    assert_eq!(app.decide(ALICE, id, "reject", None).await.status, 400, "reject needs a reason");
    let d = app.decide(ALICE, id, "approve", Some("verified with the customer")).await;
    assert_eq!(d.status, 200, "{}", d.text());
    assert_eq!(d.json()["status"], "approved");
    assert_eq!(d.json()["decided_by"], "alice");
    assert_eq!(d.json()["approvals"], serde_json::json!(["alice"]));
    // Double submit.
    let again = app.decide(ALICE, id, "approve", None).await;
    assert_eq!((again.status, again.error_type().as_str()), (409, "already_decided"));
    assert_eq!(again.json()["error"]["approval"]["id"], id);
    assert_eq!(
        (again.json()["id"].as_str(), again.json()["status"].as_str()),
        (Some(id), Some("approved")),
        "the object"
    );
    let r = held.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.received();
    assert_eq!(got.len(), 1, "exactly one forward");
    assert_eq!(got[0].body, Bytes::from(BODY));
    assert_eq!(got[0].headers.get("idempotency-key").unwrap(), "first");
    assert_eq!(got[0].headers.get("authorization").unwrap(), UPSTREAM_SECRET);
    // A later identical request starts a new approval: it is not forwarded.
    let r = app.refund(240000, &[("prefer", "wait=0")]).await;
    assert_eq!((r.status, r.error_type().as_str()), (409, "approval_pending"));
    assert_ne!(r.json()["error"]["approval_id"], id);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn approve_and_reject_racing_have_one_winner() {
    let up = FakeUpstream::start(None).await;
    let app = TestApp::start(Options::new(&up)).await;
    for round in 0..10 {
        let amount = 100_000 + round;
        let agent = app.agent.clone();
        let held = tokio::spawn(async move {
            call(
                "POST",
                &format!("{agent}/stripe/v1/refunds"),
                &[("authorization", "Bearer agent-token-1"), ("content-type", "application/x-www-form-urlencoded")],
                &format!("charge=ch_1&amount={amount}"),
            )
            .await
        });
        let p = app.wait_pending(1).await;
        let id = p[0]["id"].as_str().unwrap().to_string();
        let (a, b, c) = tokio::join!(
            app.decide(ALICE, &id, "approve", None),
            app.decide(BOB, &id, "reject", Some("no")),
            app.decide(ALICE, &id, "approve", None),
        );
        let wins = [a.status, b.status, c.status].iter().filter(|s| **s == 200).count();
        assert_eq!(wins, 1, "round {round}: {} {} {}", a.text(), b.text(), c.text());
        let r = held.await.unwrap();
        let forwarded = up.received().iter().filter(|g| g.body == format!("charge=ch_1&amount={amount}")).count();
        if b.status == 200 {
            assert_eq!((r.status, r.error_type().as_str(), forwarded), (403, "approval_rejected", 0));
        } else {
            assert_eq!((r.status, forwarded), (200, 1));
        }
    }
}

#[tokio::test]
async fn rejection_names_the_approver_and_reason_and_is_remembered() {
    let up = FakeUpstream::start(None).await;
    let app = TestApp::start(Options::new(&up)).await;
    let a2 = app.agent.clone();
    let held = tokio::spawn(async move {
        call(
            "POST",
            &format!("{a2}/stripe/v1/refunds"),
            &[("authorization", "Bearer agent-token-1"), ("content-type", "application/x-www-form-urlencoded")],
            BODY,
        )
        .await
    });
    let id = app.wait_pending(1).await[0]["id"].as_str().unwrap().to_string();
    let d = app.decide(BOB, &id, "reject", Some("not a duplicate")).await;
    assert_eq!(d.status, 200);
    let r = held.await.unwrap();
    assert_eq!(r.status, 403);
    let e = r.json();
    assert_eq!(e["error"]["type"], "approval_rejected");
    assert_eq!(e["error"]["approval_id"], id.as_str());
    assert_eq!(e["error"]["reason"], "not a duplicate");
    assert_eq!(e["error"]["decided_by"], "bob");
    // An identical retry is refused at once, with no new approval.
    let r = app.refund(240000, &[("idempotency-key", "fresh")]).await;
    assert_eq!((r.status, r.error_type().as_str()), (403, "approval_rejected"));
    assert_eq!(r.json()["error"]["approval_id"], id.as_str());
    assert!(app.pending().await.is_empty());
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn hold_timeout_answers_pending_and_a_retry_after_approval_is_forwarded_once() {
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.server_toml = "hold_timeout = \"300ms\"\n".into();
    let app = TestApp::start(o).await;
    let r = app.refund(240000, &[]).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_type(), "approval_pending");
    assert!(r.headers.get("retry-after").is_some());
    let id = r.json()["error"]["approval_id"].as_str().unwrap().to_string();
    let status_url = r.json()["error"]["status_url"].as_str().unwrap().to_string();
    assert!(status_url.ends_with(&format!("/v1/approvals/{id}")), "{status_url}");
    // The agent can poll its status; another agent cannot see it.
    let s = call("GET", &status_url, &[("authorization", "Bearer agent-token-1")], "").await;
    assert_eq!((s.status, s.json()["status"].as_str()), (200, Some("pending")));
    let s = call("GET", &status_url, &[("authorization", "Bearer agent-token-2")], "").await;
    assert_eq!(s.status, 404);
    // Prefer: wait=0 answers at once, attached to the same approval.
    let r = app.refund(240000, &[("prefer", "wait=0")]).await;
    assert_eq!(r.json()["error"]["approval_id"], id.as_str());
    assert_eq!(app.decide(ALICE, &id, "approve", None).await.status, 200);
    let s = call("GET", &status_url, &[("authorization", "Bearer agent-token-1")], "").await;
    assert_eq!((s.json()["status"].as_str(), s.json()["approved"].as_bool()), (Some("approved"), Some(true)));
    assert_eq!(up.count(), 0, "nobody was holding: the grant waits for a retry");
    let r = app.refund(240000, &[("idempotency-key", "retry-1")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count(), 1);
    let r = app.refund(240000, &[("idempotency-key", "retry-2")]).await;
    assert_eq!((r.status, r.error_type().as_str()), (409, "approval_pending"));
    assert_ne!(r.json()["error"]["approval_id"], id.as_str(), "a new approval");
    assert_eq!(up.count(), 1, "the second retry is not forwarded");
}

#[tokio::test]
async fn a_client_that_disconnects_and_retries_gets_one_forward() {
    let up = FakeUpstream::start(None).await;
    let app = TestApp::start(Options::new(&up)).await;
    let agent = app.agent.clone();
    let held = tokio::spawn(async move {
        call(
            "POST",
            &format!("{agent}/stripe/v1/refunds"),
            &[("authorization", "Bearer agent-token-1"), ("content-type", "application/x-www-form-urlencoded")],
            BODY,
        )
        .await
    });
    let id = app.wait_pending(1).await[0]["id"].as_str().unwrap().to_string();
    held.abort();
    let _ = held.await;
    // The pending approval survives the disconnect.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.pending().await.len(), 1);
    assert_eq!(app.decide(ALICE, &id, "approve", None).await.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.count(), 0, "no connection was held: nothing forwarded yet");
    // Two identical retries at once: exactly one is forwarded.
    let (r1, r2) = tokio::join!(app.refund(240000, &[]), app.refund(240000, &[("prefer", "wait=1")]));
    let mut statuses = [r1.status, r2.status];
    statuses.sort();
    assert_eq!(statuses[0], 200, "{} / {}", r1.text(), r2.text());
    assert_eq!(statuses[1], 409);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn two_held_connections_share_one_approval_and_one_forward() {
    let up = FakeUpstream::start(None).await;
    let app = TestApp::start(Options::new(&up)).await;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let agent = app.agent.clone();
        tasks.push(tokio::spawn(async move {
            call(
                "POST",
                &format!("{agent}/stripe/v1/refunds"),
                &[("authorization", "Bearer agent-token-1"), ("content-type", "application/x-www-form-urlencoded")],
                BODY,
            )
            .await
        }));
    }
    let p = app.wait_pending(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.decide(ALICE, p[0]["id"].as_str().unwrap(), "approve", None).await.status, 200);
    let mut kinds = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        kinds.push(if r.status == 200 { "forwarded".to_string() } else { r.error_type() });
    }
    kinds.sort();
    assert_eq!(kinds, ["approval_used", "forwarded"]);
    assert_eq!(up.count(), 1);
}

/// A shadowed deny beside an enforced approval: the request is held (never denied),
/// the approval gives the approval rule's reason, and the decision is recorded with
/// what the rules asked for.
#[tokio::test]
async fn a_shadowed_deny_beside_an_enforced_approval_holds() {
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.rules.push((
        "shadow.rego",
        r#"package approvalplane

deny contains {"id": "refund.freeze", "reason": "would freeze refunds", "mode": "shadow"} if {
    input.request.path == "/v1/refunds"
}
"#
        .to_string(),
    ));
    let app = TestApp::start(o).await;
    let r = app.refund(240000, &[("prefer", "wait=0")]).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_type(), "approval_pending");
    let p = app.wait_pending(1).await;
    assert_eq!(p[0]["rule_ids"], serde_json::json!(["stripe.refund.large"]));
    let decision = app.records().into_iter().find(|r| r["kind"] == "decision").expect("a decision record");
    assert_eq!(decision["decision"], "require_approval");
    assert_eq!(decision["matched"], "deny");
    assert_eq!(decision["shadow"], true);
    assert_eq!(
        decision["rule_ids"],
        serde_json::json!(["stripe.refund.large", "refund.freeze"]),
        "the rule that held first, then the shadowed one"
    );
    assert_eq!(up.count(), 0);
}

/// Credential-looking words in the agent's justification are masked in the audit
/// record, as on the cards.
#[tokio::test]
async fn credentials_in_a_justification_never_reach_the_audit_log() {
    let up = FakeUpstream::start(None).await;
    let app = TestApp::start(Options::new(&up)).await;
    let secret = "sk_live_abcdefghijklmnopq";
    let why = format!("the key is {secret}, please refund");
    let r = app.refund(240000, &[("prefer", "wait=0"), ("x-approval-justification", &why)]).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let records = app.records();
    let requested = records.iter().find(|r| r["kind"] == "approval_requested").expect("approval_requested");
    assert_eq!(requested["justification"], "the key is [redacted] please refund");
    let text = std::fs::read_dir(app.audit_dir())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    assert!(!text.contains(secret), "the credential reached the audit log");
}

/// An Idempotency-Key on a held request: reused with other bytes it is refused
/// (`idempotency_conflict`); another key on the same bytes attaches to the same
/// approval.
#[tokio::test]
async fn an_idempotency_key_reused_with_other_bytes_is_refused() {
    let up = FakeUpstream::start(None).await;
    let app = TestApp::start(Options::new(&up)).await;
    let r = app.refund(240000, &[("prefer", "wait=0"), ("idempotency-key", "k-1")]).await;
    assert_eq!(r.error_type(), "approval_pending", "{}", r.text());
    let r = app.refund(250000, &[("prefer", "wait=0"), ("idempotency-key", "k-1")]).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_type(), "idempotency_conflict");
    let refused = app.records().into_iter().filter(|r| r["kind"] == "decision" && r["decision"] == "deny").count();
    assert_eq!(refused, 1, "the conflict is recorded");
    let r = app.refund(240000, &[("prefer", "wait=0"), ("idempotency-key", "k-2")]).await;
    assert_eq!(r.error_type(), "approval_pending");
    assert_eq!(app.pending().await.len(), 1, "one approval for one action");
    assert_eq!(up.count(), 0);
}
