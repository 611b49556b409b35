//! Slack approvals against the fake Slack: the card, its updates, escalation on
//! the injected clock, the interactions endpoint's refusals, who may decide,
//! Socket Mode, and Slack being down or rate limiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use approvalplane::clock::{Clock, ManualClock, SystemClock};
use serde_json::{json, Value};

use crate::fake_slack::*;
use crate::harness::*;

const PEOPLE: &str = r#"
[[approver]]
id = "alice"
slack_user = "U0ALICE"
token_env = "ALICE_TOKEN"

[[approver]]
id = "bob"
slack_user = "U0BOB"
token_env = "BOB_TOKEN"

[[approver]]
id = "carol"
slack_user = "U0CAROL"
token_env = "CAROL_TOKEN"

[routes.finance-oncall]
approvers = ["alice", "bob"]
slack_channel = "C0FINANCE"
slack_usergroup = "S0FINANCE"
escalate_to = "finance-leads"

[routes.finance-leads]
approvers = ["carol"]
slack_channel = "C0LEADS"
slack_usergroup = "S0LEADS"

[routes.eng-oncall]
approvers = ["carol"]
"#;

const QUORUM_RULES: &str = r#"package approvalplane

approval contains {"id": "two.people", "reason": "transfers need two people", "route": "finance-oncall",
                   "quorum": 2, "risk": "critical", "action": "create_transfer"} if {
    input.request.path == "/v1/transfers"
}
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Http,
    Socket,
}

struct SlackTest {
    app: TestApp,
    slack: FakeSlack,
    up: FakeUpstream,
    clock: Arc<dyn Clock>,
}

struct Setup {
    mode: Mode,
    clock: Arc<dyn Clock>,
    rules: Option<Vec<(&'static str, String)>>,
    post_interval: &'static str,
    health: Option<Health>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup { mode: Mode::Http, clock: Arc::new(SystemClock), rules: None, post_interval: "20ms", health: None }
    }
}

impl SlackTest {
    async fn start(s: Setup) -> SlackTest {
        let slack = FakeSlack::start().await;
        slack.known_channels(&["C0FINANCE", "C0LEADS"]);
        slack.set_group("S0FINANCE", &[]);
        slack.set_group("S0LEADS", &[]);
        if let Some(h) = s.health {
            slack.set_health(h);
        }
        let up = FakeUpstream::start(None).await;
        let mut o = Options::new(&up);
        o.clock = s.clock.clone();
        o.people_toml = PEOPLE.into();
        o.server_toml = "hold_timeout = \"10s\"\npublic_url = \"https://approvals.example.com\"\n".into();
        if let Some(r) = s.rules {
            o.rules = r;
        }
        let socket =
            if s.mode == Mode::Socket { "mode = \"socket\"\napp_token_env = \"SLACK_APP_TOKEN\"\n" } else { "" };
        o.extra_toml = format!(
            "[slack]\nbot_token_env = \"SLACK_BOT_TOKEN\"\nsigning_secret_env = \"SLACK_SIGNING_SECRET\"\n\
             api_base = \"{}\"\npost_interval = \"{}\"\n{socket}",
            slack.api_base(),
            s.post_interval
        );
        o.env = vec![
            ("SLACK_BOT_TOKEN".into(), BOT_TOKEN.into()),
            ("SLACK_SIGNING_SECRET".into(), SIGNING_SECRET.into()),
            ("SLACK_APP_TOKEN".into(), APP_TOKEN.into()),
        ];
        let app = TestApp::start(o).await;
        SlackTest { app, slack, up, clock: s.clock }
    }

    fn now_secs(&self) -> u64 {
        self.clock.now().0 / 1000
    }

    /// A refund that needs approval, answered at once; returns the approval id.
    async fn pending_refund(&self, amount: u64) -> String {
        let r =
            self.app.refund(amount, &[("prefer", "wait=0"), ("x-approval-justification", "duplicate charge")]).await;
        assert_eq!(r.error_type(), "approval_pending", "{}", r.text());
        r.json()["error"]["approval_id"].as_str().unwrap().to_string()
    }

    /// Posts a signed interaction, as Slack does.
    async fn interact(&self, payload: &Value) -> Reply {
        let body = form_body(payload);
        let ts = self.now_secs();
        self.post_signed(&body, ts, &sign(SIGNING_SECRET, ts, &body)).await
    }

    async fn post_signed(&self, body: &str, ts: u64, sig: &str) -> Reply {
        let ts = ts.to_string();
        call(
            "POST",
            &format!("{}/slack/interactions", self.app.control),
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-slack-request-timestamp", &ts),
                ("x-slack-signature", sig),
            ],
            body,
        )
        .await
    }

    async fn click(&self, user: &str, action: &str, id: &str, channel: &str) -> Reply {
        let trigger = self.slack.issue_trigger();
        self.interact(&block_actions(user, action, id, channel, &trigger)).await
    }

    async fn approval(&self, id: &str) -> Value {
        let r = call(
            "GET",
            &format!("{}/v1/admin/approvals/{id}", self.app.control),
            &[("authorization", &format!("Bearer {CAROL}"))],
            "",
        )
        .await;
        if r.status == 403 {
            let r = call(
                "GET",
                &format!("{}/v1/admin/approvals/{id}", self.app.control),
                &[("authorization", &format!("Bearer {ALICE}"))],
                "",
            )
            .await;
            return r.json();
        }
        r.json()
    }

    async fn wait_status(&self, id: &str, status: &str) -> Value {
        for _ in 0..400 {
            let a = self.approval(id).await;
            if a["status"] == status {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{id} never became {status}: {}", self.approval(id).await);
    }

    /// The card of `id` in `channel` once its text contains `want`.
    async fn wait_card(&self, channel: &str, id: &str, want: &str) -> Value {
        self.slack
            .wait_for(&format!("card {id} in {channel} with {want:?}"), Duration::from_secs(15), |f| {
                f.card(channel, id).map(|(_, m)| m).filter(|m| m["blocks"].to_string().contains(want))
            })
            .await
    }

    fn audit(&self, kind: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.app.audit_dir()) else { return out };
        let mut files: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for f in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "jsonl")) {
            for line in std::fs::read_to_string(f).unwrap().lines() {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    if v["kind"] == kind {
                        out.push(v);
                    }
                }
            }
        }
        out
    }

    fn decisions_of(&self, id: &str) -> Vec<Value> {
        self.audit("approval_decided").into_iter().filter(|r| r["approval_id"] == id).collect()
    }

    /// The decision records of `id` once there are `n` (the store shows a decision
    /// a moment before its synced record is on disk).
    async fn wait_decisions(&self, id: &str, n: usize) -> Vec<Value> {
        for _ in 0..500 {
            let d = self.decisions_of(id);
            if d.len() >= n {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.decisions_of(id)
    }
}

fn blocks_text(m: &Value) -> String {
    m["blocks"].to_string()
}

fn ephemerals_to(slack: &FakeSlack, user: &str) -> Vec<String> {
    slack
        .ok_calls("chat.postEphemeral", |a| a["user"] == user)
        .into_iter()
        .map(|c| c.args["text"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn the_card_names_everything_and_leaks_nothing() {
    let t = SlackTest::start(Setup::default()).await;
    let id = t.pending_refund(240000).await;
    let post = t
        .slack
        .wait_for("the card", Duration::from_secs(10), |f| {
            f.ok_calls("chat.postMessage", |a| a["channel"] == "C0FINANCE").into_iter().next()
        })
        .await;
    let a = &post.args;
    assert_eq!((a["unfurl_links"].as_bool(), a["unfurl_media"].as_bool()), (Some(false), Some(false)));
    assert_eq!(post.authorization.as_deref(), Some(format!("Bearer {BOT_TOKEN}").as_str()));
    assert!(post.content_type.starts_with("application/json"), "{}", post.content_type);
    let approval = t.approval(&id).await;
    let blocks = blocks_text(a);
    for want in [
        "*support-agent* · req",
        id.as_str(),
        "● PENDING",
        "*issue_refund* requested by an autonomous agent",
        "finance-oncall",
        "*Risk: high* · amount over your $500 auto-approve threshold",
        "*amount*\\n240000",
        "*charge*\\nch_1",
        "“duplicate charge” _(model-inferred)_",
        "escalates in 15m",
        "policy stripe.refund.large",
        approval["body_sha256"].as_str().unwrap(),
        &format!("<https://approvals.example.com/ui/approvals/{id}|Open in ApprovalPlane>"),
    ] {
        assert!(blocks.contains(want), "card lacks {want:?}: {blocks}");
    }
    let actions = a["blocks"].as_array().unwrap().iter().find(|b| b["type"] == "actions").unwrap();
    let els = actions["elements"].as_array().unwrap();
    assert_eq!(els.len(), 2);
    for (el, action_id) in els.iter().zip(["approve", "reject"]) {
        assert_eq!(el["action_id"], action_id);
        assert_eq!(el["value"], id.as_str());
        assert!(el["confirm"]["title"]["text"].is_string() && el["confirm"]["deny"]["text"].is_string(), "{el}");
    }
    // No secret reaches Slack.
    for c in t.slack.calls() {
        let s = c.args.to_string();
        for secret in [UPSTREAM_SECRET, "sk_live_injected", AGENT_TOKEN, ALICE, SIGNING_SECRET, APP_TOKEN, BOT_TOKEN] {
            assert!(!s.contains(secret), "{secret} sent to slack in {}", c.method);
        }
    }
}

#[tokio::test]
async fn the_card_is_updated_after_approve_reject_and_admin_decisions() {
    let t = SlackTest::start(Setup::default()).await;
    let a = t.pending_refund(240000).await;
    let b = t.pending_refund(250000).await;
    let c = t.pending_refund(260000).await;
    for id in [&a, &b, &c] {
        t.wait_card("C0FINANCE", id, "● PENDING").await;
    }

    // Approve from Slack: alice by her slack_user.
    let r = t.click("U0ALICE", "approve", &a, "C0FINANCE").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let done = t.wait_status(&a, "approved").await;
    assert_eq!(done["decided_by"], "alice");
    t.wait_card("C0FINANCE", &a, "✅ Approved by <@U0ALICE> (alice) in").await;
    let rec = t.wait_decisions(&a, 1).await;
    assert_eq!(rec.len(), 1);
    assert_eq!((rec[0]["channel"].as_str(), rec[0]["decided_by"].as_str()), (Some("slack"), Some("alice")));

    // Reject from Slack: a modal asks for the reason; its submission decides.
    let r = t.click("U0BOB", "reject", &b, "C0FINANCE").await;
    assert_eq!(r.status, 200);
    let open = t
        .slack
        .wait_for("views.open", Duration::from_secs(5), |f| f.ok_calls("views.open", |_| true).into_iter().next())
        .await;
    let view = &open.args["view"];
    assert_eq!(view["callback_id"], "approvalplane_reject");
    assert_eq!(t.approval(&b).await["status"], "pending", "the click alone decides nothing");
    let meta = view["private_metadata"].as_str().unwrap().to_string();
    let r = t.interact(&view_submission("U0BOB", &meta, "not a duplicate: <@U0ALICE> check")).await;
    assert_eq!((r.status, r.text().as_str()), (200, ""), "an empty answer closes the modal");
    let done = t.wait_status(&b, "rejected").await;
    assert_eq!(
        (done["decided_by"].as_str(), done["reason"].as_str()),
        (Some("bob"), Some("not a duplicate: <@U0ALICE> check"))
    );
    t.wait_card("C0FINANCE", &b, "❌ Rejected by <@U0BOB> (bob): not a duplicate: &lt;@U0ALICE&gt; check").await;

    // A decision through the admin API updates the card too.
    assert_eq!(t.app.decide(ALICE, &c, "approve", None).await.status, 200);
    let card = t.wait_card("C0FINANCE", &c, "✅ Approved by <@U0ALICE> (alice)").await;
    assert!(!blocks_text(&card).contains("\"actions\""), "decided cards lose their buttons");
    // Exactly one card per approval; updates went to the same message.
    assert_eq!(t.slack.ok_calls("chat.postMessage", |_| true).len(), 3);
}

#[tokio::test]
async fn escalation_and_expiry_on_the_injected_clock() {
    let clock = ManualClock::new(SystemClock.now());
    let t = SlackTest::start(Setup { clock: Arc::new(clock.clone()), ..Setup::default() }).await;
    let a = t.pending_refund(240000).await;
    let b = t.pending_refund(250000).await;
    t.wait_card("C0FINANCE", &a, "escalates in 15m").await;
    t.wait_card("C0FINANCE", &b, "escalates in 15m").await;
    assert!(t.slack.ok_calls("chat.postMessage", |x| x["channel"] == "C0LEADS").is_empty());
    // Carol (finance-leads) may not decide before the escalation.
    t.click("U0CAROL", "approve", &a, "C0FINANCE").await;
    t.slack
        .wait_for("a refusal", Duration::from_secs(5), |f| (!ephemerals_to(f, "U0CAROL").is_empty()).then_some(()))
        .await;
    assert_eq!(t.approval(&a).await["status"], "pending");

    clock.advance(Duration::from_secs(15 * 60 + 1));
    let post = t
        .slack
        .wait_for("the escalation post", Duration::from_secs(10), |f| {
            let p = f.ok_calls("chat.postMessage", |x| x["channel"] == "C0LEADS");
            (p.len() == 2).then_some(p)
        })
        .await;
    for p in &post {
        let text = blocks_text(&p.args);
        assert!(text.contains("<!subteam^S0LEADS> escalated to *finance-leads*"), "{text}");
        assert!(p.args["text"].as_str().unwrap().starts_with("<!subteam^S0LEADS>"));
        assert!(text.contains("\"action_id\":\"approve\""), "the leads can decide from their channel");
    }
    t.wait_card("C0FINANCE", &a, "⏫ Escalated to finance-leads").await;

    // Carol decides from the leads' channel: both cards show it.
    let r = t.click("U0CAROL", "approve", &a, "C0LEADS").await;
    assert_eq!(r.status, 200);
    assert_eq!(t.wait_status(&a, "approved").await["decided_by"], "carol");
    t.wait_card("C0FINANCE", &a, "✅ Approved by <@U0CAROL> (carol)").await;
    t.wait_card("C0LEADS", &a, "✅ Approved by <@U0CAROL> (carol)").await;

    // B expires: an expiry, not a person's rejection; both cards say so.
    clock.advance(Duration::from_secs(3600));
    let gone = t.wait_status(&b, "expired").await;
    assert!(gone["decided_by"].is_null());
    t.wait_card("C0FINANCE", &b, "⌛ Expired").await;
    t.wait_card("C0LEADS", &b, "⌛ Expired").await;
    assert!(t.decisions_of(&b).is_empty());
}

#[tokio::test]
async fn quorum_counts_distinct_approver_ids_across_channels() {
    let t =
        SlackTest::start(Setup { rules: Some(vec![("q.rego", QUORUM_RULES.to_string())]), ..Setup::default() }).await;
    let r = call(
        "POST",
        &format!("{}/stripe/v1/transfers", t.app.agent),
        &[("authorization", "Bearer agent-token-1"), ("prefer", "wait=0")],
        "",
    )
    .await;
    let id = r.json()["error"]["approval_id"].as_str().unwrap().to_string();
    t.wait_card("C0FINANCE", &id, "*Approvals 0/2*").await;
    t.click("U0ALICE", "approve", &id, "C0FINANCE").await;
    t.wait_card("C0FINANCE", &id, "*Approvals 1/2*: <@U0ALICE>").await;
    // Alice again, through another channel: still one approver.
    let again = t.app.decide(ALICE, &id, "approve", None).await;
    assert_eq!(
        (again.json()["status"].as_str(), again.json()["approvals"].clone()),
        (Some("pending"), json!(["alice"]))
    );
    t.click("U0BOB", "approve", &id, "C0FINANCE").await;
    let done = t.wait_status(&id, "approved").await;
    assert_eq!(done["approvals"], json!(["alice", "bob"]));
    t.wait_card("C0FINANCE", &id, "✅ Approved by <@U0BOB> (bob)").await;
}

#[tokio::test]
async fn a_thousand_forged_callbacks_decide_nothing() {
    let t = Arc::new(SlackTest::start(Setup::default()).await);
    let id = t.pending_refund(240000).await;
    t.wait_card("C0FINANCE", &id, "● PENDING").await;
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..1000u64 {
        let t = t.clone();
        let id = id.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let payload = block_actions("U0ALICE", "approve", &id, "C0FINANCE", "1.2.3");
            let body = form_body(&payload);
            let ts = t.now_secs();
            let sig = match i % 4 {
                // Random bytes.
                0 => format!("v0={:064x}", (i as u128).wrapping_mul(0x9e3779b97f4a7c15_u128)),
                // The wrong secret.
                1 => sign("not-the-signing-secret", ts, &body),
                // The right secret over another body.
                2 => sign(SIGNING_SECRET, ts, &form_body(&json!({"type": "block_actions", "n": i}))),
                // The right secret, another timestamp.
                _ => sign(SIGNING_SECRET, ts - 1, &body),
            };
            t.post_signed(&body, ts, &sig).await.status
        }));
    }
    let mut statuses = std::collections::BTreeMap::new();
    for task in tasks {
        *statuses.entry(task.await.unwrap()).or_insert(0) += 1;
    }
    let elapsed = started.elapsed();
    println!("1000 forged callbacks: {statuses:?} in {elapsed:?}");
    assert_eq!(statuses, std::collections::BTreeMap::from([(401, 1000)]));
    assert_eq!(t.approval(&id).await["status"], "pending");
    assert!(t.audit("approval_decided").is_empty());
    for m in ["chat.update", "chat.postEphemeral", "views.open", "usergroups.users.list"] {
        assert!(t.slack.calls_to(m).is_empty(), "a forged callback caused {m}");
    }
    // The genuine one still works afterwards.
    assert_eq!(t.click("U0ALICE", "approve", &id, "C0FINANCE").await.status, 200);
    t.wait_status(&id, "approved").await;
}

#[tokio::test]
async fn stale_replayed_unsigned_and_malformed_callbacks_are_refused() {
    let t = SlackTest::start(Setup::default()).await;
    let id = t.pending_refund(240000).await;
    t.wait_card("C0FINANCE", &id, "● PENDING").await;
    let body = form_body(&block_actions("U0ALICE", "approve", &id, "C0FINANCE", &t.slack.issue_trigger()));
    let now = t.now_secs();
    let url = format!("{}/slack/interactions", t.app.control);
    let form = ("content-type", "application/x-www-form-urlencoded");
    // Stale and future timestamps, correctly signed. (The exact 300 s edges are
    // unit-tested in slack::verify; here a slow machine may take a second or two.)
    for ts in [now - 310, now + 310, now - 3600] {
        let r = t.post_signed(&body, ts, &sign(SIGNING_SECRET, ts, &body)).await;
        assert_eq!(r.status, 401, "timestamp {ts} vs now {now}");
    }
    // Missing headers.
    let ts = now.to_string();
    let sig = sign(SIGNING_SECRET, now, &body);
    assert_eq!(call("POST", &url, &[form, ("x-slack-signature", &sig)], &body).await.status, 401);
    assert_eq!(call("POST", &url, &[form, ("x-slack-request-timestamp", &ts)], &body).await.status, 401);
    assert_eq!(call("POST", &url, &[form], &body).await.status, 401);
    assert_eq!(t.approval(&id).await["status"], "pending");
    // Malformed payloads, correctly signed: 400, nothing changes.
    for bad in ["payload=%7Bnot+json", "nothing=here", "payload=%5B1%2C2%5D", "payload=%7B%22user%22%3A1%7D", ""] {
        let r = t.post_signed(bad, now, &sign(SIGNING_SECRET, now, bad)).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
    }
    // Unknown fields are fine; unknown types are acknowledged and ignored.
    let r = t.interact(&json!({"type": "message_action", "whatever": [1, {"x": null}]})).await;
    assert_eq!(r.status, 200);
    assert_eq!(t.approval(&id).await["status"], "pending");
    // The genuine callback decides; the same bytes again are a replay.
    let first = t.post_signed(&body, now, &sig).await;
    assert_eq!(first.status, 200);
    t.wait_status(&id, "approved").await;
    let replay = t.post_signed(&body, now, &sig).await;
    assert_eq!(replay.status, 401, "{}", replay.text());
    assert!(replay.text().contains("already received"));
    assert_eq!(t.wait_decisions(&id, 1).await.len(), 1);
}

#[tokio::test]
async fn non_approvers_are_refused_and_user_group_members_may_decide() {
    let clock = ManualClock::new(SystemClock.now());
    let t = SlackTest::start(Setup { clock: Arc::new(clock.clone()), ..Setup::default() }).await;
    t.slack.set_group("S0FINANCE", &["U0DAVE"]);
    let a = t.pending_refund(240000).await;
    let b = t.pending_refund(250000).await;
    t.wait_card("C0FINANCE", &a, "● PENDING").await;
    t.wait_card("C0FINANCE", &b, "● PENDING").await;

    // Mallory is nobody: Approve and Reject are refused, ephemerally, and change nothing.
    assert_eq!(t.click("U0MALLORY", "approve", &a, "C0FINANCE").await.status, 200);
    assert_eq!(t.click("U0MALLORY", "reject", &a, "C0FINANCE").await.status, 200);
    let said = t
        .slack
        .wait_for("two refusals", Duration::from_secs(5), |f| {
            let e = ephemerals_to(f, "U0MALLORY");
            (e.len() == 2).then_some(e)
        })
        .await;
    for s in &said {
        assert_eq!(s, "You are not an approver for finance-oncall.");
    }
    let eph = t.slack.ok_calls("chat.postEphemeral", |x| x["user"] == "U0MALLORY");
    assert!(eph.iter().all(|c| c.args["channel"] == "C0FINANCE"));
    assert!(t.slack.calls_to("views.open").is_empty());
    assert_eq!(t.approval(&a).await["status"], "pending");
    assert!(t.decisions_of(&a).is_empty());
    // A modal submission by a non-approver is refused in the modal itself.
    let meta = json!({"approval_id": a, "channel": "C0FINANCE"}).to_string();
    let r = t.interact(&view_submission("U0MALLORY", &meta, "no")).await;
    assert_eq!(r.json()["response_action"], "errors");
    assert_eq!(r.json()["errors"]["reason"], "You are not an approver for finance-oncall.");
    assert_eq!(t.approval(&a).await["status"], "pending");

    // Dave is in the route's user group: he may decide, as slack:U0DAVE.
    t.click("U0DAVE", "approve", &a, "C0FINANCE").await;
    assert_eq!(t.wait_status(&a, "approved").await["decided_by"], "slack:U0DAVE");
    t.wait_card("C0FINANCE", &a, "✅ Approved by <@U0DAVE>").await;
    assert_eq!(t.slack.ok_calls("usergroups.users.list", |x| x["usergroup"] == "S0FINANCE").len(), 1);

    // Removed from the group: once the cache (≤ 60 s) has lapsed, he is refused.
    t.slack.set_group("S0FINANCE", &[]);
    clock.advance(Duration::from_secs(61));
    t.click("U0DAVE", "approve", &b, "C0FINANCE").await;
    t.slack
        .wait_for("dave's refusal", Duration::from_secs(5), |f| (!ephemerals_to(f, "U0DAVE").is_empty()).then_some(()))
        .await;
    assert_eq!(ephemerals_to(&t.slack, "U0DAVE"), vec!["You are not an approver for finance-oncall."]);
    assert_eq!(t.slack.ok_calls("usergroups.users.list", |_| true).len(), 2, "re-checked after the cache lapsed");
    assert_eq!(t.approval(&b).await["status"], "pending");
}

#[tokio::test]
async fn unknown_approval_ids_get_an_ephemeral_error() {
    let t = SlackTest::start(Setup::default()).await;
    for (i, value) in ["apr_00000000000000000000", "../../etc/passwd", ""].iter().enumerate() {
        assert_eq!(t.click("U0ALICE", "approve", value, "C0FINANCE").await.status, 200);
        let said = t
            .slack
            .wait_for("an ephemeral error", Duration::from_secs(5), |f| {
                let e = ephemerals_to(f, "U0ALICE");
                (e.len() == i + 1).then_some(e)
            })
            .await;
        assert!(said[i].contains("was not found"), "{}", said[i]);
    }
    assert!(t.audit("approval_decided").is_empty());
}

#[tokio::test]
async fn clicks_are_acknowledged_at_once_and_the_modal_opens_within_the_trigger_window() {
    let t = SlackTest::start(Setup::default()).await;
    let mut ack_ms = Vec::new();
    let mut modal_ms = Vec::new();
    for i in 0..10 {
        let id = t.pending_refund(240000 + i).await;
        t.wait_card("C0FINANCE", &id, "● PENDING").await;
        let trigger = t.slack.issue_trigger();
        let sent = Instant::now();
        let r = t.interact(&block_actions("U0BOB", "reject", &id, "C0FINANCE", &trigger)).await;
        ack_ms.push(sent.elapsed().as_millis());
        assert_eq!(r.status, 200);
        let open = t
            .slack
            .wait_for("views.open", Duration::from_secs(5), |f| {
                f.ok_calls("views.open", |a| a["trigger_id"] == trigger.as_str()).into_iter().next()
            })
            .await;
        modal_ms.push(open.at.duration_since(sent).as_millis());
    }
    println!("ack ms: {ack_ms:?}; views.open after the click, ms: {modal_ms:?}");
    assert!(ack_ms.iter().all(|ms| *ms < 3000));
    assert!(modal_ms.iter().all(|ms| *ms < 3000));
    assert!(t.slack.calls_to("views.open").iter().all(|c| c.error.is_none()), "no expired trigger_id");
}

#[tokio::test]
async fn socket_mode_hello_envelope_ack_approve_forward() {
    let t = SlackTest::start(Setup { mode: Mode::Socket, ..Setup::default() }).await;
    t.slack.wait_sockets(1).await;
    assert_eq!(
        t.slack.calls_to("apps.connections.open")[0].authorization.as_deref(),
        Some(format!("Bearer {APP_TOKEN}").as_str()),
        "the app-level token opens connections"
    );
    let agent = t.app.agent.clone();
    let held = tokio::spawn(async move {
        call(
            "POST",
            &format!("{agent}/stripe/v1/refunds"),
            &[("authorization", "Bearer agent-token-1"), ("content-type", "application/x-www-form-urlencoded")],
            "charge=ch_1&amount=240000",
        )
        .await
    });
    let p = t.app.wait_pending(1).await;
    let id = p[0]["id"].as_str().unwrap().to_string();
    t.wait_card("C0FINANCE", &id, "● PENDING").await;
    t.slack.send_envelope(0, "env-0001", &block_actions("U0ALICE", "approve", &id, "C0FINANCE", "1.2.3"));
    let r = held.await.unwrap();
    assert_eq!(r.status, 200, "approved over socket mode, then forwarded: {}", r.text());
    assert_eq!(t.up.count(), 1);
    let acks = t.slack.acks(0);
    assert_eq!(acks.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>(), vec!["env-0001"]);
    let update = t
        .slack
        .wait_for("the update", Duration::from_secs(5), |f| f.ok_calls("chat.update", |_| true).into_iter().next())
        .await;
    assert!(acks[0].0 <= update.at, "the ack comes before the work");
    let rec = t.wait_decisions(&id, 1).await;
    assert_eq!(
        (rec.len(), rec[0]["channel"].as_str(), rec[0]["decided_by"].as_str()),
        (1, Some("slack"), Some("alice"))
    );
}

#[tokio::test]
async fn socket_mode_reject_through_the_modal_then_a_late_click() {
    let t = SlackTest::start(Setup { mode: Mode::Socket, ..Setup::default() }).await;
    t.slack.wait_sockets(1).await;
    let id = t.pending_refund(240000).await;
    t.wait_card("C0FINANCE", &id, "● PENDING").await;
    let trigger = t.slack.issue_trigger();
    t.slack.send_envelope(0, "env-r1", &block_actions("U0BOB", "reject", &id, "C0FINANCE", &trigger));
    let open = t
        .slack
        .wait_for("views.open", Duration::from_secs(5), |f| f.ok_calls("views.open", |_| true).into_iter().next())
        .await;
    let meta = open.args["view"]["private_metadata"].as_str().unwrap().to_string();
    // A submission without a reason is refused, ephemerally (the ack already closed the modal).
    t.slack.send_envelope(0, "env-r2", &view_submission("U0BOB", &meta, "   "));
    t.slack
        .wait_for("the refusal", Duration::from_secs(5), |f| (!ephemerals_to(f, "U0BOB").is_empty()).then_some(()))
        .await;
    assert_eq!(ephemerals_to(&t.slack, "U0BOB"), vec!["A reason is required to reject."]);
    assert_eq!(t.approval(&id).await["status"], "pending");
    t.slack.send_envelope(0, "env-r3", &view_submission("U0BOB", &meta, "wrong customer"));
    let done = t.wait_status(&id, "rejected").await;
    assert_eq!((done["decided_by"].as_str(), done["reason"].as_str()), (Some("bob"), Some("wrong customer")));
    t.wait_card("C0FINANCE", &id, "❌ Rejected by <@U0BOB> (bob): wrong customer").await;
    // Alice clicks Approve on a stale view of the card: told, nothing changes.
    t.slack.send_envelope(0, "env-r4", &block_actions("U0ALICE", "approve", &id, "C0FINANCE", "1.2.3"));
    let said = t
        .slack
        .wait_for("alice told", Duration::from_secs(5), |f| {
            let e = ephemerals_to(f, "U0ALICE");
            (!e.is_empty()).then_some(e)
        })
        .await;
    assert_eq!(said, vec![format!("Approval {id} is already rejected (by bob).")]);
    assert_eq!(t.wait_decisions(&id, 1).await.len(), 1);
    let acked: Vec<String> = t.slack.acks(0).into_iter().map(|(_, e)| e).collect();
    assert_eq!(acked, vec!["env-r1", "env-r2", "env-r3", "env-r4"]);
}

#[tokio::test]
async fn socket_mode_refresh_mid_traffic_loses_and_duplicates_nothing() {
    let t = SlackTest::start(Setup { mode: Mode::Socket, ..Setup::default() }).await;
    t.slack.wait_sockets(1).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let id = t.pending_refund(240000 + i).await;
        t.wait_card("C0FINANCE", &id, "● PENDING").await;
        ids.push(id);
    }
    let env = |i: usize| block_actions("U0ALICE", "approve", &ids[i], "C0FINANCE", "1.2.3");
    t.slack.send_envelope(0, "env-1", &env(0));
    t.slack.send_envelope(0, "env-2", &env(1));
    t.slack.send_disconnect(0, "refresh_requested");
    // Slack may still deliver on the old connection until it is closed.
    t.slack.send_envelope(0, "env-3", &env(2));
    t.slack.send_envelope(0, "env-4", &env(3));
    let conns = t.slack.wait_sockets(2).await;
    t.slack
        .wait_for("the old connection closed", Duration::from_secs(10), |_| {
            conns[0].closed.load(std::sync::atomic::Ordering::SeqCst).then_some(())
        })
        .await;
    assert!(!conns[1].closed.load(std::sync::atomic::Ordering::SeqCst));
    let old_closed = conns[0].closed_at.lock().unwrap().unwrap();
    assert!(conns[1].opened_at < old_closed, "the new connection opened before the old one was dropped");
    println!(
        "refresh: new connection up {:?} before the old one closed",
        old_closed.duration_since(conns[1].opened_at)
    );
    assert!(conns[0].ticket.starts_with("ticket=") && conns[0].ticket != conns[1].ticket, "a fresh URL each time");
    t.slack.send_envelope(1, "env-5", &env(4));
    t.slack.send_envelope(1, "env-6", &env(5));
    // A retry of an envelope already handled.
    t.slack.send_envelope(1, "env-4", &env(3));
    for id in &ids {
        t.wait_status(id, "approved").await;
    }
    let acked = |i: usize| {
        let mut v: Vec<String> = t.slack.acks(i).into_iter().map(|(_, e)| e).collect();
        v.sort();
        v
    };
    t.slack.wait_for("every ack", Duration::from_secs(5), |f| (f.acks(1).len() == 3).then_some(())).await;
    assert_eq!(acked(0), vec!["env-1", "env-2", "env-3", "env-4"]);
    assert_eq!(acked(1), vec!["env-4", "env-5", "env-6"]);
    for id in &ids {
        assert_eq!(t.wait_decisions(id, 1).await.len(), 1, "exactly one decision for {id}");
    }
    // A duplicate handled twice would have told alice "already approved", or
    // recorded a seventh decision.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ephemerals_to(&t.slack, "U0ALICE").is_empty());
    assert_eq!(t.audit("approval_decided").len(), 6);
    assert_eq!(t.slack.calls_to("apps.connections.open").len(), 2);
}

#[tokio::test]
async fn slack_down_then_back_the_card_is_posted_late_and_updated() {
    let t = SlackTest::start(Setup { health: Some(Health::Down), ..Setup::default() }).await;
    let agent = t.app.agent.clone();
    let held = tokio::spawn(async move {
        call(
            "POST",
            &format!("{agent}/stripe/v1/refunds"),
            &[("authorization", "Bearer agent-token-1"), ("content-type", "application/x-www-form-urlencoded")],
            "charge=ch_1&amount=240000",
        )
        .await
    });
    let p = t.app.wait_pending(1).await;
    let id = p[0]["id"].as_str().unwrap().to_string();
    t.slack
        .wait_for("failed posts", Duration::from_secs(10), |f| {
            (f.calls_to("chat.postMessage").iter().filter(|c| c.status == 503).count() >= 2).then_some(())
        })
        .await;
    // The proxy keeps serving, and the approval is decided through the admin API.
    assert_eq!(t.app.refund(100, &[]).await.status, 200);
    assert_eq!(t.app.decide(ALICE, &id, "approve", None).await.status, 200);
    let r = held.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let failed = t.slack.calls_to("chat.postMessage").len();
    let recovered = Instant::now();
    t.slack.set_health(Health::Up);
    let card = t.wait_card("C0FINANCE", &id, "✅ Approved by <@U0ALICE> (alice)").await;
    let latency = recovered.elapsed();
    let post = t.slack.ok_calls("chat.postMessage", |_| true);
    let update = t.slack.ok_calls("chat.update", |_| true);
    assert_eq!(post.len(), 1);
    assert!(blocks_text(&post[0].args).contains("● PENDING"), "posted as it was opened");
    assert!(!update.is_empty() && post[0].at <= update[0].at, "then updated");
    assert!(!blocks_text(&card).contains("\"actions\""));
    println!("slack down: {failed} failed posts; card posted and updated {latency:?} after recovery");
}

#[tokio::test]
async fn rate_limited_posting_honours_retry_after_then_recovers() {
    let t = SlackTest::start(Setup { health: Some(Health::RateLimited(1)), ..Setup::default() }).await;
    let id = t.pending_refund(240000).await;
    let limited = t
        .slack
        .wait_for("three 429s", Duration::from_secs(15), |f| {
            let c: Vec<Call> = f.calls_to("chat.postMessage").into_iter().filter(|c| c.status == 429).collect();
            (c.len() >= 3).then_some(c)
        })
        .await;
    let gaps: Vec<u128> = limited.windows(2).map(|w| w[1].at.duration_since(w[0].at).as_millis()).collect();
    println!("gaps between rate-limited attempts (Retry-After: 1): {gaps:?} ms");
    assert!(gaps.iter().all(|g| *g >= 950), "Retry-After honoured: {gaps:?}");
    assert_eq!(t.approval(&id).await["status"], "pending");
    t.slack.set_health(Health::Up);
    t.wait_card("C0FINANCE", &id, "● PENDING").await;
    assert_eq!(t.app.decide(BOB, &id, "reject", Some("too large")).await.status, 200);
    t.wait_card("C0FINANCE", &id, "❌ Rejected by <@U0BOB> (bob): too large").await;
}

#[tokio::test]
async fn a_burst_of_holds_loses_no_card() {
    let t = SlackTest::start(Setup { post_interval: "250ms", ..Setup::default() }).await;
    // Slack-like enforcement at the fake, with room for scheduling jitter on a
    // loaded machine: calls start 250 ms apart, the fake refuses under 150 ms.
    t.slack.limit_channels(Duration::from_millis(150));
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(t.pending_refund(240000 + i).await);
    }
    let held_in = started.elapsed();
    let posts = t
        .slack
        .wait_for("ten cards", Duration::from_secs(20), |f| {
            let p = f.ok_calls("chat.postMessage", |_| true);
            (p.len() == 10).then_some(p)
        })
        .await;
    for id in &ids {
        assert!(t.slack.card("C0FINANCE", id).is_some(), "card for {id}");
    }
    let gaps: Vec<u128> = posts.windows(2).map(|w| w[1].at.duration_since(w[0].at).as_millis()).collect();
    let limited = t.slack.calls_to("chat.postMessage").iter().filter(|c| c.status == 429).count();
    println!(
        "10 holds in {held_in:?}; cards over {:?}; gaps {gaps:?} ms; 429s: {limited}",
        posts.last().unwrap().at.duration_since(posts[0].at)
    );
    let mean = gaps.iter().sum::<u128>() / gaps.len() as u128;
    assert!(mean >= 245 && gaps.iter().all(|g| *g >= 150), "paced per channel: {gaps:?}");
    assert_eq!(limited, 0, "the channel's rate limit was never hit");
    assert!(held_in < Duration::from_secs(5), "holding does not wait for Slack");
}
