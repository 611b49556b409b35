//! What is recorded: one variant per record kind (INTERFACE.md §7).
//!
//! Every request-related record names the agent, the action, the request's
//! `body_sha256`, the rule ids and the policy bundle hash ([`Subject`]). Secrets are
//! never in an event: headers are not recorded, agent payloads are recorded as their
//! digest plus the raw JSON text, and summary values are strings.

use serde::Serialize;
use serde_json::{Map, Value};

/// Who and what a record is about.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Subject {
    pub agent: String,
    pub action: String,
    pub body_sha256: String,
    pub rule_ids: Vec<String>,
    pub policy_bundle: String,
    /// `http`, `api` or `mcp`.
    pub entrance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// `METHOD /upstream/path` (no query: it may hold secrets), or the MCP tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// The first record of every chain.
    Genesis { replica: String, version: String, policy_bundle: String },
    /// A rule bundle became active (at start and on every reload).
    PolicyLoaded { policy_bundle: String, files: Vec<String>, trigger: String },
    /// A reload was refused; the old bundle stays active.
    PolicyRejected { policy_bundle: String, error: String, trigger: String },
    /// The policy decided on a request.
    Decision {
        #[serde(flatten)]
        subject: Subject,
        request_id: String,
        /// `allow`, `deny` or `require_approval`: what the gate does.
        decision: String,
        /// What the rules asked for (differs under shadow mode).
        matched: String,
        shadow: bool,
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        approval_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// For `request_approval` calls and MCP tool calls: the payload's (or the
        /// arguments') JSON text, credentials masked (`body_sha256` is the digest of
        /// the unmasked canonical text).
        #[serde(skip_serializing_if = "Option::is_none")]
        payload_json: Option<String>,
        /// The agent's stated reason (`X-Approval-Justification`, or the
        /// `justification` of a `request_approval` call), credentials masked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        justification: Option<String>,
    },
    /// A new approval was opened.
    ApprovalRequested {
        #[serde(flatten)]
        subject: Subject,
        approval_id: String,
        routes: Vec<String>,
        risk: String,
        risk_reason: String,
        summary: Map<String, Value>,
        justification: Option<String>,
        quorum: u32,
        expires_at: String,
        escalate_at: Option<String>,
    },
    /// A person voted; `decided` says whether this vote decided it.
    ApprovalDecided {
        #[serde(flatten)]
        subject: Subject,
        approval_id: String,
        /// `approve` or `reject`.
        verdict: String,
        /// The approval's status after the vote.
        status: String,
        decided_by: String,
        /// `admin_api`, `slack`, `web` or `rule`.
        channel: String,
        reason: Option<String>,
        approvals: Vec<String>,
        quorum: u32,
    },
    ApprovalEscalated {
        #[serde(flatten)]
        subject: Subject,
        approval_id: String,
        escalated_to: Vec<String>,
    },
    /// Ended without a person: `expired`, `abandoned` or `interrupted`.
    ApprovalEnded {
        #[serde(flatten)]
        subject: Subject,
        approval_id: String,
        status: String,
        reason: String,
    },
    /// A request was refused at once because an identical one was just rejected.
    ApprovalRefused {
        #[serde(flatten)]
        subject: Subject,
        request_id: String,
        approval_id: String,
        reason: String,
    },
    /// The one forward of an approved request is about to be sent.
    GrantUsed {
        #[serde(flatten)]
        subject: Subject,
        request_id: String,
        approval_id: String,
        decided_by: Option<String>,
        approvals: Vec<String>,
    },
    /// A request went upstream; `outcome` is `ok` (the upstream answered, with
    /// `status`), `connect_failed` (nothing was sent) or `unknown` (bytes may have
    /// reached the upstream, but no answer came: `error` says why, `timeout` or
    /// `error`).
    Forwarded {
        #[serde(flatten)]
        subject: Subject,
        request_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        approval_id: Option<String>,
        status: Option<u16>,
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        latency_ms: u64,
    },
    /// A signed (or hash-only) anchor of the chain so far.
    Checkpoint { through_seq: u64, through_hash: String, key_id: Option<String>, signature: Option<String> },
    /// Damage found at start-up and what was done about it.
    Recovery { file: String, torn_bytes: u64, moved_to: String, last_seq: Option<u64> },
    /// The process stopped.
    Shutdown { reason: String, interrupted: Vec<String> },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Genesis { .. } => "genesis",
            Event::PolicyLoaded { .. } => "policy_loaded",
            Event::PolicyRejected { .. } => "policy_rejected",
            Event::Decision { .. } => "decision",
            Event::ApprovalRequested { .. } => "approval_requested",
            Event::ApprovalDecided { .. } => "approval_decided",
            Event::ApprovalEscalated { .. } => "approval_escalated",
            Event::ApprovalEnded { .. } => "approval_ended",
            Event::ApprovalRefused { .. } => "approval_refused",
            Event::GrantUsed { .. } => "grant_used",
            Event::Forwarded { .. } => "forwarded",
            Event::Checkpoint { .. } => "checkpoint",
            Event::Recovery { .. } => "recovery",
            Event::Shutdown { .. } => "shutdown",
        }
    }

    /// The record fields, including `kind`.
    pub fn fields(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            // Serializing these plain structs cannot fail; keep the kind regardless.
            _ => {
                let mut m = Map::new();
                m.insert("kind".into(), Value::from(self.kind()));
                m
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_tag_matches() {
        let e = Event::Shutdown { reason: "sigterm".into(), interrupted: vec![] };
        assert_eq!(e.fields()["kind"], e.kind());
        let e = Event::Decision {
            subject: Subject {
                agent: "a".into(),
                action: "x".into(),
                body_sha256: "00".into(),
                rule_ids: vec![],
                policy_bundle: "sha256:1".into(),
                entrance: "http".into(),
                upstream: None,
                target: None,
            },
            request_id: "r".into(),
            decision: "allow".into(),
            matched: "allow".into(),
            shadow: false,
            reason: "ok".into(),
            approval_id: None,
            error: None,
            payload_json: None,
            justification: None,
        };
        let f = e.fields();
        assert_eq!(f["kind"], "decision");
        assert_eq!(f["agent"], "a", "subject is flattened");
    }
}
