//! `POST /v1/approvals` and `GET /v1/approvals/{id}`: `request_approval` for agents
//! that ask first (INTERFACE.md §3). Same policy, queue and audit as the proxy.
//! `DELETE /v1/approvals/{id}` withdraws one's own pending approval (it ends
//! `abandoned`); `approvalplane mcp` uses it when its client cancels a call.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::Value;

use crate::approval::{Approval, Risk, Status};
use crate::gate::{AskAction, Gate};
use crate::policy::json::parse_strict;
use crate::proxy::{authenticate, read_body};
use crate::refusal::Refusal;
use crate::respond::{self, Body};
use crate::store::Finish;

const MAX_ACTION: usize = 200;

/// The `request_approval` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskBody {
    pub action: String,
    #[serde(default)]
    pub payload: Value,
    pub risk: Option<String>,
    #[serde(default)]
    pub policy_hints: Vec<String>,
    pub justification: Option<String>,
    /// Seconds to wait for a decision; 0 answers at once.
    pub wait: Option<f64>,
}

impl AskBody {
    /// Checks the fields; returns the parsed risk.
    pub fn validate(&self) -> Result<Option<Risk>, String> {
        if self.action.trim().is_empty() || self.action.chars().count() > MAX_ACTION {
            return Err(format!("action must be 1 to {MAX_ACTION} characters"));
        }
        if self.policy_hints.len() > 64 || self.policy_hints.iter().any(|h| h.chars().count() > 200) {
            return Err("policy_hints: at most 64 hints of at most 200 characters".into());
        }
        if self.justification.as_ref().is_some_and(|j| j.chars().count() > 2000) {
            return Err("justification is longer than 2000 characters".into());
        }
        if let Some(w) = self.wait {
            if !(w.is_finite() && w >= 0.0) {
                return Err("wait must be a non-negative number of seconds".into());
            }
        }
        match &self.risk {
            None => Ok(None),
            Some(r) => {
                Risk::parse(r).map(Some).ok_or_else(|| format!("risk {r:?} is not low, medium, high or critical"))
            }
        }
    }
}

/// The answer: the approval object plus `approved`.
pub fn answer(a: &Approval) -> Value {
    let mut v = a.to_json();
    v["approved"] = Value::Bool(a.status == Status::Approved);
    v
}

fn query_wait(q: Option<&str>) -> Result<Option<Duration>, Refusal> {
    let Some(q) = q else { return Ok(None) };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("wait=") {
            let secs: f64 = v.parse().map_err(|_| Refusal::MalformedRequest(format!("wait={v} is not a number")))?;
            if !(secs.is_finite() && secs >= 0.0) {
                return Err(Refusal::MalformedRequest("wait must be non-negative".into()));
            }
            return Ok(Some(Duration::from_secs_f64(secs.min(86_400.0))));
        }
    }
    Ok(None)
}

pub async fn handle(gate: &Arc<Gate>, req: Request<Incoming>, request_id: &str) -> Result<Response<Body>, Refusal> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/');
    let live = gate.live();
    let agent = authenticate(gate, &live, &parts.headers, None)?;
    drop(live);
    let max_wait = gate.settings.hold_timeout;
    match (&parts.method, path) {
        (&Method::POST, "/v1/approvals") => {
            let bytes =
                read_body(body, &parts.headers, gate.settings.max_body_bytes, gate.settings.body_read_timeout).await?;
            let v = parse_strict(&bytes).map_err(|e| Refusal::MalformedBody(format!("not valid JSON: {e}")))?;
            let ask: AskBody = serde_json::from_value(v)
                .map_err(|e| Refusal::MalformedRequest(format!("request_approval body: {e}")))?;
            let risk = ask.validate().map_err(Refusal::MalformedRequest)?;
            let idempotency_key = parts
                .headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            let wait = ask.wait.map(Duration::from_secs_f64).unwrap_or(Duration::ZERO).min(max_wait);
            let a = gate
                .ask(AskAction {
                    request_id: request_id.to_string(),
                    agent,
                    action: ask.action,
                    payload: ask.payload,
                    risk,
                    policy_hints: ask.policy_hints,
                    justification: ask.justification,
                    idempotency_key,
                    wait,
                })
                .await?;
            Ok(respond::json(StatusCode::OK, &answer(&a)))
        }
        (&Method::GET, p) if p.starts_with("/v1/approvals/") => {
            let id = &p["/v1/approvals/".len()..];
            let not_found = || Refusal::NotFound(format!("approval {id}"));
            if !Approval::looks_like_id(id) {
                return Err(not_found());
            }
            let wait = query_wait(parts.uri.query())?.unwrap_or(Duration::ZERO).min(max_wait);
            let a = gate.store.get(id).await.map_err(|_| Refusal::StoreUnavailable)?.ok_or_else(not_found)?;
            // An agent sees only its own approvals; any other id is "not found".
            if a.agent != agent {
                return Err(not_found());
            }
            let a = if a.status == Status::Pending && !wait.is_zero() { gate.wait_for(id, wait).await? } else { a };
            Ok(respond::json(StatusCode::OK, &answer(&a)))
        }
        (&Method::DELETE, p) if p.starts_with("/v1/approvals/") => {
            // Withdraws a pending approval: its caller gave up (an MCP client
            // cancelled). A decided approval is answered as it is.
            let id = &p["/v1/approvals/".len()..];
            let not_found = || Refusal::NotFound(format!("approval {id}"));
            if !Approval::looks_like_id(id) {
                return Err(not_found());
            }
            let a = gate.store.get(id).await.map_err(|_| Refusal::StoreUnavailable)?.ok_or_else(not_found)?;
            if a.agent != agent {
                return Err(not_found());
            }
            let a = if a.status == Status::Pending {
                gate.finish(id, Finish::Abandoned, "its caller cancelled the request")
                    .await
                    .map_err(|_| Refusal::StoreUnavailable)?
                    .unwrap_or(a)
            } else {
                a
            };
            let a = gate.store.get(id).await.map_err(|_| Refusal::StoreUnavailable)?.unwrap_or(a);
            Ok(respond::json(StatusCode::OK, &answer(&a)))
        }
        (_, "/v1/approvals") => Err(Refusal::MethodNotAllowed),
        _ => Err(Refusal::NotFound(format!("{} {}", parts.method, parts.uri.path()))),
    }
}
