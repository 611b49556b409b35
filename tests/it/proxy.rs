//! The allowed and denied paths, and bad input.

use std::sync::Arc;

use bytes::Bytes;

use crate::harness::*;

#[tokio::test]
async fn allowed_request_is_forwarded_byte_for_byte_with_the_credential_injected() {
    let up = FakeUpstream::start(None).await;
    let app = TestApp::start(Options::new(&up)).await;
    let body = "charge=ch_1&amount=2000&metadata[order]=6735&expand[0]=charge";
    let r = call(
        "POST",
        &format!("{}/stripe/v1/refunds?expand[]=x", app.agent),
        &[
            ("authorization", "Bearer agent-token-1"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("stripe-version", "2024-06-20"),
            ("idempotency-key", "k1"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "drop me"),
            ("x-approval-justification", "customer asked"),
        ],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"ok": true}));
    assert_eq!(r.headers.get("x-upstream").unwrap(), "fake", "upstream headers relayed");
    let got = up.received();
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!(g.method, "POST");
    assert_eq!(g.path, "/v1/refunds?expand[]=x");
    assert_eq!(g.body, Bytes::from(body));
    assert_eq!(g.headers.get("authorization").unwrap(), UPSTREAM_SECRET, "credential injected");
    assert_eq!(g.headers.get("stripe-version").unwrap(), "2024-06-20");
    assert_eq!(g.headers.get("idempotency-key").unwrap(), "k1");
    assert_eq!(g.headers.get("content-length").unwrap(), &body.len().to_string());
    assert_eq!(g.headers.get("host").unwrap(), &up.addr.to_string());
    for h in ["x-hop", "x-approval-justification"] {
        assert!(g.headers.get(h).is_none(), "{h} not forwarded");
    }
    assert!(!format!("{:?}", g.headers).contains(AGENT_TOKEN), "agent token never reaches the upstream");
}

#[tokio::test]
async fn streaming_responses_are_relayed() {
    let up = FakeUpstream::start_with(
        None,
        Arc::new(|_r: &Received| streaming_response(vec!["data: 1\n\n", "data: 2\n\n", "data: 3\n\n"])),
    )
    .await;
    let app = TestApp::start(Options::new(&up)).await;
    let r = call(
        "GET",
        &format!("{}/stripe/v1/events/stream", app.agent),
        &[("authorization", "Bearer agent-token-1")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "data: 1\n\ndata: 2\n\ndata: 3\n\n");
    assert_eq!(r.headers.get("content-type").unwrap(), "text/event-stream");
}

#[tokio::test]
async fn denied_request_never_reaches_the_upstream() {
    let up = FakeUpstream::start(None).await;
    let app = TestApp::start(Options::new(&up)).await;
    let r = call(
        "POST",
        &format!("{}/stripe/v1/payouts", app.agent),
        &[("authorization", "Bearer agent-token-1"), ("content-type", "application/x-www-form-urlencoded")],
        "amount=100",
    )
    .await;
    assert_eq!(r.status, 403);
    let e = r.json();
    assert_eq!(e["error"]["type"], "policy_denied");
    assert_eq!(e["error"]["rule"], "stripe.payouts.blocked");
    assert!(e["error"]["message"].as_str().unwrap().contains("payouts are not allowed"));
    // No rule matched: the default (deny).
    let r = call(
        "DELETE",
        &format!("{}/stripe/v1/customers/cus_1", app.agent),
        &[("authorization", "Bearer agent-token-1")],
        "",
    )
    .await;
    assert_eq!((r.status, r.json()["error"]["rule"].as_str()), (403, Some("policy.default")));
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_nothing_is_forwarded() {
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.server_toml.push_str("max_body_bytes = 1024\n");
    let app = TestApp::start(o).await;
    let auth = ("authorization", "Bearer agent-token-1");
    let form = ("content-type", "application/x-www-form-urlencoded");
    let json = ("content-type", "application/json");
    let url = format!("{}/stripe/v1/refunds", app.agent);
    type Case<'a> = (Vec<(&'a str, &'a str)>, String, &'a str, u16, &'a str);
    let cases: Vec<Case> = vec![
        (vec![auth, form], "amount=100&amount=999999".into(), "/stripe/v1/refunds", 400, "malformed_body"),
        (vec![auth, json], r#"{"amount":100,"amount":999999}"#.into(), "/stripe/v1/refunds", 400, "malformed_body"),
        (vec![auth, form, ("content-encoding", "gzip")], "x".into(), "/stripe/v1/refunds", 400, "malformed_body"),
        (vec![auth, json], "{not json".into(), "/stripe/v1/refunds", 400, "malformed_body"),
        (vec![auth, form], format!("amount=1&pad={}", "x".repeat(2000)), "/stripe/v1/refunds", 413, "body_too_large"),
        (vec![auth], String::new(), "/nowhere/v1/x", 404, "unknown_upstream"),
        (
            vec![("authorization", "Bearer wrong"), form],
            "amount=1".into(),
            "/stripe/v1/refunds",
            401,
            "agent_unauthorized",
        ),
        (vec![form], "amount=1".into(), "/stripe/v1/refunds", 401, "agent_unauthorized"),
        (vec![auth], String::new(), "/stripe/../v1/admin", 400, "malformed_request"),
        (vec![auth], String::new(), "/stripe/%2e%2e/x", 400, "malformed_request"),
        (vec![auth], String::new(), "/stripe/a%2fb", 400, "malformed_request"),
        (vec![auth], String::new(), "//stripe/v1/x", 400, "malformed_request"),
        (vec![auth, json], r#"{"x":"abc"}"#.into(), "/stripe/v1/broken", 403, "policy_denied"),
    ];
    for (headers, body, path, status, kind) in cases {
        let r = call("POST", &format!("{}{}", app.agent, path), &headers, &body).await;
        assert_eq!((r.status, r.error_type().as_str()), (status, kind), "{path} {body:.40}: {}", r.text());
    }
    // The broken rule's error is named.
    let r = call("POST", &format!("{}/stripe/v1/broken", app.agent), &[auth, json], r#"{"x":"abc"}"#).await;
    assert_eq!(r.json()["error"]["rule"], "policy.error");
    // An oversize body announced by Content-Length is refused without reading it.
    let r = call_bytes("POST", &url, &[auth, form], Bytes::from(vec![b'a'; 4096])).await;
    assert_eq!(r.status, 413);
    assert_eq!(up.count(), 0, "nothing was forwarded");
    // The control endpoints are not on the agent listener.
    let r = call("GET", &format!("{}/v1/admin/approvals", app.agent), &[auth], "").await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn agent_tokens_cannot_use_the_admin_api() {
    let up = FakeUpstream::start(None).await;
    let app = TestApp::start(Options::new(&up)).await;
    let r =
        call("GET", &format!("{}/v1/admin/approvals", app.control), &[("authorization", "Bearer agent-token-1")], "")
            .await;
    assert_eq!(r.status, 403);
    let r = call("GET", &format!("{}/v1/admin/approvals", app.control), &[], "").await;
    assert_eq!(r.status, 401);
    let r = call("GET", &format!("{}/healthz", app.control), &[], "").await;
    assert_eq!(r.status, 200);
    let r = call("GET", &format!("{}/readyz", app.control), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
}
