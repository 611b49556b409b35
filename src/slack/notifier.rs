//! Cards in channels: the Slack [`Notifier`].
//!
//! `publish` only enqueues. Each channel has one queue and one worker that paces
//! its calls (`slack.post_interval`, about one message per second as Slack asks),
//! so a burst of holds loses no card, and a card's post always comes before its
//! updates. A job that fails for a reason that may pass (Slack down, 429, 5xx)
//! is retried with backoff until it succeeds; the approval meanwhile stays pending
//! and decidable elsewhere. Updates render the approval as the store has it when
//! the job runs, so late or reordered notifications still show the latest state.
//!
//! The card's `ts` per channel is kept in the store (`set_meta`) so that any
//! replica can update a card another one posted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::api::{Args, Retry};
use super::card::{self, CardContext, Escalation};
use super::{lock, Inner, Slack};
use crate::approval::{Approval, Status};
use crate::gate::{Gate, Live};
use crate::notify::{Change, Notifier};

/// The longest wait between two attempts at a card.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a card's `ts` is remembered beyond the approval's expiry.
const CARD_MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Work for one channel's worker.
#[derive(Debug, Clone)]
pub(crate) enum Job {
    /// Post the card (once per approval and channel). `escalation` names the
    /// route this channel was escalated to, for the mention.
    Post { approval: Box<Approval>, escalation: Option<String> },
    /// Update the card to the approval's current state.
    Update { approval: Box<Approval> },
}

impl Job {
    fn approval(&self) -> &Approval {
        match self {
            Job::Post { approval, .. } | Job::Update { approval } => approval,
        }
    }
}

/// The store key of a card's `ts`.
pub fn card_key(approval_id: &str, channel: &str) -> String {
    format!("slack:card:{approval_id}:{channel}")
}

fn escalation_key(approval_id: &str, channel: &str) -> String {
    format!("slack:card-escalation:{approval_id}:{channel}")
}

/// The channels of `routes` under `live`, without repeats, in route order.
fn channels(live: &Live, routes: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for r in routes {
        if let Some(c) = live.routes.get(r).and_then(|rc| rc.slack_channel.clone()) {
            if !out.iter().any(|(_, x)| *x == c) {
                out.push((r.clone(), c));
            }
        }
    }
    out
}

impl Notifier for Slack {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn publish(&self, change: Change, a: &Approval) {
        let Some(gate) = self.inner.gate() else {
            tracing::warn!(approval.id = %a.id, "slack notifier used before it was attached");
            return;
        };
        let live = gate.live();
        let primary = channels(&live, &a.routes);
        let escalated: Vec<(String, String)> = channels(&live, &a.escalated_to)
            .into_iter()
            .filter(|(_, c)| !primary.iter().any(|(_, p)| p == c))
            .collect();
        let boxed = || Box::new(a.clone());
        match change {
            Change::Opened => {
                for (_, c) in &primary {
                    self.enqueue(c, Job::Post { approval: boxed(), escalation: None });
                }
            }
            Change::Escalated => {
                for (_, c) in &primary {
                    self.enqueue(c, Job::Update { approval: boxed() });
                }
                for (route, c) in &escalated {
                    self.enqueue(c, Job::Post { approval: boxed(), escalation: Some(route.clone()) });
                }
            }
            Change::Voted | Change::Decided | Change::Ended => {
                for (_, c) in primary.iter().chain(escalated.iter()) {
                    self.enqueue(c, Job::Update { approval: boxed() });
                }
            }
        }
    }
}

impl Slack {
    fn enqueue(&self, channel: &str, job: Job) {
        let inner = &self.inner;
        inner.inflight.fetch_add(1, Ordering::AcqRel);
        let mut queues = lock(&inner.queues);
        let tx = queues.entry(channel.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_channel(self.inner.clone(), channel.to_string(), rx));
            tx
        });
        if let Err(mpsc::error::SendError(job)) = tx.send(job) {
            // The worker is gone (runtime shutting down): nothing will run it.
            tracing::warn!(slack.channel = channel, approval.id = %job.approval().id, "slack queue closed; card dropped");
            inner.job_done();
        }
    }
}

impl Inner {
    fn job_done(&self) {
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// One channel's worker: jobs in order, calls paced.
async fn run_channel(inner: Arc<Inner>, channel: String, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut pace = Pace { interval: inner.post_interval, last: None };
    while let Some(job) = rx.recv().await {
        let id = job.approval().id.clone();
        match inner.gate() {
            Some(gate) => inner.run_job(&gate, &channel, job, &mut pace).await,
            None => tracing::warn!(approval.id = %id, "slack job without a gate; dropped"),
        }
        inner.job_done();
    }
}

/// Spaces one channel's calls at least `interval` apart.
struct Pace {
    interval: Duration,
    last: Option<Instant>,
}

impl Pace {
    async fn wait(&mut self) {
        if let Some(last) = self.last {
            tokio::time::sleep_until(last + self.interval).await;
        }
        self.last = Some(Instant::now());
    }
}

fn digest(card: &card::Card) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(card.text.as_bytes());
    h.update(serde_json::to_vec(&card.blocks).unwrap_or_default());
    h.finalize().into()
}

/// Whether the approval moved on from how it was when it was opened.
fn changed_since_open(a: &Approval) -> bool {
    a.status != Status::Pending || !a.approvals.is_empty() || !a.escalated_to.is_empty()
}

impl Inner {
    async fn run_job(&self, gate: &Arc<Gate>, channel: &str, job: Job, pace: &mut Pace) {
        match job {
            Job::Post { approval, escalation } => {
                let key = card_key(&approval.id, channel);
                match gate.store.get_meta(&key, gate.clock.now()).await {
                    Ok(Some(_)) => {
                        // Already posted (by us or another replica): bring it up to date.
                        self.update(gate, channel, &approval, pace).await;
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(approval.id = %approval.id, error = %e, "store unavailable; posting anyway")
                    }
                }
                let Some(ts) = self.post(gate, channel, &approval, escalation.as_deref(), pace).await else { return };
                let now = gate.clock.now();
                let ttl = approval.expires_at.since(now) + CARD_MEMORY;
                if let Err(e) = gate.store.set_meta(&key, &ts, ttl, now).await {
                    tracing::warn!(approval.id = %approval.id, error = %e, "card ts not stored; it cannot be updated");
                }
                if let Some(route) = &escalation {
                    let _ = gate.store.set_meta(&escalation_key(&approval.id, channel), route, ttl, now).await;
                }
                // Posted late? Then the approval may have moved on: show where it is.
                let fresh = gate.store.get(&approval.id).await.ok().flatten();
                if fresh.as_ref().is_some_and(changed_since_open) {
                    self.update(gate, channel, &approval, pace).await;
                }
            }
            Job::Update { approval } => self.update(gate, channel, &approval, pace).await,
        }
    }

    fn context<'a>(
        &'a self,
        gate: &Gate,
        users: &'a std::collections::BTreeMap<String, String>,
        escalation: Option<Escalation>,
    ) -> CardContext<'a> {
        CardContext { now: gate.clock.now(), public_url: &self.public_url, slack_users: users, escalation }
    }

    /// The mention for an escalation to `route`: its user group, else its
    /// approvers' Slack users, else the route's name.
    fn escalation_for(live: &Live, route: &str) -> Escalation {
        let rc = live.routes.get(route);
        let mention = match rc.and_then(|r| r.slack_usergroup.as_deref()).filter(|g| card::is_slack_id(g)) {
            Some(g) => format!("<!subteam^{g}>"),
            None => {
                let users: Vec<String> = rc
                    .map(|r| {
                        r.approvers
                            .iter()
                            .filter_map(|id| live.approvers.get(id).and_then(|p| p.slack_user.clone()))
                            .filter(|u| card::is_slack_id(u))
                            .map(|u| format!("<@{u}>"))
                            .collect()
                    })
                    .unwrap_or_default();
                if users.is_empty() {
                    format!("*{}*", card::escape(route))
                } else {
                    users.join(" ")
                }
            }
        };
        Escalation { route: route.to_string(), mention }
    }

    /// Posts the card as `a` stands (the opened state); retries until Slack takes
    /// it or refuses it for good. Returns the message `ts`.
    async fn post(
        &self,
        gate: &Gate,
        channel: &str,
        a: &Approval,
        escalation: Option<&str>,
        pace: &mut Pace,
    ) -> Option<String> {
        let live = gate.live();
        let users = Self::slack_users(&live);
        let esc = escalation.map(|r| Self::escalation_for(&live, r));
        let card = card::render(a, &self.context(gate, &users, esc));
        let body = json!({
            "channel": channel,
            "text": card.text,
            "blocks": card.blocks,
            "unfurl_links": false,
            "unfurl_media": false,
        });
        let v = self.deliver(gate, "chat.postMessage", &body, &a.id, channel, pace).await?;
        let ts = v.get("ts").and_then(Value::as_str).map(str::to_string);
        match &ts {
            Some(ts) => {
                lock(&self.rendered).insert((a.id.clone(), channel.to_string()), digest(&card));
                tracing::info!(approval.id = %a.id, slack.channel = channel, slack.ts = %ts, "slack card posted");
            }
            None => {
                tracing::warn!(approval.id = %a.id, slack.channel = channel, "chat.postMessage answered without ts")
            }
        }
        ts
    }

    /// Updates the card in `channel` to the approval's current state.
    async fn update(&self, gate: &Gate, channel: &str, snapshot: &Approval, pace: &mut Pace) {
        let now = gate.clock.now();
        let a = match gate.store.get(&snapshot.id).await {
            Ok(Some(a)) => a,
            _ => snapshot.clone(),
        };
        let ts = match gate.store.get_meta(&card_key(&a.id, channel), now).await {
            Ok(Some(ts)) => ts,
            Ok(None) => {
                tracing::debug!(approval.id = %a.id, slack.channel = channel, "no card to update (not posted yet)");
                return;
            }
            Err(e) => {
                tracing::warn!(approval.id = %a.id, error = %e, "store unavailable; card not updated");
                return;
            }
        };
        let live = gate.live();
        let users = Self::slack_users(&live);
        let esc = match gate.store.get_meta(&escalation_key(&a.id, channel), now).await {
            Ok(Some(route)) => Some(Self::escalation_for(&live, &route)),
            _ => None,
        };
        let card = card::render(&a, &self.context(gate, &users, esc));
        let d = digest(&card);
        let key = (a.id.clone(), channel.to_string());
        if lock(&self.rendered).get(&key) == Some(&d) {
            return;
        }
        let body = json!({"channel": channel, "ts": ts, "text": card.text, "blocks": card.blocks});
        if self.deliver(gate, "chat.update", &body, &a.id, channel, pace).await.is_some() {
            tracing::info!(approval.id = %a.id, slack.channel = channel, approval.status = %a.status, "slack card updated");
            let mut r = lock(&self.rendered);
            if a.status.is_final() {
                r.remove(&key);
            } else {
                r.insert(key, d);
            }
        }
    }

    /// One call, paced, retried with backoff while the failure may pass.
    async fn deliver(
        &self,
        gate: &Gate,
        method: &str,
        body: &Value,
        approval_id: &str,
        channel: &str,
        pace: &mut Pace,
    ) -> Option<Value> {
        let mut backoff = Duration::from_millis(250);
        let mut attempt: u32 = 0;
        loop {
            pace.wait().await;
            attempt += 1;
            match self.bot_call(method, Args::Json(body), Retry::BACKGROUND).await {
                Ok(v) => {
                    if attempt > 1 {
                        tracing::info!(approval.id = %approval_id, slack.method = method, attempt, "slack recovered");
                    }
                    return Some(v);
                }
                Err(e) if e.retryable() && !gate.is_shutting_down() => {
                    let wait = e.retry_after().unwrap_or(backoff);
                    tracing::warn!(
                        approval.id = %approval_id,
                        slack.method = method,
                        slack.channel = channel,
                        error = %e,
                        retry_in = ?wait,
                        "slack unavailable; will retry"
                    );
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    gate.metrics
                        .notifier_errors
                        .get_or_create(&vec![("notifier", "slack".to_string()), ("method", method.to_string())])
                        .inc();
                    tracing::error!(
                        approval.id = %approval_id,
                        slack.method = method,
                        slack.channel = channel,
                        slack.error = e.code().unwrap_or(""),
                        error = %e,
                        "slack refused the card"
                    );
                    return None;
                }
            }
        }
    }
}
