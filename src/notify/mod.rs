//! Notifiers: who hears about an approval. Only notifiers talk to the outside
//! world about approvals (Slack, webhooks, phones, the web page's live feed).
//!
//! The gate calls [`Notifiers::publish`] after every transition; each notifier
//! runs in the background and never blocks or fails the request path. A notifier
//! that cannot deliver retries on its own; the approval stays visible through the
//! admin API and the log whatever happens.

use std::sync::Arc;

use crate::approval::Approval;

/// What happened to an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened,
    /// A vote was counted towards the quorum.
    Voted,
    Decided,
    Escalated,
    /// Expired, abandoned or interrupted.
    Ended,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Opened => "opened",
            Change::Voted => "voted",
            Change::Decided => "decided",
            Change::Escalated => "escalated",
            Change::Ended => "ended",
        }
    }
}

pub trait Notifier: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Must return quickly: spawn any I/O.
    fn publish(&self, change: Change, approval: &Approval);
}

/// Writes every change to the log, with a link to the web page. Always on, so an
/// approval is never invisible even with no other notifier configured.
#[derive(Debug)]
pub struct LogNotifier {
    pub public_url: String,
}

impl Notifier for LogNotifier {
    fn name(&self) -> &'static str {
        "log"
    }

    fn publish(&self, change: Change, a: &Approval) {
        tracing::info!(
            approval.id = %a.id,
            approval.status = %a.status,
            change = change.as_str(),
            route = %a.route,
            agent = %a.agent,
            action = %a.action,
            risk = a.risk.as_str(),
            decided_by = a.decided_by.as_deref().unwrap_or(""),
            link = %format!("{}/ui/approvals/{}", self.public_url, a.id),
            "approval {}", change.as_str()
        );
    }
}

/// The fan-out to every configured notifier.
#[derive(Clone, Default)]
pub struct Notifiers {
    list: Vec<Arc<dyn Notifier>>,
}

impl std::fmt::Debug for Notifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.list.iter().map(|n| n.name())).finish()
    }
}

impl Notifiers {
    pub fn new(list: Vec<Arc<dyn Notifier>>) -> Self {
        Self { list }
    }

    pub fn push(&mut self, n: Arc<dyn Notifier>) {
        self.list.push(n);
    }

    pub fn publish(&self, change: Change, a: &Approval) {
        for n in &self.list {
            n.publish(change, a);
        }
    }
}
