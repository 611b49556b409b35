//! The approval: the public object of INTERFACE.md §4 and the request it stands for.
//!
//! Owns the lifecycle states and their meaning. It does not own where approvals are
//! kept ([`crate::store`]) or who may decide ([`crate::gate`]).

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// Lifecycle: pending → approved | rejected | expired | abandoned | interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    /// Enough approvers approved (quorum).
    Approved,
    /// A person rejected it. Never used for time-outs.
    Rejected,
    /// `expires_after` passed without a decision.
    Expired,
    /// Its caller cancelled (an API or MCP client gave up).
    Abandoned,
    /// The memory store shut down while it was pending.
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Expired => "expired",
            Status::Abandoned => "abandoned",
            Status::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "rejected" => Status::Rejected,
            "expired" => Status::Expired,
            "abandoned" => Status::Abandoned,
            "interrupted" => Status::Interrupted,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        self != Status::Pending
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Risk, ordered low < medium < high < critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    Medium,
    High,
    Critical,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Risk> {
        Some(match s {
            "low" => Risk::Low,
            "medium" => Risk::Medium,
            "high" => Risk::High,
            "critical" => Risk::Critical,
            _ => return None,
        })
    }
}

/// Which entrance a request came through; the policy input's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entrance {
    Http,
    Api,
    Mcp,
}

impl Entrance {
    pub fn as_str(self) -> &'static str {
        match self {
            Entrance::Http => "http",
            Entrance::Api => "api",
            Entrance::Mcp => "mcp",
        }
    }
}

/// How a person (or rule) decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    AdminApi,
    Slack,
    Web,
    Rule,
}

impl Channel {
    pub fn parse(s: &str) -> Option<Channel> {
        Some(match s {
            "admin_api" => Channel::AdminApi,
            "slack" => Channel::Slack,
            "web" => Channel::Web,
            "rule" => Channel::Rule,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::AdminApi => "admin_api",
            Channel::Slack => "slack",
            Channel::Web => "web",
            Channel::Rule => "rule",
        }
    }
}

/// A person's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Reject,
}

/// The approval object (INTERFACE.md §4), with a few extension fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub status: Status,
    /// The first route; `routes` holds them all.
    pub route: String,
    pub routes: Vec<String>,
    pub agent: String,
    pub action: String,
    pub risk: Risk,
    /// Display fields from the policy; values are strings.
    pub summary: serde_json::Map<String, serde_json::Value>,
    pub justification: Option<String>,
    pub rule_ids: Vec<String>,
    pub body_sha256: String,
    pub created_at: Timestamp,
    pub decided_by: Option<String>,
    pub decided_at: Option<Timestamp>,
    pub reason: Option<String>,
    /// Ids of the approvers who approved so far.
    pub approvals: Vec<String>,
    pub quorum: u32,

    // Extensions.
    pub kind: Entrance,
    pub upstream: Option<String>,
    /// `METHOD /upstream/path` for proxied requests, the tool for MCP.
    pub target: Option<String>,
    /// The reason of the rule that set the risk.
    pub risk_reason: String,
    pub policy_bundle: String,
    pub expires_at: Timestamp,
    pub escalate_at: Option<Timestamp>,
    /// Routes this approval has been escalated to; their approvers may decide too.
    pub escalated_to: Vec<String>,
    pub decided_via: Option<Channel>,
}

impl Approval {
    /// A fresh approval id: `apr_`, the 4-hex-digit slot tag of its fingerprint
    /// (so a shared store keeps every key of one action in one Redis Cluster slot),
    /// then 16 hex digits of randomness.
    pub fn new_id_for(fingerprint: &str) -> String {
        use rand::RngCore;
        let mut b = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut b);
        format!("apr_{}{}", slot_tag(fingerprint), hex::encode(b))
    }

    /// The slot tag an id carries (see [`Approval::new_id_for`]).
    pub fn tag_of(id: &str) -> Option<&str> {
        Self::looks_like_id(id).then(|| &id[4..8])
    }

    pub fn looks_like_id(s: &str) -> bool {
        s.len() == 24 && s.starts_with("apr_") && s[4..].bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// Every route whose approvers may decide now.
    pub fn deciding_routes(&self) -> impl Iterator<Item = &String> {
        self.routes.iter().chain(self.escalated_to.iter())
    }

    /// The JSON object the API returns.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Four hex digits derived from a fingerprint: the hash tag shared by every key of
/// one action in a shared store.
pub fn slot_tag(fingerprint: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(fingerprint.as_bytes());
    hex::encode(&d[..2])
}

/// The exact request an approval stands for: what is forwarded once approved.
///
/// Headers are the forwardable ones (hop-by-hop and agent credentials already
/// removed); the upstream credential is injected at forward time, never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRequest {
    pub upstream: String,
    pub method: String,
    /// Path below the upstream prefix, with the query, e.g. `/v1/refunds?expand[]=charge`.
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    #[serde(with = "base64_bytes")]
    pub body: Bytes,
}

mod base64_bytes {
    use base64::Engine as _;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s).map(Bytes::from).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_recognisable() {
        let id = Approval::new_id_for("fp");
        assert!(Approval::looks_like_id(&id), "{id}");
        assert_eq!(Approval::tag_of(&id), Some(slot_tag("fp").as_str()));
        assert_ne!(Approval::new_id_for("fp"), id);
        assert!(!Approval::looks_like_id("apr_../../etc"));
    }

    #[test]
    fn risk_order() {
        assert!(Risk::Low < Risk::Medium && Risk::High < Risk::Critical);
    }
}
