//! Escalation and expiry, driven by the injected clock (no real sleeps).

use std::sync::Arc;
use std::time::Duration;

use approvalplane::clock::{Clock, ManualClock, SystemClock};

use crate::harness::*;

#[tokio::test]
async fn escalation_then_expiry_on_the_injected_clock() {
    let up = FakeUpstream::start(None).await;
    let clock = ManualClock::new(SystemClock.now());
    let mut o = Options::new(&up);
    o.clock = Arc::new(clock.clone());
    o.server_toml = "hold_timeout = \"200ms\"\n".into();
    let app = TestApp::start(o).await;
    let r = app.refund(240000, &[]).await;
    assert_eq!(r.error_type(), "approval_pending");
    let id = r.json()["error"]["approval_id"].as_str().unwrap().to_string();
    // Carol (finance-leads) may not decide before the escalation.
    assert_eq!(app.decide(CAROL, &id, "approve", None).await.status, 403);
    clock.advance(Duration::from_secs(15 * 60 + 1));
    let mut escalated = false;
    for _ in 0..100 {
        let a = call(
            "GET",
            &format!("{}/v1/admin/approvals/{id}", app.control),
            &[("authorization", &format!("Bearer {ALICE}"))],
            "",
        )
        .await;
        if a.json()["escalated_to"] == serde_json::json!(["finance-leads"]) {
            escalated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(escalated, "escalated at escalate_after");
    // Now carol may see it; expire it by moving past expires_after (1h).
    let a = call(
        "GET",
        &format!("{}/v1/admin/approvals/{id}", app.control),
        &[("authorization", &format!("Bearer {CAROL}"))],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    clock.advance(Duration::from_secs(3600));
    let mut expired = false;
    for _ in 0..100 {
        let a = call(
            "GET",
            &format!("{}/v1/admin/approvals/{id}", app.control),
            &[("authorization", &format!("Bearer {ALICE}"))],
            "",
        )
        .await;
        if a.json()["status"] == "expired" {
            assert!(a.json()["decided_by"].is_null(), "an expiry is not a person's rejection");
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(expired);
    // A decision after expiry changes nothing.
    assert_eq!(app.decide(ALICE, &id, "approve", None).await.status, 409);
    // After an expiry, an identical request starts a new approval.
    let r = app.refund(240000, &[]).await;
    assert_eq!(r.error_type(), "approval_pending");
    assert_ne!(r.json()["error"]["approval_id"], id.as_str());
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_held_request_sees_its_expiry() {
    let up = FakeUpstream::start(None).await;
    let clock = ManualClock::new(SystemClock.now());
    let mut o = Options::new(&up);
    o.clock = Arc::new(clock.clone());
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
    app.wait_pending(1).await;
    clock.advance(Duration::from_secs(2 * 3600));
    let r = held.await.unwrap();
    assert_eq!((r.status, r.error_type().as_str()), (403, "approval_expired"));
    assert_eq!(up.count(), 0);
}
