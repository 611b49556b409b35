//! The approval MCP server: `request_approval` and `get_approval`, independent of
//! the transport.
//!
//! Owns the server's answers to every method (`initialize`, `server/discover`,
//! `tools/list`, `tools/call`, `ping`), the tool schemas, progress while a call
//! waits, and what a model reads when an action is not approved. Where the
//! approvals live is behind [`Approvals`]: the gate in-process for `/mcp`, the
//! running `serve` over HTTP for `approvalplane mcp`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::AskBody;
use crate::mcp::protocol::{self, Era, RpcError, INVALID_PARAMS, METHOD_NOT_FOUND, MODERN_VERSION, SERVER_INFO_META};

/// How often a waiting call reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A call that ended without an approval object to show, with the text for the
/// model and, when there is one, the structured error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ToolFailure {
    pub message: String,
    pub structured: Option<Value>,
}

/// Where approvals are asked for and read.
#[async_trait]
pub trait Approvals: Send + Sync + 'static {
    /// `request_approval` without waiting: the answer object (approval plus
    /// `approved`) as it is right after the policy decided.
    async fn request(&self, body: AskBody) -> Result<Value, ToolFailure>;
    /// The answer object of `id`, waiting up to `wait` while it is pending.
    async fn get(&self, id: &str, wait: Duration) -> Result<Value, ToolFailure>;
    /// Marks a pending approval abandoned: its caller cancelled.
    async fn abandon(&self, id: &str);
    /// The longest a call may wait (`server.hold_timeout`).
    fn max_wait(&self) -> Duration;
}

/// The server: method dispatch over an [`Approvals`] backend.
#[derive(Clone)]
pub struct ApprovalServer {
    backend: Arc<dyn Approvals>,
}

impl std::fmt::Debug for ApprovalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalServer").finish()
    }
}

const INSTRUCTIONS: &str = "Call request_approval before any risky or irreversible action and do it only when the \
result says approved. A result with isError explains what happened (rejected, expired or still pending) and what to \
do next; get_approval keeps waiting on a pending approval.";

pub fn server_info() -> Value {
    json!({"name": "approvalplane", "title": "ApprovalPlane", "version": env!("CARGO_PKG_VERSION")})
}

fn approval_object_schema() -> Value {
    json!({
        "type": "object",
        "description": "The approval object plus `approved`.",
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "approved", "rejected", "expired", "abandoned", "interrupted"]},
            "approved": {"type": "boolean"},
            "route": {"type": "string"},
            "routes": {"type": "array", "items": {"type": "string"}},
            "agent": {"type": "string"},
            "action": {"type": "string"},
            "risk": {"type": "string"},
            "summary": {"type": "object"},
            "justification": {"type": ["string", "null"]},
            "rule_ids": {"type": "array", "items": {"type": "string"}},
            "body_sha256": {"type": "string"},
            "created_at": {"type": "string"},
            "decided_by": {"type": ["string", "null"]},
            "decided_at": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"]},
            "approvals": {"type": "array", "items": {"type": "string"}},
            "quorum": {"type": "integer"}
        }
    })
}

/// The `tools/list` result.
pub fn tools_list() -> Value {
    json!({"tools": [
        {
            "name": "request_approval",
            "title": "Request approval",
            "description": "Ask a person to approve an action before you take it. Waits for the decision (up to \
    `wait` seconds, capped by the server). Do the action only if `approved` is true.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "action": {"type": "string", "description": "What you want to do, e.g. issue_refund"},
                    "payload": {"description": "The action's parameters, exactly as you will use them"},
                    "risk": {"type": "string", "enum": ["low", "medium", "high", "critical"]},
                    "policy_hints": {"type": "array", "items": {"type": "string"}},
                    "justification": {"type": "string", "description": "Why you want to do it"},
                    "wait": {"type": "number", "minimum": 0, "description": "Seconds to wait for a decision"}
                },
                "required": ["action"],
                "additionalProperties": false
            },
            "outputSchema": approval_object_schema(),
            "annotations": {"readOnlyHint": false, "destructiveHint": false, "idempotentHint": true, "openWorldHint": true}
        },
        {
            "name": "get_approval",
            "title": "Get approval",
            "description": "Read (and optionally wait on) an approval you requested earlier, by id.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "description": "The approval id"},
                    "wait": {"type": "number", "minimum": 0, "description": "Seconds to wait while it is pending"}
                },
                "required": ["id"],
                "additionalProperties": false
            },
            "outputSchema": approval_object_schema(),
            "annotations": {"readOnlyHint": true, "openWorldHint": true}
        }
    ]})
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetArgs {
    #[serde(alias = "approval_id")]
    id: String,
    wait: Option<f64>,
}

/// Where a call's progress notifications go.
pub type Notify = mpsc::Sender<Value>;

/// Abandons the approval on drop unless disarmed: a cancelled call (its future
/// dropped) must never leave an approval that could be approved and acted on later.
struct AbandonGuard {
    backend: Arc<dyn Approvals>,
    id: Option<String>,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let backend = self.backend.clone();
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move { backend.abandon(&id).await });
            }
        }
    }
}

fn wait_secs(w: Option<f64>, max: Duration) -> Result<Duration, String> {
    match w {
        None => Ok(max),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s.min(86_400.0)).min(max)),
        Some(_) => Err("wait must be a non-negative number of seconds".into()),
    }
}

impl ApprovalServer {
    pub fn new(backend: Arc<dyn Approvals>) -> ApprovalServer {
        ApprovalServer { backend }
    }

    /// Answers one request. `notify` receives progress notifications when the
    /// transport can carry them.
    pub async fn handle(
        &self,
        method: &str,
        params: &Value,
        era: Era,
        notify: Option<&Notify>,
    ) -> Result<Value, RpcError> {
        let mut result = match method {
            "initialize" => {
                let requested = params.get("protocolVersion").and_then(Value::as_str);
                json!({
                    "protocolVersion": protocol::negotiate(requested),
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": server_info(),
                    "instructions": INSTRUCTIONS,
                })
            }
            "server/discover" => json!({
                "supportedVersions": [MODERN_VERSION],
                "capabilities": {"tools": {"listChanged": false}},
                "instructions": INSTRUCTIONS,
                "_meta": {SERVER_INFO_META: server_info()},
            }),
            "ping" => json!({}),
            "tools/list" => tools_list(),
            "tools/call" => self.call(params, notify).await?,
            other => return Err(RpcError::new(METHOD_NOT_FOUND, format!("method not found: {other}"))),
        };
        if era == Era::Modern {
            result["resultType"] = json!("complete");
            if matches!(method, "tools/list" | "server/discover") {
                // Cacheable results (2026-07-28): per agent, not to be reused.
                result["ttlMs"] = json!(0);
                result["cacheScope"] = json!("private");
            }
        }
        Ok(result)
    }

    async fn call(&self, params: &Value, notify: Option<&Notify>) -> Result<Value, RpcError> {
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::new(INVALID_PARAMS, "tools/call needs params.name"))?;
        let args = params.get("arguments").cloned().unwrap_or_else(|| json!({}));
        let token = protocol::progress_token(params);
        let progress = notify.zip(token);
        match name {
            "request_approval" => Ok(self.request_approval(args, progress).await),
            "get_approval" => Ok(self.get_approval(args, progress).await),
            other => Err(RpcError::new(
                INVALID_PARAMS,
                format!("unknown tool {other:?}: this server offers request_approval and get_approval"),
            )),
        }
    }

    async fn request_approval(&self, args: Value, progress: Option<(&Notify, Value)>) -> Value {
        let body: AskBody = match serde_json::from_value(args) {
            Ok(b) => b,
            Err(e) => {
                return failure_result(&format!(
                    "The arguments are not a request_approval body: {e}. Fix them and call again."
                ))
            }
        };
        if let Err(e) = body.validate() {
            return failure_result(&format!("The arguments are invalid: {e}. Fix them and call again."));
        }
        let wait = match wait_secs(body.wait, self.backend.max_wait()) {
            Ok(w) => w,
            Err(e) => return failure_result(&e),
        };
        // Asked in a task of its own: a call cancelled while the approval is
        // being opened still gets it abandoned once it exists.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let backend = self.backend.clone();
        tokio::spawn(async move {
            let r = backend.request(AskBody { wait: Some(0.0), ..body }).await;
            if let Err(Ok(a)) = tx.send(r) {
                if let (true, Some(id)) = (is_pending(&a), a["id"].as_str()) {
                    backend.abandon(id).await;
                }
            }
        });
        let first = match rx.await {
            Ok(Ok(a)) => a,
            Ok(Err(f)) => return failure_to_result(f),
            Err(_) => return failure_result("the approval request did not complete; the action is not approved"),
        };
        self.wait_on(first, wait, progress, true).await
    }

    async fn get_approval(&self, args: Value, progress: Option<(&Notify, Value)>) -> Value {
        let a: GetArgs = match serde_json::from_value(args) {
            Ok(a) => a,
            Err(e) => {
                return failure_result(&format!(
                    "The arguments are not valid: {e}. Pass {{\"id\": \"<approval id>\"}}."
                ))
            }
        };
        let wait = match wait_secs(a.wait, self.backend.max_wait()) {
            Ok(w) => w,
            Err(e) => return failure_result(&e),
        };
        let first = match self.backend.get(&a.id, Duration::ZERO).await {
            Ok(v) => v,
            Err(f) => return failure_to_result(f),
        };
        self.wait_on(first, wait, progress, false).await
    }

    /// Waits while `answer` is pending, reporting progress, then builds the result.
    async fn wait_on(
        &self,
        mut answer: Value,
        wait: Duration,
        progress: Option<(&Notify, Value)>,
        abandon_on_cancel: bool,
    ) -> Value {
        let start = tokio::time::Instant::now();
        let deadline = start + wait;
        let id = answer["id"].as_str().unwrap_or_default().to_string();
        let mut guard = AbandonGuard { backend: self.backend.clone(), id: None };
        if abandon_on_cancel && is_pending(&answer) {
            guard.id = Some(id.clone());
        }
        let mut step = 0u64;
        while is_pending(&answer) {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            if let Some((tx, token)) = &progress {
                step += 1;
                let msg = format!(
                    "waiting for a person to decide approval {id} (route {})",
                    answer["route"].as_str().unwrap_or("")
                );
                let _ = tx
                    .send(protocol::notification(
                        "notifications/progress",
                        json!({"progressToken": token, "progress": step, "message": msg}),
                    ))
                    .await;
            }
            let slice = (deadline - now).min(PROGRESS_EVERY);
            answer = match self.backend.get(&id, slice).await {
                Ok(a) => a,
                Err(f) => {
                    guard.id = None;
                    return failure_to_result(f);
                }
            };
        }
        guard.id = None;
        answer_result(answer)
    }
}

fn is_pending(a: &Value) -> bool {
    a["status"].as_str() == Some("pending")
}

fn text(s: impl Into<String>) -> Value {
    json!({"type": "text", "text": s.into()})
}

fn failure_result(msg: &str) -> Value {
    json!({"content": [text(msg)], "isError": true})
}

fn failure_to_result(f: ToolFailure) -> Value {
    let mut r = json!({"content": [text(f.message)], "isError": true});
    if let Some(s) = f.structured {
        r["structuredContent"] = s;
    }
    r
}

/// What the model reads about an approval that is not (yet) approved.
pub fn not_approved_text(a: &Value) -> Option<String> {
    let id = a["id"].as_str().unwrap_or("?");
    let s = |k: &str| a[k].as_str().map(str::to_string);
    Some(match a["status"].as_str()? {
        "approved" => return None,
        "pending" => format!(
            "Approval {id} is still pending: nobody on route {} has decided yet. Do not take the action yet. \
             Call get_approval with {{\"id\": \"{id}\"}} to keep waiting; calling request_approval again with the \
             same action and payload attaches to the same approval.",
            s("route").unwrap_or_default()
        ),
        "rejected" => format!(
            "A person ({}) rejected this action (approval {id}): {}. Do not take it, and do not retry the same \
             request; tell the user why, or change the action.",
            s("decided_by").unwrap_or_else(|| "an approver".into()),
            s("reason").unwrap_or_else(|| "no reason given".into())
        ),
        "expired" => format!(
            "Nobody decided on approval {id} before it expired. The action was not approved; do not take it. \
             Calling request_approval again starts a new approval."
        ),
        other => format!(
            "Approval {id} ended without a decision ({other}). The action was not approved; do not take it. \
             Calling request_approval again starts a new approval."
        ),
    })
}

/// The tool result for an answer object.
pub fn answer_result(answer: Value) -> Value {
    let body = answer.to_string();
    match not_approved_text(&answer) {
        None => json!({"content": [text(body)], "structuredContent": answer, "isError": false}),
        Some(msg) => json!({"content": [text(body), text(msg)], "structuredContent": answer, "isError": true}),
    }
}

/// A refusal from the gate as a tool failure the model can act on.
pub fn refusal_failure(r: &crate::refusal::Refusal) -> ToolFailure {
    let body = r.body();
    let message = body["error"]["message"].as_str().unwrap_or("refused").to_string();
    ToolFailure { message, structured: Some(body) }
}
