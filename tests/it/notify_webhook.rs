//! Phone and pager notifications: the signed webhook against a local receiver that
//! checks every signature (with failures and retries), and the ntfy pushes of a
//! running server, including an approver's personal sign-in link.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use approvalplane::approval::Approval;
use approvalplane::clock::SystemClock;
use approvalplane::config::{Config, MapEnv};
use approvalplane::metrics::Metrics;
use approvalplane::notify::deliver::{Outbox, Poster, Retry};
use approvalplane::notify::webhook::{WebhookNotifier, DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use approvalplane::notify::{Change, Notifier};
use approvalplane::reload::LiveSecrets;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::*;

const SECRET: &str = "whsec_test_secret";

fn approval(id: &str, route: &str) -> Approval {
    serde_json::from_value(json!({
        "id": id, "status": "pending", "route": route, "routes": [route], "agent": "support-agent",
        "action": "issue_refund", "risk": "high", "summary": {"amount": "$2,400.00"},
        "justification": "duplicate charge", "rule_ids": ["stripe.refund.large"], "body_sha256": "ab",
        "created_at": "2026-11-23T20:36:33Z", "decided_by": null, "decided_at": null, "reason": null,
        "approvals": [], "quorum": 1, "kind": "http", "upstream": "stripe", "target": "POST /stripe/v1/refunds",
        "risk_reason": "over $500", "policy_bundle": "sha256:x", "expires_at": "2026-11-23T21:36:33Z",
        "escalate_at": null, "escalated_to": [], "decided_via": null
    }))
    .expect("an approval")
}

/// What a receiver does: recompute the signature over the raw body, compare in
/// constant time, and refuse a timestamp more than five minutes off.
pub fn signature_ok(r: &Received, secret: &str) -> bool {
    let (Some(ts), Some(sig)) = (r.headers.get(TIMESTAMP_HEADER), r.headers.get(SIGNATURE_HEADER)) else {
        return false;
    };
    let (Ok(ts), Ok(sig)) = (ts.to_str(), sig.to_str()) else { return false };
    let Ok(t) = ts.parse::<u64>() else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    if now.abs_diff(t) > 300 {
        return false;
    }
    let Some(hex_sig) = sig.strip_prefix("v1=") else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
    m.update(ts.as_bytes());
    m.update(b".");
    m.update(&r.body);
    m.verify_slice(&sig).is_ok()
}

/// A receiver that answers `fail_status` to the first `fail` requests, then 200.
pub async fn receiver(fail: usize, fail_status: u16) -> FakeUpstream {
    let seen = Arc::new(AtomicUsize::new(0));
    FakeUpstream::start_with(
        None,
        Arc::new(move |_r: &Received| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            if n < fail {
                json_response(fail_status, &json!({"error": "try later"}))
            } else {
                json_response(200, &json!({"ok": true}))
            }
        }),
    )
    .await
}

/// The config and secrets a webhook notifier reads: the finance-oncall route's
/// webhook posts to `url` and signs with `secret`.
fn webhook_secrets(url: &str, secret: &str) -> LiveSecrets {
    webhook_config(url, Some(secret))
}

/// The same, with no `webhook_secret_env` at all when `secret` is `None`.
fn webhook_config(url: &str, secret: Option<&str>) -> LiveSecrets {
    let secret_key = if secret.is_some() { "webhook_secret_env = \"HOOK_SECRET\"\n" } else { "" };
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:1\"\ncontrol_listen = \"127.0.0.1:2\"\n\
         [[upstream]]\nname = \"stripe\"\nurl = \"http://127.0.0.1:3\"\n\
         [routes.finance-oncall]\nwebhook_url_env = \"HOOK_URL\"\n{secret_key}\
         [policy]\nrules = \"rules\"\n"
    );
    let cfg = Config::parse(std::path::Path::new("/nonexistent/config.toml"), &toml).expect("config");
    let env = MapEnv::default().with("HOOK_URL", url).with("HOOK_SECRET", secret.unwrap_or(""));
    let (secrets, _) = cfg.resolve_secrets(&env).expect("secrets");
    LiveSecrets::new(cfg, secrets)
}

fn notifier(route: &str, url: &str, metrics: &Arc<Metrics>, retry: Retry) -> WebhookNotifier {
    let outbox =
        Outbox::start("webhook", Poster::new().expect("client"), metrics.clone(), Arc::new(SystemClock), retry);
    WebhookNotifier::new(
        route,
        webhook_secrets(url, SECRET),
        "https://approvals.example.com",
        outbox,
        Arc::new(SystemClock),
    )
}

fn fast_retry(attempts: u32) -> Retry {
    Retry {
        attempts,
        first_backoff: Duration::from_millis(40),
        max_backoff: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn webhook_posts_are_signed_and_retried_until_the_receiver_takes_them() {
    let rx = receiver(2, 503).await;
    let metrics = Arc::new(Metrics::new());
    let n = notifier("finance-oncall", &format!("http://{}/hooks/finance", rx.addr), &metrics, fast_retry(5));

    // Another route's approval is not this webhook's business.
    n.publish(Change::Opened, &approval("apr_00000000000000000002", "eng-oncall"));
    let started = Instant::now();
    n.publish(Change::Opened, &approval("apr_00000000000000000001", "finance-oncall"));
    assert!(started.elapsed() < Duration::from_millis(50), "publish never waits on the network");

    rx.wait_count(3).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let got = rx.received();
    assert_eq!(got.len(), 3, "two failures, then one delivery, and nothing after it");
    let delivery = got[0].headers[DELIVERY_HEADER].clone();
    for r in &got {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hooks/finance"));
        assert!(signature_ok(r, SECRET), "every attempt is signed");
        assert!(!signature_ok(r, "another secret"));
        assert_eq!(r.headers[DELIVERY_HEADER], delivery, "retries keep the delivery id");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["x-approvalplane-event"], "approval.opened");
    }
    let body: Value = serde_json::from_slice(&got[2].body).expect("json");
    assert_eq!(body["type"], "approval.opened");
    assert_eq!(body["route"], "finance-oncall");
    assert_eq!(body["approval"]["id"], "apr_00000000000000000001");
    assert_eq!(body["approval"]["summary"]["amount"], "$2,400.00");
    assert_eq!(body["url"], "https://approvals.example.com/ui/approvals/apr_00000000000000000001");
    assert!(!String::from_utf8_lossy(&got[2].body).contains("/ui/link/"), "no sign-in link on a shared channel");
    // A body changed in transit fails the check.
    let mut tampered = got[2].clone();
    tampered.body = bytes::Bytes::from(String::from_utf8_lossy(&got[2].body).replace("2,400", "9,400"));
    assert!(!signature_ok(&tampered, SECRET));
    assert!(!metrics.render().contains("approvalplane_notifier_errors_total{notifier=\"webhook\"}"));
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_is_given_up_and_counted() {
    let down = receiver(usize::MAX, 500).await;
    let refusing = receiver(usize::MAX, 400).await;
    let metrics = Arc::new(Metrics::new());
    let a = notifier("finance-oncall", &format!("http://{}/h", down.addr), &metrics, fast_retry(3));
    let b = notifier("finance-oncall", &format!("http://{}/h", refusing.addr), &metrics, fast_retry(3));
    // Nothing listens here at all.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let c = notifier("finance-oncall", &format!("http://{gone}/h"), &metrics, fast_retry(2));
    let ap = approval("apr_00000000000000000003", "finance-oncall");
    a.publish(Change::Decided, &ap);
    b.publish(Change::Decided, &ap);
    c.publish(Change::Decided, &ap);
    down.wait_count(3).await;
    refusing.wait_count(1).await;
    let want = "approvalplane_notifier_errors_total{notifier=\"webhook\"} 3";
    for _ in 0..100 {
        if metrics.render().contains(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(metrics.render().contains(want), "{}", metrics.render());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(down.count(), 3, "5xx is retried up to the attempt limit");
    assert_eq!(refusing.count(), 1, "a 4xx other than 408/425/429 is not retried");
    assert!(down.received().iter().all(|r| signature_ok(r, SECRET)));
}

#[tokio::test]
async fn the_running_server_sends_signed_webhooks_and_phone_pushes_with_a_personal_link() {
    let up = FakeUpstream::start(None).await;
    let hooks = receiver(1, 502).await;
    let ntfy = receiver(0, 200).await;
    let mut o = Options::new(&up);
    o.finance_route_toml = "webhook_url_env = \"FIN_HOOK_URL\"\nwebhook_secret_env = \"FIN_HOOK_SECRET\"\n\
                            ntfy_url_env = \"FIN_NTFY_URL\"\n"
        .into();
    o.alice_toml = "ntfy_url_env = \"ALICE_NTFY_URL\"\n".into();
    o.env = vec![
        ("FIN_HOOK_URL".into(), format!("http://{}/hooks/finance", hooks.addr)),
        ("FIN_HOOK_SECRET".into(), SECRET.into()),
        ("FIN_NTFY_URL".into(), format!("http://{}/finance-oncall", ntfy.addr)),
        ("ALICE_NTFY_URL".into(), format!("http://{}/alice-private", ntfy.addr)),
    ];
    let app = TestApp::start(o).await;
    let r = app.refund(240000, &[("prefer", "wait=0")]).await;
    let id = r.json()["error"]["approval_id"].as_str().expect("id").to_string();

    // The route's push and alice's own; bob has no topic, so nothing for him.
    ntfy.wait_count(2).await;
    let pushes: Vec<Value> = ntfy.received().iter().map(|r| serde_json::from_slice(&r.body).expect("json")).collect();
    assert!(ntfy.received().iter().all(|r| r.path == "/" && r.method == "POST"), "JSON is published to the server");
    let route = pushes.iter().find(|p| p["topic"] == "finance-oncall").expect("route push");
    assert_eq!(route["title"], "Approval needed: issue_refund");
    assert_eq!(route["priority"], 4, "high risk");
    assert!(route["click"].as_str().expect("click").ends_with(&format!("/ui/approvals/{id}")));
    let msg = route["message"].as_str().expect("message");
    assert!(msg.contains("support-agent") && msg.contains("amount: 240000") && msg.contains("finance-oncall"), "{msg}");
    assert!(!route.to_string().contains("/ui/link/"), "no sign-in link on a shared channel");
    let own = pushes.iter().find(|p| p["topic"] == "alice-private").expect("alice's push");
    let link = own["click"].as_str().expect("click");
    assert!(link.contains("/ui/link/"), "{link}");
    assert_eq!(own["actions"][0]["url"], link);

    // The link signs alice in and opens the approval.
    let path = &link[link.find("/ui/link/").expect("path")..];
    let page = call("GET", &format!("{}{path}", app.control), &[], "").await;
    assert_eq!(page.status, 200);
    let pre = page.headers["set-cookie"].to_str().expect("ascii").split(';').next().expect("pair").to_string();
    let t = page.text();
    let i = t.find("name=\"csrf\" value=\"").expect("csrf") + 19;
    let csrf = t[i..].split('"').next().expect("value");
    let r = call(
        "POST",
        &format!("{}{path}", app.control),
        &[("cookie", &pre), ("content-type", "application/x-www-form-urlencoded")],
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"].to_str().expect("ascii"), format!("/ui/approvals/{id}"));

    // The webhook failed once (502), then was delivered, signed.
    hooks.wait_count(2).await;
    let got = hooks.received();
    assert!(got.iter().all(|r| signature_ok(r, SECRET)));
    let body: Value = serde_json::from_slice(&got[1].body).expect("json");
    assert_eq!((body["type"].as_str(), body["approval"]["id"].as_str()), (Some("approval.opened"), Some(id.as_str())));

    // A decision goes out too.
    assert_eq!(app.decide(BOB, &id, "approve", None).await.status, 200);
    hooks.wait_count(3).await;
    let body: Value = serde_json::from_slice(&hooks.received()[2].body).expect("json");
    assert_eq!(
        (body["type"].as_str(), body["approval"]["status"].as_str()),
        (Some("approval.decided"), Some("approved"))
    );
    ntfy.wait_count(3).await;
    let last: Value = serde_json::from_slice(&ntfy.received()[2].body).expect("json");
    assert_eq!(
        (last["topic"].as_str(), last["title"].as_str()),
        (Some("finance-oncall"), Some("Approved by bob: issue_refund"))
    );
    assert_eq!(ntfy.count(), 3, "no personal push for a decision");
}

/// `webhook_secret_env` is optional (INTERFACE.md §2): without one, the route's
/// webhooks go out unsigned, and the config says so in a warning.
#[tokio::test]
async fn a_webhook_without_a_secret_is_sent_unsigned_and_warned_about() {
    let rx = receiver(0, 200).await;
    let metrics = Arc::new(Metrics::new());
    let live = webhook_config(&format!("http://{}/hooks/finance", rx.addr), None);
    let warnings = live.read(|c, _| c.warnings());
    assert!(warnings.iter().any(|w| w.contains("routes.finance-oncall.webhook_secret_env")), "{warnings:?}");
    let outbox =
        Outbox::start("webhook", Poster::new().expect("client"), metrics.clone(), Arc::new(SystemClock), fast_retry(2));
    let n =
        WebhookNotifier::new("finance-oncall", live, "https://approvals.example.com", outbox, Arc::new(SystemClock));
    n.publish(Change::Opened, &approval("apr_00000000000000000003", "finance-oncall"));
    rx.wait_count(1).await;
    let got = rx.received();
    assert!(got[0].headers.get(SIGNATURE_HEADER).is_none(), "unsigned");
    assert!(got[0].headers.get(TIMESTAMP_HEADER).is_some());
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["approval"]["id"], "apr_00000000000000000003");
}
