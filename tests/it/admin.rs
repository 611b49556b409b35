//! The admin API: listing, visibility, bulk decisions, quorum.

use crate::harness::*;

const QUORUM_RULES: &str = r#"package approvalplane

approval contains {"id": "two.people", "reason": "needs two", "route": "finance-oncall", "quorum": 2, "risk": "critical"} if {
    input.request.path == "/v1/transfers"
}
approval contains {"id": "eng", "reason": "deploy", "route": "eng-oncall"} if input.request.path == "/v1/deploys"
approval contains {"id": "bulk", "reason": "bulk", "route": "finance-oncall"} if startswith(input.request.path, "/v1/bulk/")
"#;

async fn post(app: &TestApp, path: &str) -> Reply {
    call(
        "POST",
        &format!("{}/stripe{path}", app.agent),
        &[("authorization", "Bearer agent-token-1"), ("prefer", "wait=0")],
        "",
    )
    .await
}

#[tokio::test]
async fn quorum_counts_distinct_approvers_and_one_reject_rejects() {
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.rules = vec![("q.rego", QUORUM_RULES.to_string())];
    let app = TestApp::start(o).await;
    let id = post(&app, "/v1/transfers").await.json()["error"]["approval_id"].as_str().unwrap().to_string();
    let a = app.decide(ALICE, &id, "approve", None).await;
    assert_eq!((a.status, a.json()["status"].as_str()), (200, Some("pending")));
    let again = app.decide(ALICE, &id, "approve", None).await;
    assert_eq!(again.json()["approvals"], serde_json::json!(["alice"]), "the same approver counts once");
    let b = app.decide(BOB, &id, "approve", None).await;
    assert_eq!(b.json()["status"], "approved");
    assert_eq!(b.json()["approvals"], serde_json::json!(["alice", "bob"]));
    let r = post(&app, "/v1/transfers").await;
    assert_eq!(r.status, 200, "retry forwards the approved request");
    let id2 = post(&app, "/v1/transfers").await.json()["error"]["approval_id"].as_str().unwrap().to_string();
    app.decide(ALICE, &id2, "approve", None).await;
    let rej = app.decide(BOB, &id2, "reject", Some("no")).await;
    assert_eq!(rej.json()["status"], "rejected");
}

#[tokio::test]
async fn approvers_see_and_decide_only_their_routes_and_bulk_decisions() {
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.rules = vec![("q.rego", QUORUM_RULES.to_string())];
    let app = TestApp::start(o).await;
    let eng = post(&app, "/v1/deploys").await.json()["error"]["approval_id"].as_str().unwrap().to_string();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            post(&app, &format!("/v1/bulk/{i}")).await.json()["error"]["approval_id"].as_str().unwrap().to_string(),
        );
    }
    // Alice (finance) sees the three bulk ones, oldest first; carol (eng) sees the deploy.
    let list = |token: &'static str| {
        let url = format!("{}/v1/admin/approvals?status=pending", app.control);
        async move { call("GET", &url, &[("authorization", &format!("Bearer {token}"))], "").await.json() }
    };
    let alice = list(ALICE).await;
    let seen: Vec<&str> = alice["approvals"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(seen, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(alice["next"].is_null());
    let carol = list(CAROL).await;
    assert_eq!(carol["approvals"].as_array().unwrap().len(), 1);
    let g = call(
        "GET",
        &format!("{}/v1/admin/approvals/{eng}", app.control),
        &[("authorization", &format!("Bearer {ALICE}"))],
        "",
    )
    .await;
    assert_eq!(g.status, 403);
    assert_eq!(app.decide(ALICE, &eng, "approve", None).await.status, 403);
    // Bulk: alice rejects her three and, in the same call, tries the deploy.
    let mut all = ids.clone();
    all.push(eng.clone());
    let body = serde_json::json!({"ids": all, "decision": "reject", "reason": "bulk cleanup"}).to_string();
    let r = call(
        "POST",
        &format!("{}/v1/admin/approvals/decision", app.control),
        &[("authorization", &format!("Bearer {ALICE}")), ("content-type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let statuses: Vec<u64> =
        r.json()["results"].as_array().unwrap().iter().map(|x| x["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 200, 200, 403]);
    let results = r.json()["results"].clone();
    for (n, id) in all.iter().enumerate() {
        assert_eq!(results[n]["id"], id.as_str(), "{results}");
    }
    assert_eq!(results[0]["approval"]["status"], "rejected", "{results}");
    assert_eq!(results[0]["approval"]["id"], ids[0].as_str());
    assert!(results[0].get("error").is_none(), "{results}");
    assert!(results[3]["error"].is_string() && results[3].get("approval").is_none(), "{results}");
    // Deciding again: each item says already_decided and carries the approval.
    let again = serde_json::json!({"ids": [ids[0]], "decision": "approve"}).to_string();
    let r2 = call(
        "POST",
        &format!("{}/v1/admin/approvals/decision", app.control),
        &[("authorization", &format!("Bearer {ALICE}"))],
        &again,
    )
    .await;
    let item = r2.json()["results"][0].clone();
    assert_eq!((item["status"].as_u64(), item["error"].as_str()), (Some(409), Some("already_decided")), "{item}");
    assert_eq!(item["approval"]["status"], "rejected", "{item}");
    assert!(list(ALICE).await["approvals"].as_array().unwrap().is_empty());
    assert_eq!(list(CAROL).await["approvals"].as_array().unwrap().len(), 1);
    // Malformed bodies change nothing.
    for bad in ["{", r#"{"decision": "approve", "extra": 1}"#, r#"{"ids": [], "decision": "approve"}"#] {
        let r = call(
            "POST",
            &format!("{}/v1/admin/approvals/decision", app.control),
            &[("authorization", &format!("Bearer {CAROL}"))],
            bad,
        )
        .await;
        assert_eq!(r.status, 400, "{bad}");
    }
    assert_eq!(list(CAROL).await["approvals"].as_array().unwrap().len(), 1);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn request_approval_api_for_agents_that_ask_first() {
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.rules = vec![(
        "api.rego",
        r#"package approvalplane
approval contains {"id": "api.refund", "reason": "refunds over $500", "route": "finance-oncall", "risk": "medium",
                   "summary": {"amount": sprintf("$%.2f", [input.payload.amount])}} if {
    input.kind == "api"
    input.action == "issue_refund"
    input.payload.amount > 500
}
allow contains {"id": "api.small", "reason": "small"} if { input.kind == "api"; input.payload.amount <= 500 }
deny contains {"id": "api.never", "reason": "never delete everything"} if input.action == "delete_all"
"#
        .to_string(),
    )];
    let app = TestApp::start(o).await;
    let ask = |body: serde_json::Value| {
        let url = format!("{}/v1/approvals", app.agent);
        async move {
            call(
                "POST",
                &url,
                &[("authorization", "Bearer agent-token-1"), ("content-type", "application/json")],
                &body.to_string(),
            )
            .await
        }
    };
    let small = ask(serde_json::json!({"action": "issue_refund", "payload": {"amount": 20.0}})).await;
    assert_eq!(small.status, 200, "{}", small.text());
    assert_eq!((small.json()["approved"].as_bool(), small.json()["status"].as_str()), (Some(true), Some("approved")));
    let denied = ask(serde_json::json!({"action": "delete_all"})).await;
    assert_eq!((denied.status, denied.error_type().as_str()), (403, "policy_denied"));
    let big = serde_json::json!({"action": "issue_refund", "payload": {"customer": "cus_4193", "amount": 2400.00},
                                 "risk": "high", "policy_hints": ["refund"], "justification": "duplicate charge"});
    let p = ask(big.clone()).await;
    assert_eq!(p.status, 200);
    let a = p.json();
    assert_eq!((a["status"].as_str(), a["approved"].as_bool()), (Some("pending"), Some(false)));
    assert_eq!(a["risk"], "high", "the agent may raise the risk");
    assert_eq!(a["summary"]["amount"], "$2400.00");
    let id = a["id"].as_str().unwrap().to_string();
    // Same action and payload: the same approval.
    assert_eq!(ask(big.clone()).await.json()["id"], id.as_str());
    assert_eq!(app.decide(BOB, &id, "reject", Some("not a duplicate")).await.status, 200);
    let again = ask(big).await.json();
    assert_eq!((again["id"].as_str(), again["status"].as_str()), (Some(id.as_str()), Some("rejected")));
    assert_eq!(again["reason"], "not a duplicate");
    // Bad input.
    for bad in [
        serde_json::json!({}),
        serde_json::json!({"action": ""}),
        serde_json::json!({"action": "x", "risk": "extreme"}),
        serde_json::json!({"action": "x", "paylod": 1}),
    ] {
        let r = ask(bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}");
    }
}
