//! The MCP gateway: `/mcp/{name}` for each `[[mcp_server]]`.
//!
//! `tools/call` goes through the gate (policy with `kind: "mcp"`, approval, the
//! same queue and audit as every other entrance). Everything else is relayed
//! as it is, in both protocol revisions: to a Streamable-HTTP upstream as the
//! same HTTP request (with the `Mcp-*` and `MCP-Protocol-Version` headers, the
//! agent's credential replaced by the injected one), or to a stdio child
//! spawned with a cleared environment.
//!
//! Owns the relay and the stdio children. Decisions are the gate's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::approval::StoredRequest;
use crate::config::{McpServerConfig, McpTransport, Secrets, UpstreamConfig};
use crate::gate::{request_id, Gate, McpAction, McpDecision, McpPermit};
use crate::mcp::http::{accepts, header, routing, rpc_error_response, sse_event, sse_response, with_session};
use crate::mcp::protocol::{self, Era, Message, RpcError};
use crate::refusal::Refusal;
use crate::respond::{self, Body, BoxError};
use crate::upstream::{Upstream, UpstreamError};

/// How often a held call's stream gets a keep-alive comment.
const KEEPALIVE: Duration = Duration::from_secs(2);

/// One configured MCP server.
pub struct GatewayServer {
    pub name: String,
    transport: Transport,
    inject_header: Option<http::HeaderName>,
}

enum Transport {
    Http { upstream: Arc<Upstream>, path: String },
    Stdio { command: Vec<String>, env: Vec<(String, String)>, shared: tokio::sync::Mutex<Option<Arc<StdioConn>>> },
}

impl std::fmt::Debug for GatewayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayServer").field("name", &self.name).finish()
    }
}

impl GatewayServer {
    pub fn build(cfg: &McpServerConfig, secrets: &Secrets) -> Result<GatewayServer, UpstreamError> {
        let transport = match &cfg.transport {
            McpTransport::Http { url } => {
                let ucfg = UpstreamConfig {
                    name: cfg.name.clone(),
                    url: url.clone(),
                    inject_header: cfg.inject_header.clone(),
                    inject_value: cfg.inject_value.clone(),
                    ca_file: None,
                    connect_timeout: Duration::from_secs(10),
                    response_timeout: Duration::from_secs(300),
                    max_connections: 256,
                };
                let inject = cfg.inject_value.as_ref().and_then(|r| secrets.get(r));
                let upstream = Arc::new(Upstream::build(&ucfg, inject)?);
                let path = if url.path().trim_end_matches('/').is_empty() { "/" } else { "" };
                Transport::Http { upstream, path: path.to_string() }
            }
            McpTransport::Stdio { command } => Transport::Stdio {
                command: command.clone(),
                env: cfg
                    .env
                    .iter()
                    .filter_map(|(k, r)| secrets.get(r).map(|v| (k.clone(), v.expose().to_string())))
                    .collect(),
                shared: tokio::sync::Mutex::new(None),
            },
        };
        Ok(GatewayServer { name: cfg.name.clone(), transport, inject_header: cfg.inject_header.clone() })
    }
}

/// Gateway sessions with stdio children (2025-11-25: one child per session).
#[derive(Debug, Default)]
pub struct ChildSessions {
    map: Mutex<HashMap<String, (String, Arc<StdioConn>)>>,
}

/// Calls held for approval, by (session or agent, request id): a
/// `notifications/cancelled` for one of them abandons its approval.
#[derive(Debug, Default)]
pub struct HeldCalls {
    map: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl HeldCalls {
    fn key(scope: &str, id: &Value) -> String {
        format!("{scope}\u{0}{id}")
    }
    fn register(&self, scope: &str, id: &Value) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.map.lock() {
            m.insert(Self::key(scope, id), tx);
        }
        rx
    }
    fn remove(&self, scope: &str, id: &Value) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&Self::key(scope, id));
        }
    }
    fn cancel(&self, scope: &str, id: &Value) -> bool {
        match self.map.lock().ok().and_then(|mut m| m.remove(&Self::key(scope, id))) {
            Some(tx) => tx.send(()).is_ok(),
            None => false,
        }
    }
}

/// What a client POSTed, read once.
struct Post {
    headers: HeaderMap,
    body: Bytes,
    forward_headers: Vec<(String, String)>,
}

/// `/mcp/{name}`.
pub async fn handle(gate: &Arc<Gate>, req: Request<Incoming>, name: &str) -> Result<Response<Body>, Refusal> {
    let live = gate.live();
    let server =
        live.mcp_servers.get(name).cloned().ok_or_else(|| Refusal::NotFound(format!("MCP server {name:?}")))?;
    let (parts, body) = req.into_parts();
    let agent = crate::proxy::authenticate(gate, &live, &parts.headers, server.inject_header.as_ref())?;
    let forward_headers =
        crate::proxy::forwardable(&parts.headers, live.agents_configured(), server.inject_header.as_ref())?;
    drop(live);
    let body =
        crate::proxy::read_body(body, &parts.headers, gate.settings.max_body_bytes, gate.settings.body_read_timeout)
            .await?;
    let post = Post { headers: parts.headers, body, forward_headers };
    let scope = header(&post.headers, protocol::HEADER_SESSION).map(str::to_string).unwrap_or_else(|| agent.clone());
    if parts.method != Method::POST {
        return relay_other(gate, &server, &parts.method, &post, &agent).await;
    }
    // Strict: with a duplicate key, the policy and the server could read
    // different values.
    let v: Value = match crate::policy::json::parse_strict(&post.body) {
        Ok(v) => v,
        Err(e) => {
            let e = RpcError::new(protocol::PARSE_ERROR, format!("parse error: {e}"));
            return Ok(rpc_error_response(StatusCode::BAD_REQUEST, &Value::Null, &e));
        }
    };
    let msg = match protocol::classify(&v) {
        Ok(m) => m,
        Err(e) => return Ok(rpc_error_response(StatusCode::BAD_REQUEST, &protocol::salvage_id(&v), &e)),
    };
    match &msg {
        Message::Notification { method, params } if method == "notifications/cancelled" => {
            if let Some(id) = params.get("requestId") {
                gate.mcp.held.cancel(&scope, id);
            }
        }
        Message::Request { id, method, params } if method == "tools/call" => {
            return gated_call(gate, server, post, &agent, &scope, id.clone(), params.clone()).await;
        }
        _ => {}
    }
    forward(gate, &server, post, &agent, msg).await
}

/// A `tools/call`: decide, maybe hold, then forward or answer with a tool error.
async fn gated_call(
    gate: &Arc<Gate>,
    server: Arc<GatewayServer>,
    post: Post,
    agent: &str,
    scope: &str,
    id: Value,
    params: Value,
) -> Result<Response<Body>, Refusal> {
    let routing = routing(&post.headers);
    let era = if protocol::is_modern("tools/call", &params, routing.protocol_version) {
        if let Err(e) = protocol::check_modern("tools/call", &params, Some(routing)) {
            return Ok(rpc_error_response(e.http_status(), &id, &e));
        }
        Era::Modern
    } else {
        if let Err(e) = protocol::check_name_header("tools/call", &params, routing.name) {
            return Ok(rpc_error_response(StatusCode::BAD_REQUEST, &id, &e));
        }
        Era::Handshake
    };
    let Some(tool) = params.get("name").and_then(Value::as_str) else {
        let e = RpcError::new(protocol::INVALID_PARAMS, "tools/call needs params.name");
        return Ok(rpc_error_response(StatusCode::BAD_REQUEST, &id, &e));
    };
    let arguments = params.get("arguments").cloned().unwrap_or_else(|| json!({}));
    let justification = header(&post.headers, crate::proxy::JUSTIFICATION_HEADER).map(str::to_string);
    let action = McpAction {
        request_id: request_id(),
        agent: agent.to_string(),
        server: server.name.clone(),
        tool: tool.to_string(),
        arguments,
        justification,
    };
    let approval = match gate.mcp_decide(&action).await {
        Err(r) => return Ok(refusal_result(&id, &r, era, &post.headers)),
        Ok(McpDecision::Allowed(permit)) => {
            let msg = Message::Request { id, method: "tools/call".into(), params };
            return forward_permitted(gate, &server, post, agent, msg, permit).await;
        }
        Ok(McpDecision::Held(a)) => a,
    };
    let (_, want_sse) = accepts(&post.headers);
    let cancel = gate.mcp.held.register(scope, &id);
    let wait = crate::proxy::prefer_wait(&post.headers)
        .map_or(gate.settings.hold_timeout, |w| w.min(gate.settings.hold_timeout));
    if !want_sse {
        let mut guard = Abandon { gate: gate.clone(), id: Some(approval.id.clone()) };
        let held = tokio::select! {
            r = gate.mcp_hold(&approval, &action.request_id, wait) => Some(r),
            _ = cancel => None,
        };
        gate.mcp.held.remove(scope, &id);
        let Some(held) = held else {
            return Ok(accepted());
        };
        guard.id = None;
        return match held {
            Ok(permit) => {
                let msg = Message::Request { id, method: "tools/call".into(), params };
                forward_permitted(gate, &server, post, agent, msg, permit).await
            }
            Err(r) => Ok(refusal_result(&id, &r, era, &post.headers)),
        };
    }
    // Answer as a stream at once, so the client hears progress while a person
    // decides, and its going away (2026-07-28) or cancelling abandons the approval.
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let gate = gate.clone();
    let agent = agent.to_string();
    let scope = scope.to_string();
    let token = protocol::progress_token(&params);
    tokio::spawn(async move {
        let mut guard = Abandon { gate: gate.clone(), id: Some(approval.id.clone()) };
        let hold = gate.mcp_hold(&approval, &action.request_id, wait);
        tokio::pin!(hold);
        tokio::pin!(cancel);
        let mut tick = tokio::time::interval(KEEPALIVE);
        tick.tick().await;
        let mut step = 0u64;
        let held = loop {
            tokio::select! {
                r = &mut hold => break Some(r),
                _ = &mut cancel => break None,
                _ = tx.closed(), if era == Era::Modern => break None,
                _ = tick.tick() => {
                    step += 1;
                    let b = match &token {
                        Some(t) => sse_event(&protocol::notification("notifications/progress", json!({
                            "progressToken": t, "progress": step,
                            "message": format!("waiting for a person to decide approval {}", approval.id),
                        }))),
                        None => Bytes::from_static(b": waiting for approval\n\n"),
                    };
                    let _ = tx.send(b).await;
                }
            }
        };
        gate.mcp.held.remove(&scope, &id);
        let Some(held) = held else { return };
        guard.id = None;
        match held {
            Err(r) => {
                let _ = tx.send(sse_event(&refusal_message(&id, &r, era))).await;
            }
            Ok(permit) => {
                let msg = Message::Request { id: id.clone(), method: "tools/call".into(), params };
                let resp = match forward_permitted(&gate, &server, post, &agent, msg, permit).await {
                    Ok(r) => r,
                    Err(r) => r.response(),
                };
                pipe_as_sse(resp, &tx).await;
            }
        }
    });
    Ok(sse_response(rx))
}

/// Abandons a held approval when its call goes away before the hold ends.
struct Abandon {
    gate: Arc<Gate>,
    id: Option<String>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let gate = self.gate.clone();
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move { crate::mcp::http::abandon_in_gate(&gate, &id).await });
            }
        }
    }
}

/// Sends a response's body into an SSE stream: SSE as it is, JSON as one event.
async fn pipe_as_sse(resp: Response<Body>, tx: &mpsc::Sender<Bytes>) {
    let is_sse = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = resp.into_body();
    if is_sse {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                if tx.send(d).await.is_err() {
                    return;
                }
            }
        }
        return;
    }
    if let Ok(c) = body.collect().await {
        let b = c.to_bytes();
        if let Ok(v) = serde_json::from_slice::<Value>(&b) {
            let _ = tx.send(sse_event(&v)).await;
        }
    }
}

fn accepted() -> Response<Body> {
    let mut r = Response::new(respond::empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

/// A refusal as the tool result a model can act on.
fn refusal_message(id: &Value, r: &Refusal, era: Era) -> Value {
    let body = r.body();
    let message = body["error"]["message"].as_str().unwrap_or("refused").to_string();
    let text = match r {
        Refusal::ApprovalPending { approval_id, route, .. } => format!(
            "This tool call is waiting for a person to approve it (approval {approval_id}, route {route}). It was \
             not executed. It is still pending: retry the same call later and it goes through once approved."
        ),
        Refusal::ApprovalRejected { approval_id, reason, decided_by } => format!(
            "A person ({}) rejected this tool call (approval {approval_id}): {}. It was not executed. Do not retry \
             it unchanged; tell the user why, or change the call.",
            decided_by.as_deref().unwrap_or("an approver"),
            reason.as_deref().unwrap_or("no reason given")
        ),
        _ => message,
    };
    let mut result = json!({
        "content": [{"type": "text", "text": text}],
        "structuredContent": body,
        "isError": true,
    });
    if era == Era::Modern {
        result["resultType"] = json!("complete");
    }
    protocol::result_message(id, result)
}

fn refusal_result(id: &Value, r: &Refusal, era: Era, headers: &HeaderMap) -> Response<Body> {
    let msg = refusal_message(id, r, era);
    let (json_ok, sse_ok) = accepts(headers);
    if !json_ok && sse_ok {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(sse_event(&msg));
        return sse_response(rx);
    }
    respond::json(StatusCode::OK, &msg)
}

/// Forwards a permitted tool call and records how it went.
async fn forward_permitted(
    gate: &Arc<Gate>,
    server: &Arc<GatewayServer>,
    post: Post,
    agent: &str,
    msg: Message,
    permit: McpPermit,
) -> Result<Response<Body>, Refusal> {
    let start = Instant::now();
    let res = forward(gate, server, post, agent, msg).await;
    let (status, outcome, error) = match &res {
        Ok(r) => (Some(r.status().as_u16()), "ok", None),
        Err(Refusal::UpstreamUnreachable { maybe_delivered: false, .. }) => (None, "connect_failed", None),
        Err(r) => (None, "unknown", Some(r.kind().to_string())),
    };
    gate.mcp_forwarded(&permit, status, outcome, error, start.elapsed()).await;
    res
}

/// Relays one POSTed message to the server and its answer back.
async fn forward(
    gate: &Arc<Gate>,
    server: &Arc<GatewayServer>,
    post: Post,
    agent: &str,
    msg: Message,
) -> Result<Response<Body>, Refusal> {
    match &server.transport {
        Transport::Http { upstream, path } => {
            relay_http(upstream, Method::POST, path, post.forward_headers, post.body, &server.name).await
        }
        Transport::Stdio { .. } => forward_stdio(gate, server, &post, agent, msg).await,
    }
}

/// GET and DELETE: relayed to HTTP upstreams; for stdio children, DELETE ends
/// the session and there is no standing stream.
async fn relay_other(
    gate: &Arc<Gate>,
    server: &Arc<GatewayServer>,
    method: &Method,
    post: &Post,
    agent: &str,
) -> Result<Response<Body>, Refusal> {
    match &server.transport {
        Transport::Http { upstream, path } => {
            relay_http(upstream, method.clone(), path, post.forward_headers.clone(), post.body.clone(), &server.name)
                .await
        }
        Transport::Stdio { .. } => {
            if *method == Method::DELETE {
                if let Some(sid) = header(&post.headers, protocol::HEADER_SESSION) {
                    let removed = gate.mcp.children.map.lock().ok().and_then(|mut m| match m.get(sid) {
                        Some((a, _)) if a == agent => m.remove(sid),
                        _ => None,
                    });
                    if let Some((_, conn)) = removed {
                        conn.kill();
                        return Ok(Response::new(respond::empty()));
                    }
                }
                return Ok(respond::text(StatusCode::NOT_FOUND, "no such session"));
            }
            let mut r = respond::text(StatusCode::METHOD_NOT_ALLOWED, "use POST");
            r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("POST, DELETE"));
            Ok(r)
        }
    }
}

async fn relay_http(
    upstream: &Upstream,
    method: Method,
    path: &str,
    headers: Vec<(String, String)>,
    body: Bytes,
    name: &str,
) -> Result<Response<Body>, Refusal> {
    let req = StoredRequest {
        upstream: name.to_string(),
        method: method.as_str().to_string(),
        path_and_query: path.to_string(),
        headers,
        body,
    };
    match upstream.send(&req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            respond::strip_hop_by_hop(&mut parts.headers);
            let body: Body = body.map_err(|e| Box::new(e) as BoxError).boxed();
            Ok(Response::from_parts(parts, body))
        }
        Err(e) => Err(Refusal::UpstreamUnreachable {
            upstream: name.to_string(),
            detail: e.to_string(),
            maybe_delivered: e.maybe_sent(),
        }),
    }
}

// -------------------------------------------------------------------------
// Stdio children.
// -------------------------------------------------------------------------

/// One running stdio child and its requests in flight. Request ids are
/// renumbered on the way in (several clients share a 2026-07-28 child) and
/// restored on the way out; the child's own requests keep their ids.
pub struct StdioConn {
    to_child: mpsc::Sender<Value>,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
    child: Mutex<Option<tokio::process::Child>>,
}

impl std::fmt::Debug for StdioConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioConn").finish()
    }
}

struct Pending {
    client_id: Value,
    progress_token: Option<Value>,
    reply: mpsc::Sender<Value>,
}

impl StdioConn {
    fn spawn(command: &[String], env: &[(String, String)]) -> std::io::Result<Arc<StdioConn>> {
        let (program, args) = command.split_first().ok_or_else(|| std::io::Error::other("empty command"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?;
        let (tx, mut rx) = mpsc::channel::<Value>(64);
        let conn = Arc::new(StdioConn {
            to_child: tx,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            child: Mutex::new(Some(child)),
        });
        tokio::spawn(async move {
            let mut stdin = stdin;
            while let Some(v) = rx.recv().await {
                let mut line = v.to_string().into_bytes();
                line.push(b'\n');
                if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                    return;
                }
            }
        });
        let weak = Arc::downgrade(&conn);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(conn) = weak.upgrade() else { return };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    tracing::warn!("stdio MCP server wrote a line that is not JSON");
                    continue;
                };
                conn.on_child_message(v).await;
            }
            if let Some(conn) = weak.upgrade() {
                // The child ended: every caller still waiting gets an error.
                let pending: Vec<Pending> =
                    conn.pending.lock().map(|mut m| m.drain().map(|(_, p)| p).collect()).unwrap_or_default();
                for p in pending {
                    let e = RpcError::new(protocol::INTERNAL_ERROR, "the MCP server process ended");
                    let _ = p.reply.send(protocol::error_message(&p.client_id, &e)).await;
                }
            }
        });
        Ok(conn)
    }

    fn kill(&self) {
        if let Some(mut c) = self.child.lock().ok().and_then(|mut c| c.take()) {
            let _ = c.start_kill();
        }
    }

    async fn on_child_message(&self, mut v: Value) {
        let is_response = v.get("method").is_none() && (v.get("result").is_some() || v.get("error").is_some());
        if is_response {
            let Some(n) = v.get("id").and_then(Value::as_u64) else { return };
            let p = self.pending.lock().ok().and_then(|mut m| m.remove(&n));
            if let Some(p) = p {
                v["id"] = p.client_id.clone();
                let _ = p.reply.send(v).await;
            }
            return;
        }
        // A notification or a request of the child's: to the call it belongs to
        // (by progress token), else to the most recent call in flight.
        let token = v.get("params").and_then(|p| p.get("progressToken")).cloned();
        let reply = self.pending.lock().ok().and_then(|m| {
            token
                .as_ref()
                .and_then(|t| m.values().find(|p| p.progress_token.as_ref() == Some(t)))
                .or_else(|| m.iter().max_by_key(|(k, _)| **k).map(|(_, p)| p))
                .map(|p| p.reply.clone())
        });
        match reply {
            Some(r) => {
                let _ = r.send(v).await;
            }
            None => tracing::debug!("dropped a message from a stdio MCP server: no call in flight"),
        }
    }

    /// Sends a request; the receiver yields related messages, then the response.
    async fn request(&self, client_id: Value, mut msg: Value) -> Result<mpsc::Receiver<Value>, RpcError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(32);
        let progress_token = msg.get("params").and_then(protocol::progress_token);
        if let Ok(mut m) = self.pending.lock() {
            m.insert(n, Pending { client_id, progress_token, reply: tx });
        }
        msg["id"] = json!(n);
        self.to_child
            .send(msg)
            .await
            .map_err(|_| RpcError::new(protocol::INTERNAL_ERROR, "the MCP server process is not running"))?;
        Ok(rx)
    }

    /// Relays a client notification or response; a cancellation names the
    /// renumbered id.
    async fn send(&self, mut msg: Value) {
        if msg.get("method").and_then(Value::as_str) == Some("notifications/cancelled") {
            let client_id = msg["params"]["requestId"].clone();
            let ours = self
                .pending
                .lock()
                .ok()
                .and_then(|m| m.iter().find(|(_, p)| p.client_id == client_id).map(|(k, _)| *k));
            match ours {
                Some(n) => msg["params"]["requestId"] = json!(n),
                None => return,
            }
        }
        let _ = self.to_child.send(msg).await;
    }

    fn forget(&self, client_id: &Value) {
        if let Ok(mut m) = self.pending.lock() {
            m.retain(|_, p| &p.client_id != client_id);
        }
    }
}

/// The child for this message: a new one for `initialize`, the session's for
/// 2025-11-25 requests, the shared one for 2026-07-28.
async fn child_for(
    gate: &Gate,
    server: &GatewayServer,
    headers: &HeaderMap,
    agent: &str,
    msg: &Message,
) -> Result<(Arc<StdioConn>, Option<String>), Response<Body>> {
    let Transport::Stdio { command, env, shared } = &server.transport else {
        unreachable!("child_for is only called for stdio servers")
    };
    let spawn_failed = |e: std::io::Error| {
        tracing::error!(mcp_server = %server.name, error = %e, "cannot start the MCP server process");
        Refusal::UpstreamUnreachable {
            upstream: server.name.clone(),
            detail: "the MCP server process could not be started".into(),
            maybe_delivered: false,
        }
        .response()
    };
    let routing = routing(headers);
    let (method, params) = match msg {
        Message::Request { method, params, .. } | Message::Notification { method, params } => (method.as_str(), params),
        Message::Response { .. } => ("", &Value::Null),
    };
    if let Some(sid) = header(headers, protocol::HEADER_SESSION) {
        let found = gate.mcp.children.map.lock().ok().and_then(|m| m.get(sid).cloned());
        return match found {
            Some((a, conn)) if a == agent => Ok((conn, Some(sid.to_string()))),
            _ => Err(rpc_error_response(
                StatusCode::NOT_FOUND,
                &Value::Null,
                &RpcError::new(protocol::INVALID_REQUEST, "unknown or expired session: initialize again"),
            )),
        };
    }
    if method == "initialize" {
        let conn = StdioConn::spawn(command, env).map_err(spawn_failed)?;
        use rand::RngCore;
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        let sid = hex::encode(b);
        if let Ok(mut m) = gate.mcp.children.map.lock() {
            m.insert(sid.clone(), (agent.to_string(), conn.clone()));
        }
        return Ok((conn, Some(sid)));
    }
    if protocol::is_modern(method, params, routing.protocol_version) || matches!(msg, Message::Notification { .. }) {
        let mut g = shared.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok((c.clone(), None));
        }
        let c = StdioConn::spawn(command, env).map_err(spawn_failed)?;
        *g = Some(c.clone());
        return Ok((c, None));
    }
    Err(rpc_error_response(
        StatusCode::BAD_REQUEST,
        &Value::Null,
        &RpcError::new(protocol::INVALID_REQUEST, "Mcp-Session-Id is required: call initialize first"),
    ))
}

async fn forward_stdio(
    gate: &Arc<Gate>,
    server: &Arc<GatewayServer>,
    post: &Post,
    agent: &str,
    msg: Message,
) -> Result<Response<Body>, Refusal> {
    let (conn, sid) = match child_for(gate, server, &post.headers, agent, &msg).await {
        Ok(x) => x,
        Err(resp) => return Ok(resp),
    };
    let raw: Value = serde_json::from_slice(&post.body).unwrap_or(Value::Null);
    let Message::Request { id, .. } = msg else {
        conn.send(raw).await;
        let r = accepted();
        return Ok(match sid {
            Some(s) => with_session(r, &s),
            None => r,
        });
    };
    let mut rx = match conn.request(id.clone(), raw).await {
        Ok(rx) => rx,
        Err(e) => return Ok(rpc_error_response(StatusCode::BAD_GATEWAY, &id, &e)),
    };
    let (_, want_sse) = accepts(&post.headers);
    let resp = if want_sse {
        let (tx, brx) = mpsc::channel::<Bytes>(32);
        let conn2 = conn.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => {
                            let done = m.get("method").is_none() && m.get("id") == Some(&id);
                            if tx.send(sse_event(&m)).await.is_err() || done {
                                break;
                            }
                        }
                        None => break,
                    },
                    _ = tx.closed() => break,
                }
            }
            conn2.forget(&id);
        });
        sse_response(brx)
    } else {
        let mut out = None;
        while let Some(m) = rx.recv().await {
            if m.get("method").is_none() && m.get("id") == Some(&id) {
                out = Some(m);
                break;
            }
        }
        conn.forget(&id);
        let e = RpcError::new(protocol::INTERNAL_ERROR, "the MCP server process ended");
        respond::json(StatusCode::OK, &out.unwrap_or_else(|| protocol::error_message(&id, &e)))
    };
    Ok(match sid {
        Some(s) => with_session(resp, &s),
        None => resp,
    })
}
