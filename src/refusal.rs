//! Every way the agent listener says no, and the one exhaustive mapping to HTTP.
//!
//! The agent (often an LLM) gets a stable `type` and a message it can act on:
//! what happened, whether to retry, and what not to change. Internals (stack of
//! causes, file paths) go to the log and the audit record, not here.

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::respond::{self, Body};

#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    MalformedRequest(String),
    MalformedBody(String),
    AgentUnauthorized,
    PolicyDenied {
        rule: String,
        reason: String,
    },
    ApprovalRejected {
        approval_id: String,
        reason: Option<String>,
        decided_by: Option<String>,
    },
    ApprovalExpired {
        approval_id: String,
    },
    /// Its caller cancelled it, or it was interrupted by a shutdown.
    ApprovalEnded {
        approval_id: String,
        status: String,
    },
    UnknownUpstream(String),
    NotFound(String),
    ApprovalPending {
        approval_id: String,
        status_url: String,
        retry_after: u64,
        route: String,
    },
    ApprovalUsed {
        approval_id: String,
    },
    IdempotencyConflict,
    BodyTooLarge {
        limit: usize,
    },
    UpstreamUnreachable {
        upstream: String,
        detail: String,
        /// Bytes may have reached the upstream before it failed: the agent must
        /// not assume the request was not processed.
        maybe_delivered: bool,
    },
    /// The upstream took too long to answer; the request may have been processed.
    UpstreamTimeout {
        upstream: String,
        approval_id: Option<String>,
    },
    StoreUnavailable,
    AuditUnavailable,
    ShuttingDown,
    MethodNotAllowed,
    /// The body did not arrive within `server.body_read_timeout`.
    RequestTimeout,
    HeadersTooLarge {
        limit: usize,
    },
}

impl Refusal {
    /// The stable machine-readable type.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::MalformedRequest(_) => "malformed_request",
            Refusal::MalformedBody(_) => "malformed_body",
            Refusal::AgentUnauthorized => "agent_unauthorized",
            Refusal::PolicyDenied { .. } => "policy_denied",
            Refusal::ApprovalRejected { .. } => "approval_rejected",
            Refusal::ApprovalExpired { .. } => "approval_expired",
            Refusal::ApprovalEnded { .. } => "approval_ended",
            Refusal::UnknownUpstream(_) => "unknown_upstream",
            Refusal::NotFound(_) => "not_found",
            Refusal::ApprovalPending { .. } => "approval_pending",
            Refusal::ApprovalUsed { .. } => "approval_used",
            Refusal::IdempotencyConflict => "idempotency_conflict",
            Refusal::BodyTooLarge { .. } => "body_too_large",
            Refusal::UpstreamUnreachable { .. } => "upstream_unreachable",
            Refusal::UpstreamTimeout { .. } => "upstream_timeout",
            Refusal::StoreUnavailable => "store_unavailable",
            Refusal::AuditUnavailable => "audit_unavailable",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::RequestTimeout => "request_timeout",
            Refusal::HeadersTooLarge { .. } => "headers_too_large",
        }
    }

    /// Status, message, extra fields and Retry-After seconds.
    fn parts(&self) -> (StatusCode, String, Map<String, Value>, Option<u64>) {
        let mut extra = Map::new();
        let (status, msg, retry) = match self {
            Refusal::MalformedRequest(m) => (StatusCode::BAD_REQUEST, format!("The request is malformed: {m}."), None),
            Refusal::MalformedBody(m) => (
                StatusCode::BAD_REQUEST,
                format!("The request body cannot be read unambiguously ({m}). It was not forwarded. Send each field once, as plain JSON or form data without compression."),
                None,
            ),
            Refusal::AgentUnauthorized => (
                StatusCode::UNAUTHORIZED,
                "No valid agent token was presented. Send it as \"Authorization: Bearer <token>\".".to_string(),
                None,
            ),
            Refusal::PolicyDenied { rule, reason } => {
                extra.insert("rule".into(), json!(rule));
                (
                    StatusCode::FORBIDDEN,
                    format!("Policy denied this request (rule {rule}): {reason}. It was not forwarded; do not retry it unchanged."),
                    None,
                )
            }
            Refusal::ApprovalRejected { approval_id, reason, decided_by } => {
                extra.insert("approval_id".into(), json!(approval_id));
                extra.insert("reason".into(), json!(reason));
                extra.insert("decided_by".into(), json!(decided_by));
                let who = decided_by.as_deref().unwrap_or("an approver");
                let why = reason.as_deref().unwrap_or("no reason given");
                (
                    StatusCode::FORBIDDEN,
                    format!("A person ({who}) rejected this action: {why}. It was not executed. Do not retry the same request; tell the user why, or change the action."),
                    None,
                )
            }
            Refusal::ApprovalExpired { approval_id } => {
                extra.insert("approval_id".into(), json!(approval_id));
                (
                    StatusCode::FORBIDDEN,
                    "Nobody decided on this action before its approval expired. It was not executed. Retrying starts a new approval.".to_string(),
                    None,
                )
            }
            Refusal::ApprovalEnded { approval_id, status } => {
                extra.insert("approval_id".into(), json!(approval_id));
                extra.insert("status".into(), json!(status));
                (
                    StatusCode::FORBIDDEN,
                    format!("The approval for this action ended without a decision ({status}). It was not executed. Retrying starts a new approval."),
                    None,
                )
            }
            Refusal::UnknownUpstream(name) => {
                (StatusCode::NOT_FOUND, format!("No upstream is named {name:?}. Use /<upstream>/<path> with a configured upstream."), None)
            }
            Refusal::NotFound(what) => (StatusCode::NOT_FOUND, format!("{what} was not found."), None),
            Refusal::ApprovalPending { approval_id, status_url, retry_after, route } => {
                extra.insert("approval_id".into(), json!(approval_id));
                extra.insert("status_url".into(), json!(status_url));
                extra.insert("route".into(), json!(route));
                (
                    StatusCode::CONFLICT,
                    format!("This action needs a person's approval (route {route}) and is still pending. It has not been executed. Retry the identical request after {retry_after} seconds, or poll status_url; changing the request starts a new approval."),
                    Some(*retry_after),
                )
            }
            Refusal::ApprovalUsed { approval_id } => {
                extra.insert("approval_id".into(), json!(approval_id));
                (
                    StatusCode::CONFLICT,
                    "This action was approved once and that approval was already used by an identical request. It was not executed again. Retrying starts a new approval.".to_string(),
                    None,
                )
            }
            Refusal::IdempotencyConflict => (
                StatusCode::CONFLICT,
                "This Idempotency-Key was already used with a different request. Use a new key for a new request.".to_string(),
                None,
            ),
            Refusal::BodyTooLarge { limit } => {
                extra.insert("limit".into(), json!(limit));
                (StatusCode::PAYLOAD_TOO_LARGE, format!("The request body is larger than {limit} bytes. It was not forwarded."), None)
            }
            Refusal::UpstreamUnreachable { upstream, detail, maybe_delivered: false } => {
                extra.insert("upstream".into(), json!(upstream));
                (StatusCode::BAD_GATEWAY, format!("Upstream {upstream} could not be reached ({detail}). The request was not delivered."), None)
            }
            Refusal::UpstreamUnreachable { upstream, detail, maybe_delivered: true } => {
                extra.insert("upstream".into(), json!(upstream));
                extra.insert("maybe_delivered".into(), json!(true));
                (
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "Upstream {upstream} failed after the request was sent ({detail}). It may have been processed: \
                         check its state before sending it again."
                    ),
                    None,
                )
            }
            Refusal::UpstreamTimeout { upstream, approval_id } => {
                extra.insert("upstream".into(), json!(upstream));
                if let Some(id) = approval_id {
                    extra.insert("approval_id".into(), json!(id));
                }
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("Upstream {upstream} did not answer in time. The request may have been processed: check before retrying."),
                    None,
                )
            }
            Refusal::StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The approval store is unavailable, so this request was not forwarded. Retry later.".to_string(),
                Some(5),
            ),
            Refusal::AuditUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The audit log cannot record this request, so it was not forwarded. Retry later.".to_string(),
                Some(5),
            ),
            Refusal::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The proxy is shutting down; the request was not forwarded. Retry the identical request shortly.".to_string(),
                Some(2),
            ),
            Refusal::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "Method not allowed here.".to_string(), None),
            Refusal::HeadersTooLarge { limit } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("The request headers are larger than {limit} bytes. It was not forwarded."),
                None,
            ),
            Refusal::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "The request body did not arrive in time. It was not forwarded.".to_string(),
                None,
            ),
        };
        (status, msg, extra, retry)
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The JSON body: `{"error": {"type", "message", ...}}`.
    pub fn body(&self) -> Value {
        let (_, message, extra, _) = self.parts();
        let mut e = Map::new();
        e.insert("type".into(), json!(self.kind()));
        e.insert("message".into(), json!(message));
        e.extend(extra);
        json!({ "error": e })
    }

    pub fn response(&self) -> Response<Body> {
        let (status, _, _, retry) = self.parts();
        let mut r = respond::json(status, &self.body());
        if let Some(s) = retry {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(RETRY_AFTER, v);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_statuses_and_types() {
        let cases = [
            (Refusal::MalformedRequest("x".into()), 400, "malformed_request"),
            (Refusal::MalformedBody("x".into()), 400, "malformed_body"),
            (Refusal::AgentUnauthorized, 401, "agent_unauthorized"),
            (Refusal::PolicyDenied { rule: "r".into(), reason: "x".into() }, 403, "policy_denied"),
            (
                Refusal::ApprovalRejected { approval_id: "a".into(), reason: None, decided_by: None },
                403,
                "approval_rejected",
            ),
            (Refusal::ApprovalExpired { approval_id: "a".into() }, 403, "approval_expired"),
            (Refusal::UnknownUpstream("x".into()), 404, "unknown_upstream"),
            (
                Refusal::ApprovalPending {
                    approval_id: "a".into(),
                    status_url: "u".into(),
                    retry_after: 5,
                    route: "r".into(),
                },
                409,
                "approval_pending",
            ),
            (Refusal::ApprovalUsed { approval_id: "a".into() }, 409, "approval_used"),
            (Refusal::IdempotencyConflict, 409, "idempotency_conflict"),
            (Refusal::BodyTooLarge { limit: 1 }, 413, "body_too_large"),
            (
                Refusal::UpstreamUnreachable { upstream: "u".into(), detail: "d".into(), maybe_delivered: false },
                502,
                "upstream_unreachable",
            ),
            (
                Refusal::UpstreamUnreachable { upstream: "u".into(), detail: "d".into(), maybe_delivered: true },
                502,
                "upstream_unreachable",
            ),
            (Refusal::StoreUnavailable, 503, "store_unavailable"),
            (Refusal::AuditUnavailable, 503, "audit_unavailable"),
            (Refusal::ShuttingDown, 503, "shutting_down"),
        ];
        for (r, status, kind) in cases {
            let resp = r.response();
            assert_eq!(resp.status().as_u16(), status, "{kind}");
            assert_eq!(r.body()["error"]["type"], kind);
            if status == 503 || kind == "approval_pending" {
                assert!(resp.headers().contains_key(RETRY_AFTER), "{kind}");
            }
        }
        let b = Refusal::PolicyDenied { rule: "r1".into(), reason: "x".into() }.body();
        assert_eq!(b["error"]["rule"], "r1");
        let b = Refusal::ApprovalRejected {
            approval_id: "a".into(),
            reason: Some("no".into()),
            decided_by: Some("bob".into()),
        }
        .body();
        assert_eq!((b["error"]["reason"].as_str(), b["error"]["decided_by"].as_str()), (Some("no"), Some("bob")));
    }
}
