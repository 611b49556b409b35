//! Streamable HTTP for the approval server at `/mcp`, both protocol revisions.
//!
//! 2025-11-25: `initialize` opens a session (`Mcp-Session-Id`); later requests
//! name it; `notifications/cancelled` cancels a call; `DELETE` ends the session.
//! 2026-07-28: every POST stands alone, carries its `_meta` envelope and the
//! `MCP-Protocol-Version` / `Mcp-Method` / `Mcp-Name` headers, and closing the
//! response stream cancels the call. Calls answer as an SSE stream when the
//! client accepts one (so progress can flow), otherwise as one JSON object.
//!
//! Owns sessions and in-flight calls; the answers themselves are
//! [`crate::mcp::tools`]'s.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::api::{answer, AskBody};
use crate::approval::{Approval, Status};
use crate::gate::{request_id, AskAction, Gate};
use crate::mcp::protocol::{self, Era, Message, RoutingHeaders, RpcError};
use crate::mcp::tools::{refusal_failure, ApprovalServer, Approvals, ToolFailure};
use crate::refusal::Refusal;
use crate::respond::{self, Body, BoxError};
use crate::store::Finish;

/// Sessions idle longer than this are dropped.
const SESSION_IDLE: Duration = Duration::from_secs(3600);
const MAX_SESSIONS: usize = 10_000;
/// How often a streamed call sends a keep-alive comment.
const KEEPALIVE: Duration = Duration::from_secs(2);

/// A 2025-11-25 session: its agent, and its calls in flight by request id.
#[derive(Debug)]
pub struct Session {
    pub agent: String,
    pub version: String,
    inflight: Mutex<HashMap<String, oneshot::Sender<()>>>,
    last_used: Mutex<tokio::time::Instant>,
}

impl Session {
    pub fn new(agent: String, version: String) -> Session {
        Session {
            agent,
            version,
            inflight: Mutex::new(HashMap::new()),
            last_used: Mutex::new(tokio::time::Instant::now()),
        }
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = tokio::time::Instant::now();
        }
    }

    fn idle(&self) -> Duration {
        self.last_used.lock().map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Registers a call; the receiver fires when the client cancels it.
    pub fn start_call(&self, id: &Value) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.inflight.lock() {
            m.insert(id.to_string(), tx);
        }
        rx
    }

    pub fn end_call(&self, id: &Value) {
        if let Ok(mut m) = self.inflight.lock() {
            m.remove(&id.to_string());
        }
    }

    /// `notifications/cancelled`.
    pub fn cancel(&self, params: &Value) {
        let Some(id) = params.get("requestId") else { return };
        if let Some(tx) = self.inflight.lock().ok().and_then(|mut m| m.remove(&id.to_string())) {
            let _ = tx.send(());
        }
    }
}

/// Session tables for `/mcp` and the gateway.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub fn open(&self, s: Session) -> (String, Arc<Session>) {
        use rand::RngCore;
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        let id = hex::encode(b);
        let s = Arc::new(s);
        if let Ok(mut m) = self.map.lock() {
            m.retain(|_, v| v.idle() < SESSION_IDLE);
            if m.len() >= MAX_SESSIONS {
                if let Some(k) = m.iter().max_by_key(|(_, v)| v.idle()).map(|(k, _)| k.clone()) {
                    m.remove(&k);
                }
            }
            m.insert(id.clone(), s.clone());
        }
        (id, s)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let s = self.map.lock().ok()?.get(id).cloned()?;
        s.touch();
        Some(s)
    }

    pub fn close(&self, id: &str) -> bool {
        self.map.lock().map(|mut m| m.remove(id).is_some()).unwrap_or(false)
    }
}

/// Approvals asked through the gate in-process, as one agent.
pub struct GateApprovals {
    pub gate: Arc<Gate>,
    pub agent: String,
}

#[async_trait]
impl Approvals for GateApprovals {
    async fn request(&self, body: AskBody) -> Result<Value, ToolFailure> {
        let risk = body.validate().map_err(|m| ToolFailure { message: m, structured: None })?;
        let a = self
            .gate
            .ask(AskAction {
                request_id: request_id(),
                agent: self.agent.clone(),
                action: body.action,
                payload: body.payload,
                risk,
                policy_hints: body.policy_hints,
                justification: body.justification,
                idempotency_key: None,
                wait: Duration::ZERO,
            })
            .await
            .map_err(|r| refusal_failure(&r))?;
        Ok(answer(&a))
    }

    async fn get(&self, id: &str, wait: Duration) -> Result<Value, ToolFailure> {
        let not_found = || refusal_failure(&Refusal::NotFound(format!("approval {id}")));
        if !Approval::looks_like_id(id) {
            return Err(not_found());
        }
        let a = self
            .gate
            .store
            .get(id)
            .await
            .map_err(|_| refusal_failure(&Refusal::StoreUnavailable))?
            .ok_or_else(not_found)?;
        if a.agent != self.agent {
            return Err(not_found());
        }
        let a = if a.status == Status::Pending && !wait.is_zero() {
            self.gate.wait_for(id, wait).await.map_err(|r| refusal_failure(&r))?
        } else {
            a
        };
        Ok(answer(&a))
    }

    async fn abandon(&self, id: &str) {
        abandon_in_gate(&self.gate, id).await;
    }

    fn max_wait(&self) -> Duration {
        self.gate.settings.hold_timeout
    }
}

/// Marks a pending approval abandoned because its MCP caller cancelled.
pub async fn abandon_in_gate(gate: &Gate, id: &str) {
    match gate.finish(id, Finish::Abandoned, "the MCP client cancelled the call").await {
        Ok(Some(_)) => tracing::info!(approval.id = %id, "approval abandoned: the MCP client cancelled"),
        Ok(None) => {}
        Err(e) => tracing::error!(approval.id = %id, error = %e, "could not abandon approval"),
    }
}

/// An SSE or JSON body fed by a channel; the receiver's drop tells the sender
/// that the client went away.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub fn sse_event(v: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {v}\n\n"))
}

pub fn sse_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// What the client's `Accept` allows.
pub fn accepts(headers: &HeaderMap) -> (bool, bool) {
    let mut json = false;
    let mut sse = false;
    for v in headers.get_all(ACCEPT).iter().filter_map(|v| v.to_str().ok()) {
        for t in v.split(',') {
            let t = t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            match t.as_str() {
                "*/*" => {
                    json = true;
                    sse = true;
                }
                "application/json" | "application/*" => json = true,
                "text/event-stream" | "text/*" => sse = true,
                _ => {}
            }
        }
    }
    if headers.get(ACCEPT).is_none() {
        json = true;
    }
    (json, sse)
}

pub fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub fn routing(h: &HeaderMap) -> RoutingHeaders<'_> {
    RoutingHeaders {
        protocol_version: header(h, protocol::HEADER_PROTOCOL_VERSION),
        method: header(h, protocol::HEADER_METHOD),
        name: header(h, protocol::HEADER_NAME),
    }
}

/// A JSON-RPC error as an HTTP response.
pub fn rpc_error_response(status: StatusCode, id: &Value, e: &RpcError) -> Response<Body> {
    respond::json(status, &protocol::error_message(id, e))
}

pub fn with_session(mut r: Response<Body>, sid: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(sid) {
        r.headers_mut().insert(protocol::HEADER_SESSION, v);
    }
    r
}

/// `/mcp`.
pub async fn handle(gate: &Arc<Gate>, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let (parts, body) = req.into_parts();
    if parts.uri.path().trim_end_matches('/') != "/mcp" {
        return Err(Refusal::NotFound(format!("{} {}", parts.method, parts.uri.path())));
    }
    let live = gate.live();
    let agent = crate::proxy::authenticate(gate, &live, &parts.headers, None)?;
    drop(live);
    let sessions = &gate.mcp.sessions;
    match parts.method {
        Method::POST => {}
        Method::DELETE => {
            let Some(sid) = header(&parts.headers, protocol::HEADER_SESSION) else {
                return Ok(respond::text(StatusCode::BAD_REQUEST, "Mcp-Session-Id is required"));
            };
            return Ok(match sessions.get(sid) {
                Some(s) if s.agent == agent => {
                    sessions.close(sid);
                    Response::new(respond::empty())
                }
                _ => respond::text(StatusCode::NOT_FOUND, "no such session"),
            });
        }
        _ => {
            // No standing GET stream: this server never sends unsolicited messages.
            let mut r = respond::text(StatusCode::METHOD_NOT_ALLOWED, "use POST");
            r.headers_mut().insert(ALLOW, HeaderValue::from_static("POST, DELETE"));
            return Ok(r);
        }
    }
    let bytes =
        crate::proxy::read_body(body, &parts.headers, gate.settings.max_body_bytes, gate.settings.body_read_timeout)
            .await?;
    let server = ApprovalServer::new(Arc::new(GateApprovals { gate: gate.clone(), agent: agent.clone() }));
    Ok(serve_post(&parts.headers, &bytes, sessions, &agent, server).await)
}

/// One POST to the approval server, in either era.
async fn serve_post(
    headers: &HeaderMap,
    bytes: &[u8],
    sessions: &Sessions,
    agent: &str,
    server: ApprovalServer,
) -> Response<Body> {
    // Strict: with a duplicate key, the policy and the server could read
    // different values.
    let v: Value = match crate::policy::json::parse_strict(bytes) {
        Ok(v) => v,
        Err(e) => {
            return rpc_error_response(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                &RpcError::new(protocol::PARSE_ERROR, format!("parse error: {e}")),
            )
        }
    };
    let msg = match protocol::classify(&v) {
        Ok(m) => m,
        Err(e) => return rpc_error_response(StatusCode::BAD_REQUEST, &protocol::salvage_id(&v), &e),
    };
    let routing = routing(headers);
    let sid = header(headers, protocol::HEADER_SESSION);
    let (id, method, params) = match msg {
        Message::Response { .. } => return accepted(),
        Message::Notification { method, params } => {
            if let Some(s) = sid.and_then(|s| sessions.get(s)).filter(|s| s.agent == agent) {
                if method == "notifications/cancelled" {
                    s.cancel(&params);
                }
            }
            return accepted();
        }
        Message::Request { id, method, params } => (id, method, params),
    };
    let (want_json, want_sse) = accepts(headers);
    if !want_json && !want_sse {
        return rpc_error_response(
            StatusCode::NOT_ACCEPTABLE,
            &id,
            &RpcError::new(protocol::INVALID_REQUEST, "Accept must include application/json or text/event-stream"),
        );
    }
    if protocol::is_modern(&method, &params, routing.protocol_version) {
        if let Err(e) = protocol::check_modern(&method, &params, Some(routing)) {
            return rpc_error_response(e.http_status(), &id, &e);
        }
        if method == "tools/call" && want_sse {
            return stream_call(server, id, method, params, Era::Modern, None);
        }
        return match server.handle(&method, &params, Era::Modern, None).await {
            Ok(r) => respond::json(StatusCode::OK, &protocol::result_message(&id, r)),
            Err(e) => rpc_error_response(e.http_status(), &id, &e),
        };
    }
    // 2025-11-25 and earlier.
    if let Some(v) = routing.protocol_version {
        if !protocol::HANDSHAKE_VERSIONS.contains(&v) {
            return rpc_error_response(
                StatusCode::BAD_REQUEST,
                &id,
                &RpcError::new(protocol::INVALID_REQUEST, format!("unsupported MCP-Protocol-Version {v:?}")),
            );
        }
    }
    if method == "initialize" {
        let result = match server.handle(&method, &params, Era::Handshake, None).await {
            Ok(r) => r,
            Err(e) => return rpc_error_response(StatusCode::OK, &id, &e),
        };
        let version = result["protocolVersion"].as_str().unwrap_or(protocol::HANDSHAKE_VERSIONS[0]).to_string();
        let (sid, _) = sessions.open(Session::new(agent.to_string(), version));
        return with_session(respond::json(StatusCode::OK, &protocol::result_message(&id, result)), &sid);
    }
    let Some(sid) = sid else {
        return rpc_error_response(
            StatusCode::BAD_REQUEST,
            &id,
            &RpcError::new(protocol::INVALID_REQUEST, "Mcp-Session-Id is required: call initialize first"),
        );
    };
    let Some(session) = sessions.get(sid).filter(|s| s.agent == agent) else {
        return rpc_error_response(
            StatusCode::NOT_FOUND,
            &id,
            &RpcError::new(protocol::INVALID_REQUEST, "unknown or expired session: initialize again"),
        );
    };
    if let Err(e) = protocol::check_name_header(&method, &params, routing.name) {
        return rpc_error_response(StatusCode::BAD_REQUEST, &id, &e);
    }
    if method == "tools/call" {
        let cancel = session.start_call(&id);
        if want_sse {
            let r = stream_call(server, id, method, params, Era::Handshake, Some((session, cancel)));
            return with_session(r, sid);
        }
        let res = tokio::select! {
            r = server.handle(&method, &params, Era::Handshake, None) => Some(r),
            _ = cancel => None,
        };
        session.end_call(&id);
        return with_session(
            match res {
                Some(Ok(r)) => respond::json(StatusCode::OK, &protocol::result_message(&id, r)),
                Some(Err(e)) => rpc_error_response(StatusCode::OK, &id, &e),
                None => accepted(),
            },
            sid,
        );
    }
    let r = match server.handle(&method, &params, Era::Handshake, None).await {
        Ok(r) => respond::json(StatusCode::OK, &protocol::result_message(&id, r)),
        Err(e) => rpc_error_response(StatusCode::OK, &id, &e),
    };
    with_session(r, sid)
}

fn accepted() -> Response<Body> {
    let mut r = Response::new(respond::empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

/// Runs a call in its own task and answers as an SSE stream: progress
/// notifications, then the response. The call is cancelled (and its approval
/// abandoned) when the client cancels it or, in 2026-07-28, closes the stream.
fn stream_call(
    server: ApprovalServer,
    id: Value,
    method: String,
    params: Value,
    era: Era,
    session: Option<(Arc<Session>, oneshot::Receiver<()>)>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let (ntx, mut nrx) = mpsc::channel::<Value>(16);
        let (session, cancel) = match session {
            Some((s, c)) => (Some(s), Some(c)),
            None => (None, None),
        };
        let cancelled = async {
            match cancel {
                Some(c) => {
                    let _ = c.await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let closed = async {
            match era {
                Era::Modern => tx.closed().await,
                // 2025-11-25: a dropped stream is not a cancellation.
                Era::Handshake => std::future::pending::<()>().await,
            }
        };
        let work = server.handle(&method, &params, era, Some(&ntx));
        tokio::pin!(work);
        tokio::pin!(cancelled);
        tokio::pin!(closed);
        // Keep-alive comments also let a closed connection be noticed while
        // nothing else is written.
        let mut tick = tokio::time::interval(KEEPALIVE);
        tick.tick().await;
        let outcome = loop {
            tokio::select! {
                r = &mut work => break Some(r),
                _ = tick.tick() => { let _ = tx.send(Bytes::from_static(b": keep-alive\n\n")).await; }
                Some(n) = nrx.recv() => { let _ = tx.send(sse_event(&n)).await; }
                _ = &mut cancelled => break None,
                _ = &mut closed => break None,
            }
        };
        if let Some(s) = &session {
            s.end_call(&id);
        }
        while let Ok(n) = nrx.try_recv() {
            let _ = tx.send(sse_event(&n)).await;
        }
        if let Some(r) = outcome {
            let msg = match r {
                Ok(r) => protocol::result_message(&id, r),
                Err(e) => protocol::error_message(&id, &e),
            };
            let _ = tx.send(sse_event(&msg)).await;
        }
    });
    sse_response(rx)
}
