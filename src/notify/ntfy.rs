//! Phone pushes in ntfy's format: a title, a message, a click URL and a priority
//! taken from the risk, published as JSON (`{"topic", "title", "message",
//! "priority", "tags", "click", "actions"}`) to the server of the configured topic
//! URL. Credentials for a protected topic go in the URL's userinfo
//! (`https://user:pass@ntfy.example.com/topic`); the whole URL is a secret.
//!
//! Two notifiers:
//! - [`NtfyNotifier`]: a route's `ntfy_url_*`, a channel its approvers share. Its
//!   click URL is the approval's page, which asks for a session.
//! - [`ApproverPush`]: the approvers' own `ntfy_url_env` (an extension). When an
//!   approval opens, or escalates to their route, each approver who may decide it
//!   gets a push whose click URL is a sign-in link minted for them alone.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use super::deliver::{Job, NotifyError, Outbox, Target};
use super::{Change, GateRef, Notifier};
use crate::approval::{Approval, Risk, Status};
use crate::config::{Config, Secret, SecretRef};
use crate::reload::LiveSecrets;
use crate::ui::SignInLinks;

/// ntfy priority (1 min … 5 max) for a risk.
pub fn priority(r: Risk) -> u8 {
    match r {
        Risk::Low => 2,
        Risk::Medium => 3,
        Risk::High => 4,
        Risk::Critical => 5,
    }
}

fn risk_tags(r: Risk) -> Vec<&'static str> {
    match r {
        Risk::Low | Risk::Medium => vec!["hourglass"],
        Risk::High => vec!["warning"],
        Risk::Critical => vec!["rotating_light"],
    }
}

/// A topic URL split into the server (where JSON is published) and the topic.
#[derive(Debug, Clone)]
pub struct Topic {
    server: Target,
    topic: String,
}

impl Topic {
    pub fn parse(key: &str, url: &Secret) -> Result<Topic, NotifyError> {
        let t = Target::parse(key, url.expose())?;
        let path = t.uri.path().to_string();
        let (base, topic) = path.trim_end_matches('/').rsplit_once('/').unwrap_or(("", ""));
        if topic.is_empty() {
            return Err(NotifyError::BadUrl {
                key: key.to_string(),
                message: "needs a topic, e.g. https://ntfy.sh/<topic>".into(),
            });
        }
        Ok(Topic { server: t.with_path(&format!("{base}/"))?, topic: topic.to_string() })
    }
}

/// The message text: who wants what, the route, the risk and its reason, every
/// summary value, and the justification marked as the agent's own.
pub fn message_text(a: &Approval) -> String {
    let mut m = format!(
        "{} wants {}\nRoute: {}\nRisk: {} ({})",
        a.agent,
        a.action,
        a.routes.join(", "),
        a.risk.as_str(),
        a.risk_reason
    );
    for (k, v) in &a.summary {
        let v = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
        let _ = write!(m, "\n{k}: {v}");
    }
    if let Some(j) = &a.justification {
        let _ = write!(m, "\nJustification (model-inferred): {j}");
    }
    m
}

/// The title and priority of a change, or `None` when it is not worth a push.
fn headline(change: Change, a: &Approval) -> Option<(String, u8, Vec<&'static str>)> {
    match change {
        Change::Opened => Some((format!("Approval needed: {}", a.action), priority(a.risk), risk_tags(a.risk))),
        Change::Escalated => {
            Some((format!("Escalated: {}", a.action), priority(a.risk).max(4), vec!["arrow_double_up"]))
        }
        Change::Decided => {
            let (word, tag) =
                if a.status == Status::Approved { ("Approved", "white_check_mark") } else { ("Rejected", "x") };
            Some((format!("{word} by {}: {}", a.decided_by.as_deref().unwrap_or("?"), a.action), 2, vec![tag]))
        }
        Change::Ended => {
            let s = a.status.as_str();
            let mut w = s.to_string();
            if let Some(c) = w.get_mut(0..1) {
                c.make_ascii_uppercase();
            }
            Some((format!("{w}: {}", a.action), 2, vec!["zzz"]))
        }
        Change::Voted => None,
    }
}

fn push_body(topic: &str, title: &str, message: &str, priority: u8, tags: &[&str], click: &str) -> Bytes {
    let v: Value = json!({
        "topic": topic,
        "title": title,
        "message": message,
        "priority": priority,
        "tags": tags,
        "click": click,
        "actions": [{"action": "view", "label": "Review", "url": click, "clear": true}],
    });
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// The topic that `pick` names in the current config, parsed; `None` when it
/// names none or it is not set.
fn current_topic(secrets: &LiveSecrets, pick: impl FnOnce(&Config) -> Option<&SecretRef>) -> Option<Topic> {
    let (key, url) = secrets.read(|c, s| {
        let r = pick(c)?;
        Some((r.key().to_string(), s.get(r)?.clone()))
    })?;
    match Topic::parse(&key, &url) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, "push not sent");
            None
        }
    }
}

/// A route's shared push channel. Its topic URL is read at each notification (a
/// reload may rotate it).
pub struct NtfyNotifier {
    route: String,
    secrets: LiveSecrets,
    public_url: String,
    outbox: Outbox,
}

impl std::fmt::Debug for NtfyNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtfyNotifier").field("route", &self.route).finish_non_exhaustive()
    }
}

impl NtfyNotifier {
    pub fn new(route: &str, secrets: LiveSecrets, public_url: &str, outbox: Outbox) -> NtfyNotifier {
        NtfyNotifier {
            route: route.to_string(),
            secrets,
            public_url: public_url.trim_end_matches('/').to_string(),
            outbox,
        }
    }
}

impl Notifier for NtfyNotifier {
    fn name(&self) -> &'static str {
        "ntfy"
    }

    fn publish(&self, change: Change, a: &Approval) {
        if !a.deciding_routes().any(|r| r == &self.route) {
            return;
        }
        let Some((title, prio, tags)) = headline(change, a) else { return };
        let Some(topic) = current_topic(&self.secrets, |c| c.routes.get(&self.route)?.ntfy_url.as_ref()) else {
            return;
        };
        let click = format!("{}/ui/approvals/{}", self.public_url, a.id);
        self.outbox.send(Job {
            target: topic.server,
            body: push_body(&topic.topic, &title, &message_text(a), prio, &tags, &click),
            content_type: "application/json",
            headers: Vec::new(),
            per_attempt: None,
            to: format!("route {}", self.route),
            approval_id: a.id.clone(),
        });
    }
}

/// Personal pushes with a sign-in link, one approver at a time. Each approver's
/// topic URL is read at each notification (a reload may rotate it).
pub struct ApproverPush {
    secrets: LiveSecrets,
    links: Arc<SignInLinks>,
    gate: GateRef,
    outbox: Outbox,
}

impl std::fmt::Debug for ApproverPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApproverPush").finish_non_exhaustive()
    }
}

impl ApproverPush {
    pub fn new(secrets: LiveSecrets, links: Arc<SignInLinks>, gate: GateRef, outbox: Outbox) -> Self {
        ApproverPush { secrets, links, gate, outbox }
    }
}

impl Notifier for ApproverPush {
    fn name(&self) -> &'static str {
        "ntfy_approver"
    }

    fn publish(&self, change: Change, a: &Approval) {
        // Only the moments someone is newly asked to decide.
        let routes: Vec<&String> = match change {
            Change::Opened => a.routes.iter().collect(),
            Change::Escalated => a.escalated_to.iter().collect(),
            Change::Voted | Change::Decided | Change::Ended => return,
        };
        let Some(gate) = self.gate.get() else { return };
        let live = gate.live();
        let mut who: Vec<&String> =
            routes.iter().filter_map(|r| live.routes.get(*r)).flat_map(|rc| rc.approvers.iter()).collect();
        who.sort();
        who.dedup();
        let Some((title, prio, tags)) = headline(change, a) else { return };
        let text = format!(
            "{}\nTap to sign in and decide (the link works once, for {} minutes).",
            message_text(a),
            crate::ui::auth::LINK_TTL.as_secs() / 60
        );
        for p in who {
            // Checked again at decision time; this only avoids pointless links.
            if !live.may_decide(p, a) {
                continue;
            }
            let topic = current_topic(&self.secrets, |c| c.approvers.iter().find(|x| &x.id == p)?.ntfy_url.as_ref());
            let Some(topic) = topic else { continue };
            let link = self.links.mint_link(p, &a.id);
            self.outbox.send(Job {
                target: topic.server.clone(),
                body: push_body(&topic.topic, &title, &text, prio, &tags, &link),
                content_type: "application/json",
                headers: Vec::new(),
                per_attempt: None,
                to: format!("approver {p}"),
                approval_id: a.id.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_split_into_server_and_topic() {
        let t = Topic::parse("k", &Secret::new("https://ntfy.example.com/ops-alerts")).expect("parses");
        assert_eq!((t.server.uri.to_string().as_str(), t.topic.as_str()), ("https://ntfy.example.com/", "ops-alerts"));
        let t = Topic::parse("k", &Secret::new("http://127.0.0.1:8090/push/alice/")).expect("parses");
        assert_eq!((t.server.uri.to_string().as_str(), t.topic.as_str()), ("http://127.0.0.1:8090/push/", "alice"));
        assert!(Topic::parse("k", &Secret::new("https://ntfy.example.com/")).is_err());
    }

    #[test]
    fn priority_follows_risk() {
        assert_eq!([Risk::Low, Risk::Medium, Risk::High, Risk::Critical].map(priority), [2, 3, 4, 5]);
    }
}
