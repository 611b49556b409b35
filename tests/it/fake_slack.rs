//! A fake Slack for the integration tests: the Web API methods the product calls
//! and a Socket Mode WebSocket, speaking Slack's documented wire format and
//! recording every call.
//!
//! Web API: `POST /api/{method}`, bearer token, JSON or form bodies, answers
//! `{"ok": true, ...}` or `{"ok": false, "error": "<code>"}` with HTTP 200, and
//! `429` + `Retry-After` when rate limited. It checks tokens (bot token for the
//! Web API, app-level token for `apps.connections.open`), block limits, known
//! channels and `trigger_id` lifetimes (3 s), like Slack does.
//!
//! Socket Mode: `apps.connections.open` hands out `ws://.../link/?ticket=N`; each
//! connection gets `hello` at once; tests push envelopes and `disconnect`
//! messages and read the acknowledgements.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub const BOT_TOKEN: &str = "xoxb-1111-2222-fakebottoken";
pub const APP_TOKEN: &str = "xapp-1-A0FAKE-3333-fakeapptoken";
pub const SIGNING_SECRET: &str = "8f742231b10e8888abcd99fakesecret";

/// One Web API call as received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub authorization: Option<String>,
    pub content_type: String,
    /// The arguments: the JSON body, or the form fields as strings.
    pub args: Value,
    pub at: Instant,
    /// The HTTP status we answered.
    pub status: u16,
    /// The `error` code when we answered `ok: false`.
    pub error: Option<String>,
}

/// How the fake behaves right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    /// 503 to every call.
    Down,
    /// 429 with this `Retry-After` (seconds) to every call.
    RateLimited(u64),
}

/// One Socket Mode connection.
pub struct SocketConn {
    /// The query of the URL the client connected to (`ticket=...`).
    pub ticket: String,
    tx: mpsc::UnboundedSender<Message>,
    /// Every text message the client sent, parsed, with when it arrived.
    pub received: Arc<Mutex<Vec<(Instant, Value)>>>,
    pub closed: Arc<std::sync::atomic::AtomicBool>,
    pub opened_at: Instant,
    pub closed_at: Arc<Mutex<Option<Instant>>>,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    /// (channel, ts) → the message as posted or last updated.
    messages: BTreeMap<(String, String), Value>,
    health: Option<Health>,
    /// Least time between two posts to one channel; faster ones get 429.
    channel_limit: Option<Duration>,
    last_post: HashMap<String, Instant>,
    /// Known channels; empty means any.
    channels: HashSet<String>,
    groups: HashMap<String, Vec<String>>,
    triggers: HashMap<String, Instant>,
    sockets: Vec<Arc<SocketConn>>,
}

pub struct FakeSlack {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    seq: Arc<AtomicU64>,
    changed: Arc<tokio::sync::Notify>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn ok(v: Value) -> (u16, Value) {
    (200, v)
}

fn fail(code: &str) -> (u16, Value) {
    (200, json!({"ok": false, "error": code}))
}

/// Block Kit checks Slack makes on `blocks` (a subset): at most 50 blocks, text
/// objects within their limits, block ids unique.
fn check_blocks(blocks: &Value) -> Result<(), String> {
    let Some(list) = blocks.as_array() else { return Err("blocks is not an array".into()) };
    if list.len() > 50 {
        return Err("more than 50 blocks".into());
    }
    let mut ids = HashSet::new();
    for b in list {
        let kind = b["type"].as_str().ok_or("a block without type")?;
        if let Some(id) = b["block_id"].as_str() {
            if !ids.insert(id.to_string()) || id.len() > 255 {
                return Err(format!("block_id {id} repeated or too long"));
            }
        }
        if let Some(t) = b["text"]["text"].as_str() {
            if t.chars().count() > 3000 {
                return Err("section text over 3000".into());
            }
        }
        if let Some(fields) = b["fields"].as_array() {
            if fields.len() > 10 || fields.iter().any(|f| f["text"].as_str().is_none_or(|t| t.chars().count() > 2000)) {
                return Err("bad fields".into());
            }
        }
        if kind == "actions" {
            for e in b["elements"].as_array().ok_or("actions without elements")? {
                if e["action_id"].as_str().is_none_or(|a| a.len() > 255) || e["text"]["text"].as_str().is_none() {
                    return Err("bad button".into());
                }
                if e["value"].as_str().is_some_and(|v| v.len() > 2000) {
                    return Err("button value over 2000".into());
                }
            }
        }
    }
    Ok(())
}

impl FakeSlack {
    pub async fn start() -> FakeSlack {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ws_addr = ws_listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let seq = Arc::new(AtomicU64::new(1));
        let changed = Arc::new(tokio::sync::Notify::new());
        let http_task = {
            let (state, seq, changed) = (state.clone(), seq.clone(), changed.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { return };
                    let (state, seq, changed) = (state.clone(), seq.clone(), changed.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<Incoming>| {
                            let (state, seq, changed) = (state.clone(), seq.clone(), changed.clone());
                            async move { Ok::<_, Infallible>(web_api(req, &state, &seq, ws_addr, &changed).await) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            })
        };
        let ws_task = {
            let (state, changed) = (state.clone(), changed.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = ws_listener.accept().await else { return };
                    let (state, changed) = (state.clone(), changed.clone());
                    tokio::spawn(socket_conn(stream, state, changed));
                }
            })
        };
        FakeSlack { addr, state, seq, changed, _tasks: vec![http_task, ws_task] }
    }

    /// The `api_base` to configure.
    pub fn api_base(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    pub fn set_health(&self, h: Health) {
        self.state.lock().unwrap().health = Some(h);
    }

    pub fn limit_channels(&self, every: Duration) {
        self.state.lock().unwrap().channel_limit = Some(every);
    }

    pub fn known_channels(&self, channels: &[&str]) {
        self.state.lock().unwrap().channels = channels.iter().map(|c| c.to_string()).collect();
    }

    pub fn set_group(&self, group: &str, users: &[&str]) {
        self.state.lock().unwrap().groups.insert(group.into(), users.iter().map(|u| u.to_string()).collect());
    }

    /// A `trigger_id` as Slack issues with a click; valid for 3 seconds.
    pub fn issue_trigger(&self) -> String {
        let t = format!("{}.{}.{:032x}", 4_000_000 + self.seq.fetch_add(1, Ordering::SeqCst), 47445629121u64, 7);
        self.state.lock().unwrap().triggers.insert(t.clone(), Instant::now());
        t
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn calls_to(&self, method: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.method == method).collect()
    }

    /// Successful calls to `method` whose arguments satisfy `pred`.
    pub fn ok_calls(&self, method: &str, pred: impl Fn(&Value) -> bool) -> Vec<Call> {
        self.calls_to(method).into_iter().filter(|c| c.status == 200 && c.error.is_none() && pred(&c.args)).collect()
    }

    /// Waits until `f` over the calls gives `Some`.
    pub async fn wait_for<T>(&self, what: &str, timeout: Duration, f: impl Fn(&FakeSlack) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if let Some(v) = f(self) {
                return v;
            }
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                if let Some(v) = f(self) {
                    return v;
                }
                let summary: Vec<String> =
                    self.calls().iter().map(|c| format!("{} {} {:?}", c.method, c.status, c.error)).collect();
                panic!("fake slack: timed out waiting for {what}; calls: {summary:#?}");
            }
        }
    }

    /// The card posted for `approval_id` in `channel`: (ts, message as it is now).
    pub fn card(&self, channel: &str, approval_id: &str) -> Option<(String, Value)> {
        let s = self.state.lock().unwrap();
        s.messages
            .iter()
            .find(|((c, _), m)| c == channel && m["blocks"].to_string().contains(approval_id))
            .map(|((_, ts), m)| (ts.clone(), m.clone()))
    }

    // ----- Socket Mode -----

    pub fn sockets(&self) -> Vec<Arc<SocketConn>> {
        self.state.lock().unwrap().sockets.clone()
    }

    pub async fn wait_sockets(&self, n: usize) -> Vec<Arc<SocketConn>> {
        self.wait_for(&format!("{n} socket connections"), Duration::from_secs(20), |f| {
            let s = f.sockets();
            (s.len() >= n).then_some(s)
        })
        .await
    }

    /// Sends an `interactive` envelope on connection `i`.
    pub fn send_envelope(&self, i: usize, envelope_id: &str, payload: &Value) {
        let env = json!({
            "envelope_id": envelope_id,
            "payload": payload,
            "type": "interactive",
            "accepts_response_payload": false,
        });
        self.sockets()[i].tx.send(Message::text(env.to_string())).unwrap();
    }

    /// Sends `{"type": "disconnect", "reason": ...}` on connection `i`.
    pub fn send_disconnect(&self, i: usize, reason: &str) {
        let m = json!({"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-fake-1"}});
        self.sockets()[i].tx.send(Message::text(m.to_string())).unwrap();
    }

    /// Envelope ids acknowledged on connection `i`, with when.
    pub fn acks(&self, i: usize) -> Vec<(Instant, String)> {
        self.sockets()[i]
            .received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(t, v)| v["envelope_id"].as_str().map(|e| (*t, e.to_string())))
            .collect()
    }
}

fn form_args(body: &[u8]) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(body) {
        m.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    Value::Object(m)
}

async fn web_api(
    req: Request<Incoming>,
    state: &Mutex<State>,
    seq: &AtomicU64,
    ws_addr: SocketAddr,
    changed: &tokio::sync::Notify,
) -> Response<Full<Bytes>> {
    let at = Instant::now();
    let method = req.uri().path().trim_start_matches("/api/").to_string();
    let authorization = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type =
        req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut args = if content_type.starts_with("application/json") {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    } else {
        form_args(&body)
    };
    if let (Some(obj), false) = (args.as_object_mut(), query.is_empty()) {
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            obj.entry(k.into_owned()).or_insert(Value::String(v.into_owned()));
        }
    }
    let (status, answer, retry_after) = {
        let mut s = state.lock().unwrap();
        let (status, answer, retry_after) = match s.health.unwrap_or(Health::Up) {
            Health::Down => (503, json!({"ok": false, "error": "service_unavailable"}), None),
            Health::RateLimited(secs) => (429, json!({"ok": false, "error": "ratelimited"}), Some(secs)),
            Health::Up => {
                let (st, v) = answer(&mut s, &method, authorization.as_deref(), &args, seq, ws_addr);
                if st == 429 {
                    (429, v, Some(1))
                } else {
                    (st, v, None)
                }
            }
        };
        s.calls.push(Call {
            method: method.clone(),
            authorization,
            content_type,
            args,
            at,
            status,
            error: (answer["ok"] == false).then(|| answer["error"].as_str().unwrap_or("").to_string()),
        });
        (status, answer, retry_after)
    };
    changed.notify_waiters();
    let mut r = Response::new(Full::new(Bytes::from(answer.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert("content-type", "application/json; charset=utf-8".parse().unwrap());
    if let Some(s) = retry_after {
        r.headers_mut().insert("retry-after", s.to_string().parse().unwrap());
    }
    r
}

fn answer(
    s: &mut State,
    method: &str,
    authorization: Option<&str>,
    args: &Value,
    seq: &AtomicU64,
    ws_addr: SocketAddr,
) -> (u16, Value) {
    let token = authorization.and_then(|a| a.strip_prefix("Bearer "));
    let Some(token) = token else { return fail("not_authed") };
    let app_method = method == "apps.connections.open";
    match (app_method, token) {
        (true, APP_TOKEN) | (false, BOT_TOKEN) => {}
        (_, t) if t == APP_TOKEN || t == BOT_TOKEN => return fail("not_allowed_token_type"),
        _ => return fail("invalid_auth"),
    }
    let str_arg = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_string);
    let next_ts =
        || format!("{}.{:06}", 1_795_466_193 + seq.load(Ordering::SeqCst), seq.fetch_add(1, Ordering::SeqCst));
    match method {
        "chat.postMessage" | "chat.update" | "chat.postEphemeral" => {
            let Some(channel) = str_arg("channel") else { return fail("channel_not_found") };
            if !s.channels.is_empty() && !s.channels.contains(&channel) {
                return fail("channel_not_found");
            }
            let text = str_arg("text");
            let blocks = args.get("blocks").cloned();
            if text.is_none() && blocks.is_none() {
                return fail("no_text");
            }
            if let Some(b) = &blocks {
                if check_blocks(b).is_err() {
                    return fail("invalid_blocks");
                }
            }
            let message = |ts: &str| {
                json!({
                    "type": "message", "subtype": "bot_message", "text": text.clone().unwrap_or_default(),
                    "ts": ts, "user": "U0FAKEBOT", "bot_id": "B0FAKEBOT", "app_id": "A0FAKE", "team": "T0FAKE",
                    "blocks": blocks.clone().unwrap_or(json!([])),
                })
            };
            match method {
                "chat.postMessage" => {
                    if let Some(every) = s.channel_limit {
                        let now = Instant::now();
                        if s.last_post.get(&channel).is_some_and(|t| now.duration_since(*t) < every) {
                            return (429, json!({"ok": false, "error": "ratelimited"}));
                        }
                        s.last_post.insert(channel.clone(), now);
                    }
                    let ts = next_ts();
                    let m = message(&ts);
                    s.messages.insert((channel.clone(), ts.clone()), m.clone());
                    ok(json!({"ok": true, "channel": channel, "ts": ts, "message": m}))
                }
                "chat.update" => {
                    let Some(ts) = str_arg("ts") else { return fail("message_not_found") };
                    if !s.messages.contains_key(&(channel.clone(), ts.clone())) {
                        return fail("message_not_found");
                    }
                    let m = message(&ts);
                    s.messages.insert((channel.clone(), ts.clone()), m.clone());
                    ok(
                        json!({"ok": true, "channel": channel, "ts": ts, "text": text.unwrap_or_default(), "message": m}),
                    )
                }
                _ => {
                    if str_arg("user").is_none() {
                        return fail("user_not_in_channel");
                    }
                    ok(json!({"ok": true, "message_ts": next_ts()}))
                }
            }
        }
        "views.open" => {
            let Some(trigger) = str_arg("trigger_id") else { return fail("invalid_arguments") };
            match s.triggers.get(&trigger) {
                None => return fail("invalid_trigger_id"),
                Some(t) if t.elapsed() > Duration::from_secs(3) => return fail("expired_trigger_id"),
                Some(_) => {}
            }
            let view = args.get("view").cloned().unwrap_or(Value::Null);
            if view["type"] != "modal" || view["title"]["text"].as_str().is_none_or(|t| t.chars().count() > 24) {
                return fail("invalid_arguments");
            }
            let mut v = view.clone();
            v["id"] = json!(format!("V{:08}", seq.fetch_add(1, Ordering::SeqCst)));
            v["team_id"] = json!("T0FAKE");
            v["state"] = json!({"values": {}});
            v["hash"] = json!("156772938.1827394");
            v["app_id"] = json!("A0FAKE");
            ok(json!({"ok": true, "view": v}))
        }
        "usergroups.users.list" => {
            let Some(g) = str_arg("usergroup") else { return fail("invalid_arguments") };
            match s.groups.get(&g) {
                Some(users) => ok(json!({"ok": true, "users": users})),
                None => fail("no_such_subteam"),
            }
        }
        "apps.connections.open" => {
            let ticket = seq.fetch_add(1, Ordering::SeqCst);
            ok(json!({"ok": true, "url": format!("ws://{ws_addr}/link/?ticket={ticket}&app_id=A0FAKE")}))
        }
        _ => fail("unknown_method"),
    }
}

// The callback's error type is tungstenite's, large by design.
#[allow(clippy::result_large_err)]
async fn socket_conn(stream: tokio::net::TcpStream, state: Arc<Mutex<State>>, changed: Arc<tokio::sync::Notify>) {
    let ticket = Arc::new(Mutex::new(String::new()));
    let t2 = ticket.clone();
    let cb = move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                   resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
        *t2.lock().unwrap() = req.uri().query().unwrap_or("").to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else { return };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let conn = Arc::new(SocketConn {
        ticket: ticket.lock().unwrap().clone(),
        tx,
        received: Arc::new(Mutex::new(Vec::new())),
        closed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        opened_at: Instant::now(),
        closed_at: Arc::new(Mutex::new(None)),
    });
    let n = {
        let mut s = state.lock().unwrap();
        s.sockets.push(conn.clone());
        s.sockets.iter().filter(|c| !c.closed.load(Ordering::SeqCst)).count()
    };
    let hello = json!({
        "type": "hello",
        "num_connections": n,
        "debug_info": {"host": "applink-fake-1", "build_number": 1, "approximate_connection_time": 18060},
        "connection_info": {"app_id": "A0FAKE"},
    });
    let _ = sink.send(Message::text(hello.to_string())).await;
    changed.notify_waiters();
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(m) => if sink.send(m).await.is_err() { break },
                None => break,
            },
            inc = stream.next() => match inc {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                        conn.received.lock().unwrap().push((Instant::now(), v));
                        changed.notify_waiters();
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    *conn.closed_at.lock().unwrap() = Some(Instant::now());
    conn.closed.store(true, Ordering::SeqCst);
    changed.notify_waiters();
}

// ----- Interaction payloads, as Slack sends them -----

/// A `block_actions` payload for a click on a card button.
pub fn block_actions(user: &str, action_id: &str, value: &str, channel: &str, trigger_id: &str) -> Value {
    json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": "T0FAKE"},
        "api_app_id": "A0FAKE",
        "token": "legacyverificationtoken",
        "container": {"type": "message", "message_ts": "1795466193.000100", "channel_id": channel, "is_ephemeral": false},
        "trigger_id": trigger_id,
        "team": {"id": "T0FAKE", "domain": "fake"},
        "enterprise": null,
        "is_enterprise_install": false,
        "channel": {"id": channel, "name": "approvals"},
        "message": {"type": "message", "ts": "1795466193.000100", "text": "card", "blocks": []},
        "state": {"values": {}},
        "response_url": "https://hooks.slack.com/actions/T0FAKE/1/abc",
        "actions": [{
            "action_id": action_id,
            "block_id": "ap_actions",
            "text": {"type": "plain_text", "text": "Approve", "emoji": true},
            "value": value,
            "style": "primary",
            "type": "button",
            "action_ts": "1795466200.123456",
        }],
    })
}

/// A `view_submission` payload for the reject modal.
pub fn view_submission(user: &str, private_metadata: &str, reason: &str) -> Value {
    json!({
        "type": "view_submission",
        "team": {"id": "T0FAKE", "domain": "fake"},
        "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": "T0FAKE"},
        "api_app_id": "A0FAKE",
        "token": "legacyverificationtoken",
        "trigger_id": "9999.1111.abcdef",
        "view": {
            "id": "V00000001",
            "team_id": "T0FAKE",
            "type": "modal",
            "callback_id": "approvalplane_reject",
            "private_metadata": private_metadata,
            "title": {"type": "plain_text", "text": "Reject request"},
            "blocks": [],
            "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}},
            "hash": "156772938.1827394",
            "app_id": "A0FAKE",
        },
        "response_urls": [],
        "is_enterprise_install": false,
    })
}

/// The form body Slack posts: `payload=<url-encoded JSON>`.
pub fn form_body(payload: &Value) -> String {
    form_urlencoded::Serializer::new(String::new()).append_pair("payload", &payload.to_string()).finish()
}

/// The `v0=` signature of `body` at `ts`, computed here as Slack documents it
/// (independently of the product's verifier).
pub fn sign(secret: &str, ts: u64, body: &str) -> String {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(m.finalize().into_bytes()))
}
