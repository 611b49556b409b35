//! Notifiers: who hears about an approval. Only notifiers talk to the outside
//! world about approvals (Slack, webhooks, phones, the web page's live feed).
//!
//! The gate calls [`Notifiers::publish`] after every transition; each notifier
//! runs in the background and never blocks or fails the request path. A notifier
//! that cannot deliver retries on its own; the approval stays visible through the
//! admin API and the log whatever happens.
//!
//! - [`LogNotifier`] (here): always on.
//! - [`webhook`]: a route's signed JSON webhook.
//! - [`ntfy`]: a route's phone push, and approvers' personal pushes carrying a
//!   sign-in link.
//! - [`deliver`]: the HTTP queue, retries and backoff they share.
//! - The web page's live feed is [`crate::ui::LiveFeed`].

pub mod deliver;
pub mod ntfy;
pub mod webhook;

use std::sync::{Arc, OnceLock, Weak};

use crate::approval::Approval;
use crate::clock::Clock;
use crate::config::{Config, SecretRef, Secrets};
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::reload::LiveSecrets;
use crate::ui::SignInLinks;

pub use deliver::{NotifyError, Retry};

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

/// The gate, for notifiers built before it that need the live configuration
/// (who the approvers of a route are now). Set once, right after the gate is built.
#[derive(Clone, Default)]
pub struct GateRef(Arc<OnceLock<Weak<Gate>>>);

impl std::fmt::Debug for GateRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "GateRef(set)" } else { "GateRef(unset)" })
    }
}

impl GateRef {
    pub fn set(&self, gate: &Arc<Gate>) {
        let _ = self.0.set(Arc::downgrade(gate));
    }

    pub fn get(&self) -> Option<Arc<Gate>> {
        self.0.get().and_then(Weak::upgrade)
    }
}

/// What the phone notifiers need from the assembly.
pub struct PhoneDeps {
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub links: Arc<SignInLinks>,
    pub gate: GateRef,
    pub retry: Retry,
}

/// Checks that every webhook and ntfy URL the config names parses, so that a bad
/// one stops the start or refuses a reload instead of failing each delivery.
pub fn check_urls(cfg: &Config, secrets: &Secrets) -> Result<(), NotifyError> {
    for r in cfg.routes.values() {
        if let Some((key, url)) = r.webhook_url.as_ref().and_then(|s| secrets.get(s).map(|v| (s.key(), v))) {
            deliver::Target::parse(key, url.expose())?;
        }
        if let Some((key, url)) = r.ntfy_url.as_ref().and_then(|s| secrets.get(s).map(|v| (s.key(), v))) {
            ntfy::Topic::parse(key, url)?;
        }
    }
    for a in &cfg.approvers {
        if let Some((key, url)) = a.ntfy_url.as_ref().and_then(|s| secrets.get(s).map(|v| (s.key(), v))) {
            ntfy::Topic::parse(key, url)?;
        }
    }
    Ok(())
}

/// The webhook and ntfy notifiers the config asks for: one per route with a
/// webhook, one per route with an ntfy topic, and one for every approver with a
/// personal topic. Secrets that are not set leave their notifier out. The
/// notifiers read their URLs and secrets from `secrets` at each notification, so
/// a reload's new values apply from then on.
pub fn phone_notifiers(secrets: &LiveSecrets, deps: PhoneDeps) -> Result<Vec<Arc<dyn Notifier>>, NotifyError> {
    secrets.read(check_urls)?;
    let mut out: Vec<Arc<dyn Notifier>> = Vec::new();
    // One HTTP client for all of them, built only when one is configured.
    let mut cached: Option<deliver::Poster> = None;
    let mut poster = || -> Result<deliver::Poster, NotifyError> {
        if cached.is_none() {
            cached = Some(deliver::Poster::new()?);
        }
        cached.clone().ok_or_else(|| NotifyError::Tls("no client".into()))
    };
    let (public_url, webhooks, topics, personal) = secrets.read(|cfg, s| {
        let set = |r: &Option<SecretRef>| r.as_ref().is_some_and(|r| s.get(r).is_some());
        let webhooks: Vec<String> = cfg
            .routes
            .iter()
            // A secret that is named must be set; none named means unsigned.
            .filter(|(_, r)| set(&r.webhook_url) && (r.webhook_secret.is_none() || set(&r.webhook_secret)))
            .map(|(n, _)| n.clone())
            .collect();
        let topics: Vec<String> = cfg.routes.iter().filter(|(_, r)| set(&r.ntfy_url)).map(|(n, _)| n.clone()).collect();
        let personal = cfg.approvers.iter().any(|a| set(&a.ntfy_url));
        (cfg.server.public_url.clone(), webhooks, topics, personal)
    });
    for name in webhooks {
        let outbox = deliver::Outbox::start("webhook", poster()?, deps.metrics.clone(), deps.clock.clone(), deps.retry);
        out.push(Arc::new(webhook::WebhookNotifier::new(
            &name,
            secrets.clone(),
            &public_url,
            outbox,
            deps.clock.clone(),
        )));
    }
    for name in topics {
        let outbox = deliver::Outbox::start("ntfy", poster()?, deps.metrics.clone(), deps.clock.clone(), deps.retry);
        out.push(Arc::new(ntfy::NtfyNotifier::new(&name, secrets.clone(), &public_url, outbox)));
    }
    if personal {
        let outbox =
            deliver::Outbox::start("ntfy_approver", poster()?, deps.metrics.clone(), deps.clock.clone(), deps.retry);
        out.push(Arc::new(ntfy::ApproverPush::new(secrets.clone(), deps.links.clone(), deps.gate.clone(), outbox)));
    }
    Ok(out)
}
