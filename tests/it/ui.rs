//! The approver web page: sign-in (token and single-use links), sessions, CSRF,
//! who may see and decide, and live updates over server-sent events. Every refusal
//! is checked to change nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use approvalplane::clock::{Clock, SystemClock};
use approvalplane::config::Secret;
use approvalplane::ui::{Keys, SignInLinks};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::harness::*;

const HMAC_KEY: &str = "store-hmac-key-for-tests";

const ENG_RULES: &str = r#"package approvalplane

approval contains {"id": "eng.deploy", "reason": "deploys need eng", "route": "eng-oncall", "risk": "medium"} if {
    input.request.path == "/v1/deploys"
}
"#;

/// A server whose sessions and links are signed with a known store key, so tests
/// can mint links the way a notifier does.
async fn start() -> (TestApp, FakeUpstream) {
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.rules.push(("eng.rego", ENG_RULES.to_string()));
    o.extra_toml = "[store]\nhmac_key_env = \"STORE_HMAC_KEY\"\n".into();
    o.env.push(("STORE_HMAC_KEY".into(), HMAC_KEY.into()));
    (TestApp::start(o).await, up)
}

fn links(app: &TestApp) -> SignInLinks {
    SignInLinks::new(Arc::new(Keys::new(Some(&Secret::new(HMAC_KEY)))), &app.control, Arc::new(SystemClock))
}

/// Opens a pending refund without holding; returns its id.
async fn pending_refund(app: &TestApp, amount: u64) -> String {
    let r = app.refund(amount, &[("prefer", "wait=0")]).await;
    assert_eq!(r.status, 409, "{}", r.text());
    r.json()["error"]["approval_id"].as_str().expect("approval id").to_string()
}

async fn pending_deploy(app: &TestApp) -> String {
    let r = call(
        "POST",
        &format!("{}/stripe/v1/deploys", app.agent),
        &[("authorization", &format!("Bearer {AGENT_TOKEN}")), ("prefer", "wait=0")],
        "",
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    r.json()["error"]["approval_id"].as_str().expect("approval id").to_string()
}

/// The approval as the admin API shows it (as `token`).
async fn admin_get(app: &TestApp, token: &str, id: &str) -> serde_json::Value {
    let r = call(
        "GET",
        &format!("{}/v1/admin/approvals/{id}", app.control),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// A tiny browser: keeps cookies, sends forms.
struct Browser {
    base: String,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new(app: &TestApp) -> Browser {
        Browser { base: app.control.clone(), cookies: BTreeMap::new() }
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    fn keep(&mut self, r: &Reply) {
        for c in r.headers.get_all("set-cookie") {
            let c = c.to_str().expect("ascii cookie");
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').expect("name=value");
            if v.is_empty() || c.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), v.to_string());
            }
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        let cookie = self.cookie_header();
        let r = call("GET", &format!("{}{path}", self.base), &[("cookie", &cookie)], "").await;
        self.keep(&r);
        r
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        let cookie = self.cookie_header();
        let body = form.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect::<Vec<_>>().join("&");
        let r = call(
            "POST",
            &format!("{}{path}", self.base),
            &[("cookie", &cookie), ("content-type", "application/x-www-form-urlencoded")],
            &body,
        )
        .await;
        self.keep(&r);
        r
    }

    /// Signs in with an approver token through the sign-in form.
    async fn sign_in(app: &TestApp, token: &str) -> Browser {
        let mut b = Browser::new(app);
        let page = b.get("/ui").await;
        let r = b.post("/ui/login", &[("csrf", &csrf(&page)), ("next", "/ui"), ("token", token)]).await;
        assert_eq!(r.status, 303, "{}", r.text());
        assert!(b.cookies.contains_key("ap_session"));
        b
    }
}

fn enc(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// The CSRF token in a page's form.
fn csrf(page: &Reply) -> String {
    let t = page.text();
    let i = t.find("name=\"csrf\" value=\"").unwrap_or_else(|| panic!("no csrf field in {t}")) + 19;
    t[i..].split('"').next().expect("value").to_string()
}

fn location(r: &Reply) -> String {
    r.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

fn token_of(link: &str) -> &str {
    &link[link.find("/ui/link/").expect("a sign-in link") + 9..]
}

#[tokio::test]
async fn without_a_session_the_page_is_the_sign_in_page_and_shows_no_approval() {
    let (app, _up) = start().await;
    let id = pending_refund(&app, 240000).await;
    let mut b = Browser::new(&app);
    for path in ["/ui", "/ui/", &format!("/ui/approvals/{id}"), "/ui/history?status=pending"] {
        let r = b.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        let t = r.text();
        assert!(t.contains("<meta name=\"viewport\""), "{path}: {t}");
        assert!(t.contains("action=\"/ui/login\""), "{path}");
        assert!(!t.contains(&id) && !t.contains("240000") && !t.contains("issue_refund"), "{path} leaks: {t}");
        assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
        let csp = r.headers["content-security-policy"].to_str().unwrap_or("");
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    }
    // The pre-session cookie for the sign-in form is HttpOnly and SameSite=Strict.
    let r = Browser::new(&app).get("/ui").await;
    let pre = r.headers["set-cookie"].to_str().expect("ascii");
    assert!(pre.starts_with("ap_pre=") && pre.contains("HttpOnly") && pre.contains("SameSite=Strict"), "{pre}");
    // Arriving from another site, the sign-in page reloads itself once (same-site,
    // so a SameSite=Strict session cookie is sent); from here it does not.
    let r = call("GET", &format!("{}/ui", app.control), &[("sec-fetch-site", "cross-site")], "").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<meta name=\"viewport\"") && r.text().contains("http-equiv=\"refresh\""));
    let r = call("GET", &format!("{}/ui", app.control), &[("sec-fetch-site", "same-origin")], "").await;
    assert!(!r.text().contains("http-equiv=\"refresh\""));
    assert_eq!(call("HEAD", &format!("{}/ui", app.control), &[], "").await.status, 200);
    // The live feed and partial views need a session too.
    assert_eq!(b.get("/ui/events").await.status, 401);
    let r = call("GET", &format!("{}/ui", app.control), &[("x-ap-partial", "1")], "").await;
    assert_eq!((r.status, r.body.len()), (401, 0));
    // A forged session cookie is no session.
    b.cookies.insert("ap_session".into(), "YWxpY2U.AAAA".into());
    assert!(!b.get("/ui").await.text().contains(&id));
    // The assets are served from the binary.
    let css = b.get("/ui/assets/app.css").await;
    assert_eq!((css.status, css.headers["content-type"].to_str().unwrap_or("")), (200, "text/css; charset=utf-8"));
    assert_eq!(b.get("/ui/assets/app.js").await.status, 200);
}

#[tokio::test]
async fn token_sign_in_gives_a_strict_http_only_session_and_only_ones_own_routes() {
    let (app, _up) = start().await;
    let refund = pending_refund(&app, 240000).await;
    let deploy = pending_deploy(&app).await;

    // A wrong token: 401, the sign-in page again, no session.
    let mut b = Browser::new(&app);
    let page = b.get("/ui").await;
    let r = b.post("/ui/login", &[("csrf", &csrf(&page)), ("token", "not-a-token")]).await;
    assert_eq!(r.status, 401);
    assert!(!b.cookies.contains_key("ap_session"));
    // No CSRF token: refused even with a good approver token.
    let r = b.post("/ui/login", &[("token", ALICE)]).await;
    assert_eq!(r.status, 403);
    assert!(!b.cookies.contains_key("ap_session"));

    let page = b.get("/ui").await;
    let r = b.post("/ui/login", &[("csrf", &csrf(&page)), ("next", "/ui"), ("token", ALICE)]).await;
    assert_eq!((r.status, location(&r).as_str()), (303, "/ui"));
    let set = r.headers["set-cookie"].to_str().expect("ascii").to_string();
    assert!(set.starts_with("ap_session="), "{set}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    assert!(!set.contains("Secure"), "plain http public_url: no Secure attribute: {set}");

    let list = b.get("/ui").await;
    assert_eq!(list.status, 200);
    let t = list.text();
    assert!(t.contains(&refund) && t.contains("issue_refund") && t.contains("240000"), "{t}");
    assert!(t.contains("support-agent") && t.contains("finance-oncall") && t.contains("high"), "{t}");
    assert!(t.contains("amount over your $500 auto-approve threshold"), "risk reason shown");
    assert!(t.contains("Escalates to finance-leads"), "escalation deadline shown: {t}");
    assert!(!t.contains(&deploy), "alice is not on eng-oncall: {t}");
    // Carol sees the deploy, not the refund.
    let mut carol = Browser::sign_in(&app, CAROL).await;
    let t = carol.get("/ui").await.text();
    assert!(t.contains(&deploy) && !t.contains(&refund), "{t}");
    // Next is only ever one of our pages.
    let mut evil = Browser::new(&app);
    let page = evil.get("/ui").await;
    let r = evil.post("/ui/login", &[("csrf", &csrf(&page)), ("next", "//evil.example/x"), ("token", BOB)]).await;
    assert_eq!(location(&r), "/ui");
    // Signing out ends the session.
    let page = b.get("/ui").await;
    let r = b.post("/ui/logout", &[("csrf", &csrf(&page))]).await;
    assert_eq!(r.status, 303);
    assert!(!b.cookies.contains_key("ap_session"));
    assert!(!b.get("/ui").await.text().contains(&refund));
}

#[tokio::test]
async fn agent_tokens_cannot_use_the_page_or_the_admin_api() {
    let (app, _up) = start().await;
    let id = pending_refund(&app, 240000).await;
    let agent = format!("Bearer {AGENT_TOKEN}");
    for path in ["/ui", &format!("/ui/approvals/{id}"), "/ui/events", "/ui/history"] {
        let r = call("GET", &format!("{}{path}", app.control), &[("authorization", &agent)], "").await;
        assert_eq!(r.status, 403, "{path}");
        assert!(!r.text().contains("issue_refund"));
    }
    let r = call(
        "POST",
        &format!("{}/ui/approvals/{id}/decision", app.control),
        &[("authorization", &agent), ("content-type", "application/x-www-form-urlencoded")],
        "decision=approve",
    )
    .await;
    assert_eq!(r.status, 403);
    // Nor can an agent sign in with its token through the form.
    let mut b = Browser::new(&app);
    let page = b.get("/ui").await;
    let r = b.post("/ui/login", &[("csrf", &csrf(&page)), ("token", AGENT_TOKEN)]).await;
    assert_eq!(r.status, 403);
    assert!(!b.cookies.contains_key("ap_session"));
    // The admin API refuses it as well.
    for (m, path, body) in [
        ("GET", "/v1/admin/approvals?status=pending".to_string(), ""),
        ("GET", format!("/v1/admin/approvals/{id}"), ""),
        ("POST", format!("/v1/admin/approvals/{id}/decision"), r#"{"decision": "approve"}"#),
    ] {
        let r = call(m, &format!("{}{path}", app.control), &[("authorization", &agent)], body).await;
        assert_eq!(r.status, 403, "{m} {path}");
    }
    assert_eq!(admin_get(&app, ALICE, &id).await["status"], "pending", "nothing changed");
}

#[tokio::test]
async fn a_sign_in_link_is_confirmed_by_post_and_works_once() {
    let (app, _up) = start().await;
    let id = pending_refund(&app, 240000).await;
    let l = links(&app);
    let link = l.mint_link("alice", &id);
    let path = format!("/ui/link/{}", token_of(&link));

    // Opening it (twice: an unfurler, then the person) only shows a confirm page.
    let mut scanner = Browser::new(&app);
    let r = scanner.get(&path).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Continue as alice"));
    assert!(!r.text().contains("issue_refund") && !r.text().contains("240000"), "no approval before sign-in");
    assert_eq!(r.headers["referrer-policy"], "no-referrer");
    let mut b = Browser::new(&app);
    let page = b.get(&path).await;
    assert_eq!(page.status, 200);

    // A post without the CSRF token is refused and does not use the link up.
    let r = b.post(&path, &[]).await;
    assert_eq!(r.status, 403);
    assert!(!b.cookies.contains_key("ap_session"));
    // Nor does one with another browser's token.
    let other = scanner.get(&path).await;
    let r = b.post(&path, &[("csrf", &csrf(&other))]).await;
    assert_eq!(r.status, 403);

    let r = b.post(&path, &[("csrf", &csrf(&page))]).await;
    assert_eq!((r.status, location(&r)), (303, format!("/ui/approvals/{id}")));
    assert!(b.cookies.contains_key("ap_session"));
    let detail = b.get(&format!("/ui/approvals/{id}")).await;
    assert_eq!(detail.status, 200);
    let t = detail.text();
    assert!(t.contains("issue_refund") && t.contains("240000") && t.contains("stripe.refund.large"), "{t}");

    // Used: a second confirm is refused, from any browser.
    let mut again = Browser::new(&app);
    let page = again.get(&path).await;
    let r = again.post(&path, &[("csrf", &csrf(&page))]).await;
    assert_eq!(r.status, 410, "{}", r.text());
    assert!(r.text().contains("already been used"));
    assert!(!again.cookies.contains_key("ap_session"));
}

#[tokio::test]
async fn expired_tampered_and_foreign_links_are_refused() {
    let (app, _up) = start().await;
    let id = pending_refund(&app, 240000).await;
    let l = links(&app);
    let now = SystemClock.now();

    // Expired: minted 16 minutes ago (links last 15).
    let expired = l.mint_token("alice", &id, approvalplane::clock::Timestamp(now.0 - 16 * 60 * 1000));
    let mut b = Browser::new(&app);
    let r = b.get(&format!("/ui/link/{expired}")).await;
    assert_eq!(r.status, 410);
    assert!(r.text().contains("expired"));
    let page = b.get("/ui").await;
    let r = b.post(&format!("/ui/link/{expired}"), &[("csrf", &csrf(&page))]).await;
    assert_eq!(r.status, 410);
    assert!(!b.cookies.contains_key("ap_session"));

    // Tampered: a flipped signature bit, or a payload naming someone else.
    let good = l.mint_token("alice", &id, now);
    let (payload, sig) = good.split_once('.').expect("sealed");
    let flipped = {
        let mut s = sig.as_bytes().to_vec();
        s[0] = if s[0] == b'A' { b'B' } else { b'A' };
        format!("{payload}.{}", String::from_utf8(s).expect("ascii"))
    };
    let other = l.mint_token("carol", &id, now);
    let spliced = format!("{}.{sig}", other.split_once('.').expect("sealed").0);
    for bad in [flipped.as_str(), spliced.as_str(), "garbage", "a.b.c"] {
        let r = b.get(&format!("/ui/link/{bad}")).await;
        assert_eq!(r.status, 403, "{bad}");
        let page = b.get("/ui").await;
        let r = b.post(&format!("/ui/link/{bad}"), &[("csrf", &csrf(&page))]).await;
        assert_eq!(r.status, 403, "{bad}");
        assert!(!b.cookies.contains_key("ap_session"));
    }
    // Signed with another key (another deployment): refused.
    let foreign = SignInLinks::new(Arc::new(Keys::new(None)), &app.control, Arc::new(SystemClock));
    let r = b.get(&format!("/ui/link/{}", token_of(&foreign.mint_link("alice", &id)))).await;
    assert_eq!(r.status, 403);
    // A genuine link for someone who is not an approver.
    let r = b.get(&format!("/ui/link/{}", l.mint_token("mallory", &id, now))).await;
    assert_eq!(r.status, 403);

    // The untouched link still works: none of the above used it up.
    let page = b.get(&format!("/ui/link/{good}")).await;
    let r = b.post(&format!("/ui/link/{good}"), &[("csrf", &csrf(&page))]).await;
    assert_eq!(r.status, 303);
    assert_eq!(admin_get(&app, ALICE, &id).await["status"], "pending", "signing in decides nothing");
}

#[tokio::test]
async fn deciding_needs_the_csrf_token_and_a_route_of_ones_own() {
    let (app, _up) = start().await;
    let id = pending_refund(&app, 240000).await;
    let decide = format!("/ui/approvals/{id}/decision");
    let mut alice = Browser::sign_in(&app, ALICE).await;
    let detail = alice.get(&format!("/ui/approvals/{id}")).await;
    let token = csrf(&detail);

    // No token, a wrong token, another session's token: refused.
    assert_eq!(alice.post(&decide, &[("decision", "approve")]).await.status, 403);
    assert_eq!(alice.post(&decide, &[("decision", "approve"), ("csrf", "AAAA")]).await.status, 403);
    let mut bob = Browser::sign_in(&app, BOB).await;
    let bobs = csrf(&bob.get("/ui").await);
    assert_eq!(alice.post(&decide, &[("decision", "approve"), ("csrf", &bobs)]).await.status, 403);
    // A token without its session cookie: refused.
    let mut no_cookie = Browser::new(&app);
    assert_eq!(no_cookie.post(&decide, &[("decision", "approve"), ("csrf", &token)]).await.status, 403);
    // JSON instead of a form: refused.
    let r = call(
        "POST",
        &format!("{}{decide}", app.control),
        &[("cookie", &alice.cookie_header()), ("content-type", "application/json")],
        &format!(r#"{{"decision": "approve", "csrf": "{token}"}}"#),
    )
    .await;
    assert_eq!(r.status, 415);
    // A cross-site post, even with everything else right.
    let r = call(
        "POST",
        &format!("{}{decide}", app.control),
        &[
            ("cookie", &alice.cookie_header()),
            ("content-type", "application/x-www-form-urlencoded"),
            ("sec-fetch-site", "cross-site"),
        ],
        &format!("decision=approve&csrf={token}"),
    )
    .await;
    assert_eq!(r.status, 403);

    // Carol is an approver, but not of finance-oncall: she can neither see nor decide.
    let mut carol = Browser::sign_in(&app, CAROL).await;
    assert_eq!(carol.get(&format!("/ui/approvals/{id}")).await.status, 403);
    let carols = csrf(&carol.get("/ui").await);
    let r = carol.post(&decide, &[("decision", "approve"), ("csrf", &carols)]).await;
    assert_eq!(r.status, 403);
    assert!(!r.text().contains("240000"), "a refusal shows nothing of the approval");
    // Rejecting needs a reason.
    let r = alice.post(&decide, &[("decision", "reject"), ("csrf", &token), ("reason", "  ")]).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("A reason is required to reject"), "{}", r.text());
    assert_eq!(admin_get(&app, ALICE, &id).await["status"], "pending", "nothing changed");
    let audit = std::fs::read_dir(app.audit_dir())
        .expect("audit dir")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).unwrap_or_default())
        .collect::<String>();
    assert!(!audit.contains("approval_decided"), "no decision was recorded");
}

#[tokio::test]
async fn a_rejection_on_the_page_answers_the_held_request_and_shows_in_the_trail() {
    let (app, up) = start().await;
    let app = Arc::new(app);
    let held = {
        let app = app.clone();
        tokio::spawn(async move { app.refund(240000, &[]).await })
    };
    let id = app.wait_pending(1).await[0]["id"].as_str().expect("id").to_string();
    let mut alice = Browser::sign_in(&app, ALICE).await;
    let detail = alice.get(&format!("/ui/approvals/{id}")).await;
    let t = detail.text();
    assert!(t.contains("id=\"reject\"") && t.contains("id=\"approve\""), "{t}");
    assert!(t.contains("Body SHA-256") && t.contains("approval_requested"), "{t}");
    let r = alice
        .post(
            &format!("/ui/approvals/{id}/decision"),
            &[("csrf", &csrf(&detail)), ("decision", "reject"), ("reason", "duplicate of re_123")],
        )
        .await;
    assert_eq!((r.status, location(&r)), (303, format!("/ui/approvals/{id}")));
    let answer = tokio::time::timeout(Duration::from_secs(5), held).await.expect("answered").expect("task");
    assert_eq!(answer.status, 403);
    let e = &answer.json()["error"];
    assert_eq!((e["type"].as_str(), e["reason"].as_str()), (Some("approval_rejected"), Some("duplicate of re_123")));
    assert_eq!(e["decided_by"], "alice");
    assert_eq!(up.count(), 0, "nothing was forwarded");
    let a = admin_get(&app, ALICE, &id).await;
    assert_eq!((a["status"].as_str(), a["decided_via"].as_str()), (Some("rejected"), Some("web")));
    // The detail page now shows the outcome and the decision in the audit trail.
    let t = alice.get(&format!("/ui/approvals/{id}")).await.text();
    assert!(t.contains("Rejected</strong> by <strong>alice</strong> via web"), "{t}");
    assert!(t.contains("approval_decided") && t.contains("channel: web"), "{t}");
    assert!(!t.contains("id=\"approve\""), "no buttons once decided");
    // Deciding again is a conflict, and changes nothing.
    let r =
        alice.post(&format!("/ui/approvals/{id}/decision"), &[("csrf", &csrf(&detail)), ("decision", "approve")]).await;
    assert_eq!(r.status, 409);
    assert_eq!(admin_get(&app, ALICE, &id).await["status"], "rejected");
    // History, filtered.
    let h = alice.get("/ui/history?status=rejected&route=finance-oncall&agent=support-agent").await.text();
    assert!(h.contains(&id) && h.contains("duplicate of re_123"), "{h}");
    let h = alice.get("/ui/history?status=approved").await.text();
    assert!(!h.contains(&id), "{h}");
    let h = alice.get("/ui/history?agent=other-agent").await.text();
    assert!(!h.contains(&id), "{h}");
}

/// Reads an event stream; sends each chunk with the time it arrived.
async fn event_stream(url: &str, cookie: &str) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, String)> {
    let uri: http::Uri = url.parse().expect("url");
    let addr = format!("{}:{}", uri.host().expect("host"), uri.port_u16().expect("port"));
    let stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(uri.path())
        .header("host", addr.as_str())
        .header("cookie", cookie)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut body = resp.into_body();
    tokio::spawn(async move {
        while let Some(Ok(f)) = body.frame().await {
            if let Some(d) = f.data_ref() {
                if tx.send((Instant::now(), String::from_utf8_lossy(d).into_owned())).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

async fn wait_for(rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, String)>, needle: &str) -> (Instant, String) {
    loop {
        let (t, s) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no event with {needle}"))
            .expect("stream open");
        if s.contains(needle) {
            return (t, s);
        }
    }
}

#[tokio::test]
async fn an_admin_api_decision_reaches_an_open_page_within_a_second() {
    let (app, _up) = start().await;
    let alice = Browser::sign_in(&app, ALICE).await;
    let mut carol_feed = {
        let carol = Browser::sign_in(&app, CAROL).await;
        event_stream(&format!("{}/ui/events", app.control), &carol.cookie_header()).await
    };
    let mut feed = event_stream(&format!("{}/ui/events", app.control), &alice.cookie_header()).await;
    wait_for(&mut feed, ": connected").await;
    wait_for(&mut carol_feed, ": connected").await;
    let id = pending_refund(&app, 240000).await;
    let (_, opened) = wait_for(&mut feed, "\"change\":\"opened\"").await;
    assert!(opened.starts_with("event: approval\n") && opened.contains(&id), "{opened}");
    assert!(!opened.contains("240000"), "the feed says what changed, not what it is");

    // Measured from the moment the admin API call starts: the event is published
    // as soon as the decision is recorded, before the API answers.
    let before = Instant::now();
    let r = app.decide(BOB, &id, "approve", Some("ok")).await;
    assert_eq!(r.status, 200);
    let (at, decided) = wait_for(&mut feed, "\"change\":\"decided\"").await;
    assert!(decided.contains(&id) && decided.contains("\"status\":\"approved\""), "{decided}");
    let latency = at.saturating_duration_since(before);
    eprintln!("sse latency: decided event {latency:?} after the admin API call started");
    assert!(latency < Duration::from_secs(1), "{latency:?}");

    // Carol may not see finance approvals: her feed carried none of this.
    let deploy = pending_deploy(&app).await;
    let (_, s) = wait_for(&mut carol_feed, "\"change\":\"opened\"").await;
    assert!(s.contains(&deploy) && !s.contains(&id), "{s}");
}

#[tokio::test]
async fn rotating_an_approvers_token_ends_the_sessions_opened_with_the_old_one() {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("alice-token");
    std::fs::write(&file, "alice-token-before-rotation\n").unwrap();
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.people_toml =
        PEOPLE_TOML.replace("token_env = \"ALICE_TOKEN\"", &format!("token_file = {:?}", file.display().to_string()));
    let app = TestApp::start(o).await;
    let id = pending_refund(&app, 240000).await;
    let mut old = Browser::sign_in(&app, "alice-token-before-rotation").await;
    assert!(old.get("/ui").await.text().contains(&id));
    let page = old.get(&format!("/ui/approvals/{id}")).await;
    let old_csrf = csrf(&page);

    // A reload that leaves the token alone keeps the session.
    app.reloader.reload("sighup").await.expect("reloads");
    assert!(old.get("/ui").await.text().contains(&id), "an unchanged token keeps its sessions");

    std::fs::write(&file, "alice-token-after-rotation\n").unwrap();
    app.reloader.reload("sighup").await.expect("reloads");
    for path in ["/ui".to_string(), format!("/ui/approvals/{id}")] {
        let t = old.get(&path).await.text();
        assert!(t.contains("action=\"/ui/login\"") && !t.contains(&id), "{path}: the old session still works: {t}");
    }
    // Deciding with the old session's cookie and its CSRF token changes nothing.
    let r = old.post(&format!("/ui/approvals/{id}/decision"), &[("csrf", &old_csrf), ("decision", "approve")]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(admin_get(&app, BOB, &id).await["status"], "pending");

    let mut new = Browser::sign_in(&app, "alice-token-after-rotation").await;
    assert!(new.get("/ui").await.text().contains(&id));
    let mut refused = Browser::new(&app);
    let page = refused.get("/ui").await;
    let r = refused.post("/ui/login", &[("csrf", &csrf(&page)), ("token", "alice-token-before-rotation")]).await;
    assert_eq!(r.status, 401, "the old token no longer signs in");
}
