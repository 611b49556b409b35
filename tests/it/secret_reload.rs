//! Secrets given as `*_file` are re-read on reload (SIGHUP), and every component
//! that keeps one uses the new value from then on: the metrics token, Slack's
//! signing secret and bot token, a route's webhook URL and secret, its ntfy URL.
//! A refused reload changes nothing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::crash::{serve_dir, sigterm, spawn_serve, wait_healthy};
use crate::fake_slack::*;
use crate::harness::*;
use crate::notify_webhook::{receiver, signature_ok};

/// A TOML string holding `p`.
fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

async fn metrics_status(control: &str, token: &str) -> u16 {
    call("GET", &format!("{control}/metrics"), &[("authorization", &format!("Bearer {token}"))], "").await.status
}

/// The pending approval's id for a refund of `amount`.
async fn pending_refund(app: &TestApp, amount: u64) -> String {
    let r = app.refund(amount, &[("prefer", "wait=0")]).await;
    assert_eq!(r.error_type(), "approval_pending", "{}", r.text());
    r.json()["error"]["approval_id"].as_str().expect("approval id").to_string()
}

#[tokio::test]
async fn sighup_rotates_the_metrics_token_file_of_a_running_serve() {
    let up = FakeUpstream::start(None).await;
    let sd = serve_dir(&up, "metrics_token_file = \"mtok\"\n", "");
    let file = sd.dir.path().join("mtok");
    std::fs::write(&file, "metrics-old\n").unwrap();
    let mut child = spawn_serve(&sd.config);
    wait_healthy(&sd.control).await;
    assert_eq!(metrics_status(&sd.control, "metrics-old").await, 200);
    assert_eq!(metrics_status(&sd.control, "metrics-new").await, 401);

    std::fs::write(&file, "metrics-new\n").unwrap();
    assert_eq!(metrics_status(&sd.control, "metrics-new").await, 401, "not before the reload");
    let st = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while metrics_status(&sd.control, "metrics-new").await != 200 {
        assert!(Instant::now() < deadline, "the new metrics token was never accepted after SIGHUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metrics_status(&sd.control, "metrics-old").await, 401, "the old token is refused at once");
    sigterm(&mut child);
}

#[tokio::test]
async fn a_refused_reload_keeps_the_metrics_token_and_a_good_one_rotates_it() {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("metrics_token");
    std::fs::write(&file, "metrics-old").unwrap();
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.server_toml = format!("hold_timeout = \"10s\"\nmetrics_token_file = {}\n", toml_path(&file));
    let app = TestApp::start(o).await;
    assert_eq!(metrics_status(&app.control, "metrics-old").await, 200);

    // The token file changes, but the rules are broken: the reload is refused.
    std::fs::write(&file, "metrics-new").unwrap();
    let broken = app.rules_dir().join("broken.rego");
    std::fs::write(&broken, "package approvalplane\n\nthis is not rego\n").unwrap();
    assert!(app.reloader.reload("sighup").await.is_err());
    assert_eq!(metrics_status(&app.control, "metrics-old").await, 200, "a refused reload changes nothing");
    assert_eq!(metrics_status(&app.control, "metrics-new").await, 401);

    std::fs::remove_file(&broken).unwrap();
    app.reloader.reload("sighup").await.expect("reloads");
    assert_eq!(metrics_status(&app.control, "metrics-new").await, 200);
    assert_eq!(metrics_status(&app.control, "metrics-old").await, 401);
    assert_eq!(metrics_status(&app.control, "").await, 401);
}

#[tokio::test]
async fn slack_signing_secret_and_bot_token_files_are_rotated_by_a_reload() {
    const OLD_SIGNING: &str = "old-signing-secret-0000";
    const NEW_SIGNING: &str = "new-signing-secret-1111";
    let secrets = tempfile::tempdir().unwrap();
    let (bot_file, signing_file) = (secrets.path().join("bot"), secrets.path().join("signing"));
    // The bot token starts out revoked: the fake Slack refuses it.
    std::fs::write(&bot_file, "xoxb-revoked\n").unwrap();
    std::fs::write(&signing_file, OLD_SIGNING).unwrap();
    let slack = FakeSlack::start().await;
    slack.known_channels(&["C0FINANCE"]);
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.alice_toml = "slack_user = \"U0ALICE\"\n".into();
    o.finance_route_toml = "slack_channel = \"C0FINANCE\"\n".into();
    o.extra_toml = format!(
        "[slack]\nbot_token_file = {}\nsigning_secret_file = {}\napi_base = \"{}\"\npost_interval = \"20ms\"\n",
        toml_path(&bot_file),
        toml_path(&signing_file),
        slack.api_base()
    );
    let app = TestApp::start(o).await;
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let click = |secret: &'static str, id: String| {
        let control = app.control.clone();
        let trigger = slack.issue_trigger();
        async move {
            let body = form_body(&block_actions("U0ALICE", "approve", &id, "C0FINANCE", &trigger));
            let ts = now();
            call(
                "POST",
                &format!("{control}/slack/interactions"),
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("x-slack-request-timestamp", &ts.to_string()),
                    ("x-slack-signature", &sign(secret, ts, &body)),
                ],
                &body,
            )
            .await
        }
    };
    let status = |id: String| {
        let control = app.control.clone();
        async move {
            let r = call(
                "GET",
                &format!("{control}/v1/admin/approvals/{id}"),
                &[("authorization", &format!("Bearer {ALICE}"))],
                "",
            )
            .await;
            r.json()["status"].as_str().unwrap_or_default().to_string()
        }
    };

    let a = pending_refund(&app, 240000).await;
    slack
        .wait_for("a card post with the revoked token", Duration::from_secs(10), |f| {
            f.calls_to("chat.postMessage")
                .into_iter()
                .find(|c| c.authorization.as_deref() == Some("Bearer xoxb-revoked"))
        })
        .await;
    assert!(slack.card("C0FINANCE", &a).is_none(), "the revoked token posts nothing");
    assert_eq!(click(NEW_SIGNING, a.clone()).await.status, 401, "the new secret is not in use yet");

    std::fs::write(&bot_file, format!("{BOT_TOKEN}\n")).unwrap();
    std::fs::write(&signing_file, NEW_SIGNING).unwrap();
    app.reloader.reload("sighup").await.expect("reloads");

    let r = click(OLD_SIGNING, a.clone()).await;
    assert_eq!(r.status, 401, "a callback signed with the old secret is refused: {}", r.text());
    assert_eq!(status(a.clone()).await, "pending");
    let r = click(NEW_SIGNING, a.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..400 {
        if status(a.clone()).await == "approved" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status(a.clone()).await, "approved", "the click signed with the new secret decides");

    // Cards are posted with the new bot token from then on.
    let b = pending_refund(&app, 250000).await;
    slack.wait_for("the card of the next approval", Duration::from_secs(10), |f| f.card("C0FINANCE", &b)).await;
    let posted = slack.ok_calls("chat.postMessage", |_| true);
    assert!(!posted.is_empty());
    assert!(posted.iter().all(|c| c.authorization.as_deref() == Some(&format!("Bearer {BOT_TOKEN}"))));

    // A reload that changes the running Slack's mode is refused: the HTTP
    // callbacks keep working with the secret in use.
    let config = app.dir.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[slack]\n", "[slack]\nmode = \"socket\"\napp_token_env = \"AP_UNSET_APP\"\n"),
    )
    .unwrap();
    let e = app.reloader.reload("sighup").await.unwrap_err();
    assert!(e.to_string().contains("slack.mode or slack.api_base changed"), "{e}");
    let r = click(NEW_SIGNING, b.clone()).await;
    assert_eq!(r.status, 200, "still served over HTTP: {}", r.text());
}

#[tokio::test]
async fn webhook_and_ntfy_files_are_rotated_by_a_reload_and_a_refused_one_changes_nothing() {
    const OLD: &str = "whsec_old_secret";
    const NEW: &str = "whsec_new_secret";
    let (hooks_a, hooks_b) = (receiver(0, 200).await, receiver(0, 200).await);
    let (ntfy_a, ntfy_b) = (receiver(0, 200).await, receiver(0, 200).await);
    let secrets = tempfile::tempdir().unwrap();
    let url_file = secrets.path().join("webhook_url");
    let secret_file = secrets.path().join("webhook_secret");
    let ntfy_file = secrets.path().join("ntfy_url");
    std::fs::write(&url_file, format!("http://{}/hooks/a", hooks_a.addr)).unwrap();
    std::fs::write(&secret_file, OLD).unwrap();
    std::fs::write(&ntfy_file, format!("http://{}/finance-a", ntfy_a.addr)).unwrap();
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.finance_route_toml = format!(
        "webhook_url_file = {}\nwebhook_secret_file = {}\nntfy_url_file = {}\n",
        toml_path(&url_file),
        toml_path(&secret_file),
        toml_path(&ntfy_file)
    );
    let app = TestApp::start(o).await;

    pending_refund(&app, 240000).await;
    hooks_a.wait_count(1).await;
    ntfy_a.wait_count(1).await;
    assert!(signature_ok(&hooks_a.received()[0], OLD));

    std::fs::write(&url_file, format!("http://{}/hooks/b", hooks_b.addr)).unwrap();
    std::fs::write(&secret_file, NEW).unwrap();
    std::fs::write(&ntfy_file, format!("http://{}/finance-b", ntfy_b.addr)).unwrap();
    app.reloader.reload("sighup").await.expect("reloads");

    let b = pending_refund(&app, 250000).await;
    hooks_b.wait_count(1).await;
    ntfy_b.wait_count(1).await;
    let hook = &hooks_b.received()[0];
    assert_eq!(hook.path, "/hooks/b");
    assert!(signature_ok(hook, NEW), "the next webhook is signed with the new secret");
    assert!(!signature_ok(hook, OLD));
    let body: Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(body["approval"]["id"], b.as_str());
    let push: Value = serde_json::from_slice(&ntfy_b.received()[0].body).unwrap();
    assert_eq!(push["topic"], "finance-b");

    // A bad URL refuses the reload, and the secret changed alongside it stays unused.
    std::fs::write(&url_file, "ftp://example.com/hooks").unwrap();
    std::fs::write(&secret_file, "whsec_never_used").unwrap();
    let e = app.reloader.reload("sighup").await.unwrap_err();
    assert!(e.to_string().contains("webhook_url_file"), "{e}");
    assert!(!e.to_string().contains("ftp://"), "the URL is a secret: {e}");
    pending_refund(&app, 260000).await;
    hooks_b.wait_count(2).await;
    assert!(signature_ok(&hooks_b.received()[1], NEW), "a refused reload changes nothing");
    ntfy_b.wait_count(2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!((hooks_a.count(), ntfy_a.count()), (1, 1), "nothing more goes to the old URLs");
}
