//! The gate: classify → decide → hold → forward or refuse → record.
//!
//! Every entrance (the proxy, `request_approval`, MCP) goes through here, so there is
//! one approval queue, one policy and one audit trail. The gate owns the rules of
//! "one approval per action" (INTERFACE.md §3), who may decide (approver lists are
//! read at decision time, routes are frozen at creation), and the timers that
//! escalate and expire approvals.
//!
//! It does not parse HTTP (that is [`crate::proxy`] and [`crate::api`]) and talks to
//! upstreams only through [`crate::upstream`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Response;
use http_body_util::BodyExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::approval::{Approval, Channel, Entrance, Risk, Status, StoredRequest, Verdict};
use crate::audit::{AuditError, AuditLog, Durability, Event, Subject};
use crate::clock::{Clock, Timestamp};
use crate::config::{ApproverConfig, FailMode, RouteConfig};
use crate::fingerprint;
use crate::metrics::Metrics;
use crate::notify::{Change, Notifiers};
use crate::policy::input::{self, sha256_hex, HttpView};
use crate::policy::{ApprovalPlan, Decision, PolicyBundle};
use crate::refusal::Refusal;
use crate::respond::{self, Body, BoxError};
use crate::store::{ApprovalStore, Claim, DecideOutcome, Finish, OpenRequest, Opened, Reuse, StoreError, Vote};
use crate::upstream::Upstream;

/// A token's digest; tokens are looked up by digest, never compared as text.
pub type TokenDigest = [u8; 32];

pub fn token_digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The parts of the configuration that can change on reload.
pub struct Live {
    pub policy: Arc<PolicyBundle>,
    pub routes: BTreeMap<String, RouteConfig>,
    pub approvers: BTreeMap<String, ApproverConfig>,
    pub approver_tokens: HashMap<TokenDigest, String>,
    pub agent_tokens: HashMap<TokenDigest, String>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Gated MCP servers (`/mcp/{name}`).
    pub mcp_servers: HashMap<String, Arc<crate::mcp::gateway::GatewayServer>>,
}

impl Live {
    pub fn agents_configured(&self) -> bool {
        !self.agent_tokens.is_empty()
    }

    /// Whether `approver` may decide `a` now: listed on one of its routes, or on a
    /// route it has been escalated to.
    pub fn may_decide(&self, approver: &str, a: &Approval) -> bool {
        a.deciding_routes().any(|r| self.routes.get(r).is_some_and(|rc| rc.approvers.iter().any(|x| x == approver)))
    }

    /// Whether `approver` may see `a` (same rule as deciding).
    pub fn may_see(&self, approver: &str, a: &Approval) -> bool {
        self.may_decide(approver, a)
    }
}

/// Fixed settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub hold_timeout: Duration,
    pub grant_ttl: Duration,
    pub reject_memory: Duration,
    pub default_expires_after: Duration,
    pub decided_retention: Duration,
    pub fail_mode: FailMode,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
}

pub use crate::store::TimerKind;

/// A proxied request, read and checked by [`crate::proxy`].
#[derive(Debug, Clone)]
pub struct HttpAction {
    pub request_id: String,
    pub agent: String,
    pub req: StoredRequest,
    pub justification: Option<String>,
    /// How long to hold (already capped by `hold_timeout`).
    pub wait: Duration,
    /// Base for `status_url`, e.g. `http://127.0.0.1:8080`.
    pub status_base: String,
}

/// A `request_approval` call.
#[derive(Debug, Clone)]
pub struct AskAction {
    pub request_id: String,
    pub agent: String,
    pub action: String,
    pub payload: Value,
    pub risk: Option<Risk>,
    pub policy_hints: Vec<String>,
    pub justification: Option<String>,
    pub idempotency_key: Option<String>,
    pub wait: Duration,
}

/// A gated MCP `tools/call`, read and checked by [`crate::mcp::gateway`].
#[derive(Debug, Clone)]
pub struct McpAction {
    pub request_id: String,
    pub agent: String,
    pub server: String,
    pub tool: String,
    pub arguments: Value,
    pub justification: Option<String>,
}

/// The policy's answer to a gated tool call.
// Built once per call and matched at once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum McpDecision {
    /// Forward now.
    Allowed(McpPermit),
    /// Wait for this approval ([`Gate::mcp_hold`]).
    Held(Approval),
}

/// Leave to send one tool call to its server; recorded with [`Gate::mcp_forwarded`].
#[derive(Debug, Clone)]
pub struct McpPermit {
    pub subject: Subject,
    pub approval_id: Option<String>,
    pub request_id: String,
}

/// Why a person's decision was not taken.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecideError {
    #[error("{0}")]
    BadRequest(String),
    #[error("approval {0} not found")]
    NotFound(String),
    #[error("{approver} is not an approver for {route}")]
    Forbidden { approver: String, route: String },
    #[error("approval {} is already {}", .0.id, .0.status)]
    AlreadyDecided(Box<Approval>),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log is failing: a decision that cannot be recorded is not taken.
    #[error("the audit log is unavailable: {0}")]
    AuditUnavailable(String),
}

pub struct Gate {
    live: ArcSwap<Live>,
    pub store: Arc<dyn ApprovalStore>,
    pub audit: AuditLog,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub notifiers: Notifiers,
    pub settings: Settings,
    timers: mpsc::UnboundedSender<(Timestamp, String, TimerKind)>,
    shutting_down: AtomicBool,
    /// Records waiting for the audit log to recover ([`Gate::record_later`]).
    late_records: Arc<std::sync::atomic::AtomicUsize>,
    shutdown_tx: watch::Sender<bool>,
    /// MCP sessions and gateway connections.
    pub mcp: crate::mcp::Hub,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("settings", &self.settings).finish()
    }
}

/// A new request id.
pub fn request_id() -> String {
    use rand::RngCore;
    format!("req_{:016x}", rand::thread_rng().next_u64())
}

fn audit_failed(e: &AuditError, what: &str) {
    tracing::error!(error = %e, record = what, "audit record not written");
}

impl Gate {
    pub fn new(
        live: Live,
        store: Arc<dyn ApprovalStore>,
        audit: AuditLog,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        notifiers: Notifiers,
        settings: Settings,
    ) -> Arc<Gate> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (shutdown_tx, _) = watch::channel(false);
        let gate = Arc::new(Gate {
            live: ArcSwap::from_pointee(live),
            store,
            audit,
            clock,
            metrics,
            notifiers,
            settings,
            timers: tx,
            shutting_down: AtomicBool::new(false),
            late_records: Arc::default(),
            shutdown_tx,
            mcp: Default::default(),
        });
        tokio::spawn(run_timers(Arc::downgrade(&gate), rx));
        gate
    }

    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Swaps in a new live configuration. Requests already evaluated keep theirs.
    pub fn replace_live(&self, live: Live) {
        self.live.store(Arc::new(live));
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Turns true when shutdown starts; long-lived streams end on it.
    pub fn shutdown_watch(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Identifies the agent by token digest. `None` when agents are configured and
    /// the token is unknown; `anonymous` when none are configured.
    pub fn agent_for(&self, live: &Live, token: Option<&str>) -> Option<String> {
        if !live.agents_configured() {
            return Some("anonymous".to_string());
        }
        token.and_then(|t| live.agent_tokens.get(&token_digest(t)).cloned())
    }

    fn schedule(&self, a: &Approval) {
        let _ = self.timers.send((a.expires_at, a.id.clone(), TimerKind::Expire));
        if let Some(at) = a.escalate_at {
            let _ = self.timers.send((at, a.id.clone(), TimerKind::Escalate));
        }
    }

    fn new_approval(
        &self,
        fingerprint: &str,
        kind: Entrance,
        subject: &Subject,
        plan: &ApprovalPlan,
        justification: Option<String>,
        now: Timestamp,
    ) -> Approval {
        Approval {
            id: Approval::new_id_for(fingerprint),
            status: Status::Pending,
            route: plan.routes.first().cloned().unwrap_or_default(),
            routes: plan.routes.clone(),
            agent: subject.agent.clone(),
            action: subject.action.clone(),
            risk: plan.risk,
            summary: plan.summary.clone(),
            justification,
            rule_ids: plan.rule_ids.clone(),
            body_sha256: subject.body_sha256.clone(),
            created_at: now,
            decided_by: None,
            decided_at: None,
            reason: None,
            approvals: Vec::new(),
            quorum: plan.quorum,
            kind,
            upstream: subject.upstream.clone(),
            target: subject.target.clone(),
            risk_reason: plan.risk_reason.clone(),
            policy_bundle: subject.policy_bundle.clone(),
            expires_at: now.plus(plan.expires_after.unwrap_or(self.settings.default_expires_after)),
            escalate_at: plan.escalate_after.map(|d| now.plus(d)),
            escalated_to: Vec::new(),
            decided_via: None,
        }
    }

    /// The subject of records about an existing approval.
    pub fn subject_of(a: &Approval) -> Subject {
        Subject {
            agent: a.agent.clone(),
            action: a.action.clone(),
            body_sha256: a.body_sha256.clone(),
            rule_ids: a.rule_ids.clone(),
            policy_bundle: a.policy_bundle.clone(),
            entrance: a.kind.as_str().to_string(),
            upstream: a.upstream.clone(),
            target: a.target.clone(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn decision_event(
        subject: &Subject,
        request_id: &str,
        decision: Decision,
        matched: Decision,
        reason: &str,
        approval_id: Option<&str>,
        error: Option<String>,
        payload_json: Option<String>,
        justification: Option<&str>,
    ) -> Event {
        Event::Decision {
            subject: subject.clone(),
            request_id: request_id.to_string(),
            decision: decision.as_str().to_string(),
            matched: matched.as_str().to_string(),
            shadow: decision != matched,
            reason: reason.to_string(),
            approval_id: approval_id.map(str::to_string),
            error,
            payload_json: payload_json.map(|p| crate::redact::mask_json_text(&p)),
            justification: justification.map(|j| crate::redact::mask_credentials(j).into_owned()),
        }
    }

    fn count_decision(&self, upstream: &str, decision: Decision, matched: Decision) {
        self.metrics.decision(upstream, decision.as_str());
        if decision != matched {
            self.metrics
                .shadow_decisions
                .get_or_create(&vec![("upstream", upstream.to_string()), ("decision", matched.as_str().to_string())])
                .inc();
        }
    }

    // ---------------------------------------------------------------------
    // The proxy entrance.
    // ---------------------------------------------------------------------

    /// Decides on a proxied request and forwards it, holds it, or refuses it.
    pub async fn proxy(self: &Arc<Self>, a: HttpAction) -> Result<Response<Body>, Refusal> {
        if self.is_shutting_down() {
            return Err(Refusal::ShuttingDown);
        }
        let live = self.live();
        let upstream = live
            .upstreams
            .get(&a.req.upstream)
            .cloned()
            .ok_or_else(|| Refusal::UnknownUpstream(a.req.upstream.clone()))?;
        let now = self.clock.now();
        let (path, query) = match a.req.path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (a.req.path_and_query.as_str(), None),
        };
        let target = format!("{} /{}{}", a.req.method, a.req.upstream, path);
        let mut subject = Subject {
            agent: a.agent.clone(),
            action: target.clone(),
            body_sha256: sha256_hex(&a.req.body),
            rule_ids: Vec::new(),
            policy_bundle: live.policy.hash().to_string(),
            entrance: "http".into(),
            upstream: Some(a.req.upstream.clone()),
            target: Some(target),
        };
        let view = HttpView {
            agent: &a.agent,
            upstream: &a.req.upstream,
            method: &a.req.method,
            path,
            query,
            headers: &a.req.headers,
            body: &a.req.body,
            justification: a.justification.as_deref(),
            inject_header: upstream.inject_header().map(|h| h.as_str()),
        };
        let doc = match input::http_input::<regorus::Value>(&view, now) {
            Ok(d) => d,
            Err(e) => {
                let (rule, refusal) = match &e {
                    input::InputError::Body(m) => ("approvalplane.malformed_body", Refusal::MalformedBody(m.clone())),
                    input::InputError::Query(m) => {
                        ("approvalplane.malformed_request", Refusal::MalformedRequest(m.clone()))
                    }
                };
                subject.rule_ids = vec![rule.to_string()];
                self.count_decision(&a.req.upstream, Decision::Deny, Decision::Deny);
                let ev = Self::decision_event(
                    &subject,
                    &a.request_id,
                    Decision::Deny,
                    Decision::Deny,
                    &e.to_string(),
                    None,
                    None,
                    None,
                    a.justification.as_deref(),
                );
                let f = Box::pin(self.audit.append(&ev, Durability::Written));
                if let Err(err) = f.await {
                    audit_failed(&err, "decision");
                    self.record_later(ev);
                }
                return Err(refusal);
            }
        };
        let (verdict, _) = live.policy.evaluate_value(doc);
        subject.rule_ids = verdict.rule_ids.clone();
        if let Some(action) = verdict.plan.as_ref().and_then(|p| p.action.clone()) {
            subject.action = action;
        }
        if let Some(err) = &verdict.error {
            tracing::warn!(request.id = %a.request_id, error = %err, "policy error: denying");
        }
        self.count_decision(&a.req.upstream, verdict.decision, verdict.matched);
        match verdict.decision {
            Decision::Allow => {
                tracing::debug!(request.id = %a.request_id, agent = %a.agent, decision = "allow", rule_ids = ?verdict.rule_ids, "decided")
            }
            d => {
                tracing::info!(request.id = %a.request_id, agent = %a.agent, decision = d.as_str(), rule_ids = ?verdict.rule_ids, "decided")
            }
        }
        match verdict.decision {
            // Every path in a box of its own (each `let` ends its unboxed future's
            // storage before the await): this future's size is what a held request
            // keeps while it waits.
            Decision::Allow => {
                let f =
                    Box::pin(self.record_allowed(&subject, &a.request_id, &verdict, None, a.justification.as_deref()));
                f.await?;
                self.forward(upstream, a.req, subject, a.request_id, None).await
            }
            Decision::Deny => {
                let f =
                    Box::pin(self.refuse_denied(&subject, &a.request_id, verdict, None, a.justification.as_deref()));
                Err(f.await)
            }
            Decision::RequireApproval => {
                let Some(plan) = verdict.plan.clone() else {
                    // Unreachable by the combiner's contract; recorded and refused.
                    let v = crate::policy::Verdict::error("require_approval without an approval plan");
                    let f = Box::pin(self.refuse_denied(&subject, &a.request_id, v, None, a.justification.as_deref()));
                    return Err(f.await);
                };
                let fp = fingerprint::http(
                    &a.agent,
                    &a.req.upstream,
                    &a.req.method,
                    &a.req.path_and_query,
                    &a.req.headers,
                    &a.req.body,
                );
                // An Idempotency-Key never separates two requests, but reusing one
                // with other bytes is refused while its approval may be used.
                if let Some((_, key)) = a.req.headers.iter().find(|(k, _)| k == "idempotency-key") {
                    let scope = format!("http\0{}\0{}", a.agent, a.req.upstream);
                    let f = self.remember_idempotency_key(&scope, key, &fp, &verdict, &subject, &a.request_id, None);
                    Box::pin(f).await?;
                }
                let candidate = self.new_approval(&fp, Entrance::Http, &subject, &plan, a.justification.clone(), now);
                let open = OpenRequest {
                    fingerprint: fp,
                    approval: candidate,
                    // Moved, not copied: the store keeps the one copy of the bytes.
                    request: Some(a.req),
                    reuse: Reuse::Forward {
                        grant_ttl: self.settings.grant_ttl,
                        reject_memory: self.settings.reject_memory,
                    },
                    now,
                };
                // Boxed: the held path's futures are allocated only by requests that
                // take it, and a parked request's task stays small.
                let f = Box::pin(self.open(open, &subject, &a.request_id, &verdict.reason, verdict.matched, None));
                let approval = f.await?;
                // A held request waits for minutes: it keeps its approval's id and
                // nothing else (the store has the approval and the request bytes).
                let id = approval.id;
                drop((plan, verdict, subject, upstream, live));
                let HttpAction { request_id, status_base, wait, .. } = a;
                let f = Box::pin(self.hold_and_forward(id, &request_id, wait, &status_base));
                f.await
            }
        }
    }

    /// Records an allow decision (written before the forward). When the record
    /// cannot be written, `audit.fail_mode` decides: closed refuses, open_allowed
    /// goes on.
    async fn record_allowed(
        &self,
        subject: &Subject,
        request_id: &str,
        verdict: &crate::policy::Verdict,
        payload_json: Option<String>,
        justification: Option<&str>,
    ) -> Result<(), Refusal> {
        let ev = Self::decision_event(
            subject,
            request_id,
            verdict.decision,
            verdict.matched,
            &verdict.reason,
            None,
            None,
            payload_json,
            justification,
        );
        if let Err(e) = self.audit.append(&ev, Durability::Written).await {
            audit_failed(&e, "decision");
            self.metrics.audit_failures.inc();
            if self.settings.fail_mode == FailMode::Closed {
                return Err(Refusal::AuditUnavailable);
            }
        }
        Ok(())
    }

    /// Records a policy denial and returns the refusal (a failed record is logged:
    /// the request is refused either way).
    async fn refuse_denied(
        &self,
        subject: &Subject,
        request_id: &str,
        verdict: crate::policy::Verdict,
        payload_json: Option<String>,
        justification: Option<&str>,
    ) -> Refusal {
        let ev = Self::decision_event(
            subject,
            request_id,
            Decision::Deny,
            verdict.matched,
            &verdict.reason,
            None,
            verdict.error.clone(),
            payload_json,
            justification,
        );
        if let Err(e) = self.audit.append(&ev, Durability::Written).await {
            audit_failed(&e, "decision");
            self.record_later(ev);
        }
        Refusal::PolicyDenied { rule: verdict.deny_rule().to_string(), reason: verdict.reason }
    }

    /// Opens (creates or attaches to) an approval and records it.
    async fn open(
        &self,
        open: OpenRequest,
        subject: &Subject,
        request_id: &str,
        reason: &str,
        matched: Decision,
        payload_json: Option<String>,
    ) -> Result<Approval, Refusal> {
        let justification = open.approval.justification.clone();
        let opened = self.store.open(open).await.map_err(|e| {
            tracing::error!(error = %e, "store unavailable: refusing");
            Refusal::StoreUnavailable
        })?;
        let (approval, created) = match opened {
            Opened::Created(a) => (a, true),
            // The same Idempotency-Key with different bytes.
            Opened::Attached(a) if a.body_sha256 != subject.body_sha256 => return Err(Refusal::IdempotencyConflict),
            Opened::Attached(a) => (a, false),
            Opened::RecentlyRejected(a) => {
                let ev = Event::ApprovalRefused {
                    subject: subject.clone(),
                    request_id: request_id.to_string(),
                    approval_id: a.id.clone(),
                    reason: "an identical request was rejected recently".into(),
                };
                if let Err(e) = self.audit.append(&ev, Durability::Written).await {
                    audit_failed(&e, "approval_refused");
                    self.record_later(ev);
                }
                return Err(Refusal::ApprovalRejected {
                    approval_id: a.id,
                    reason: a.reason,
                    decided_by: a.decided_by,
                });
            }
        };
        let ev = Self::decision_event(
            subject,
            request_id,
            Decision::RequireApproval,
            matched,
            reason,
            Some(&approval.id),
            None,
            payload_json,
            justification.as_deref(),
        );
        let recorded = match self.audit.append(&ev, Durability::Written).await {
            Ok(_) if created => {
                let ev = Event::ApprovalRequested {
                    subject: Self::subject_of(&approval),
                    approval_id: approval.id.clone(),
                    routes: approval.routes.clone(),
                    risk: approval.risk.as_str().to_string(),
                    risk_reason: approval.risk_reason.clone(),
                    // Free text from the agent and the rules: members named like a
                    // credential, and credential-looking words, are masked here as
                    // on the cards.
                    summary: approval
                        .summary
                        .iter()
                        .map(|(k, v)| {
                            let v = if crate::redact::is_sensitive_field(k) {
                                Value::String(crate::redact::REDACTED.into())
                            } else {
                                crate::redact::mask_json(v)
                            };
                            (k.clone(), v)
                        })
                        .collect(),
                    justification: approval
                        .justification
                        .as_deref()
                        .map(|j| crate::redact::mask_credentials(j).into_owned()),
                    quorum: approval.quorum,
                    expires_at: approval.expires_at.rfc3339(),
                    escalate_at: approval.escalate_at.map(|t| t.rfc3339()),
                };
                self.audit.append(&ev, Durability::Synced).await.map(|_| ())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            audit_failed(&e, "approval_requested");
            self.metrics.audit_failures.inc();
            if created {
                // Nobody has been asked yet: withdraw it rather than hold unrecorded.
                let _ = self.store.finish(&approval.id, Finish::Abandoned, self.clock.now()).await;
            }
            return Err(Refusal::AuditUnavailable);
        }
        if created {
            tracing::info!(request.id = %request_id, approval.id = %approval.id, route = %approval.route, "approval requested");
            self.schedule(&approval);
            self.notifiers.publish(Change::Opened, &approval);
        }
        Ok(approval)
    }

    /// Waits for a decision on `id` for at most `wait`, then forwards the approved
    /// request once, or refuses.
    async fn hold_and_forward(
        self: &Arc<Self>,
        approval_id: String,
        request_id: &str,
        wait: Duration,
        status_base: &str,
    ) -> Result<Response<Body>, Refusal> {
        self.metrics.held.inc();
        let _held = scopeguard(|| {
            self.metrics.held.dec();
        });
        let a = self.wait_for(&approval_id, wait).await?;
        drop(approval_id);
        match a.status {
            Status::Pending => {
                let remaining = a.expires_at.since(self.clock.now()).as_secs();
                Err(Refusal::ApprovalPending {
                    approval_id: a.id.clone(),
                    status_url: format!("{status_base}/v1/approvals/{}", a.id),
                    retry_after: remaining.clamp(1, 5),
                    route: a.route.clone(),
                })
            }
            Status::Approved => {
                let f = Box::pin(self.use_grant(&a, request_id));
                f.await
            }
            other => Err(self.refusal_for(&a, other)),
        }
    }

    fn refusal_for(&self, a: &Approval, status: Status) -> Refusal {
        match status {
            Status::Rejected => Refusal::ApprovalRejected {
                approval_id: a.id.clone(),
                reason: a.reason.clone(),
                decided_by: a.decided_by.clone(),
            },
            Status::Expired => Refusal::ApprovalExpired { approval_id: a.id.clone() },
            Status::Interrupted if self.is_shutting_down() => Refusal::ShuttingDown,
            Status::Abandoned | Status::Interrupted => {
                Refusal::ApprovalEnded { approval_id: a.id.clone(), status: status.as_str().to_string() }
            }
            Status::Pending | Status::Approved => {
                Refusal::ApprovalEnded { approval_id: a.id.clone(), status: status.as_str().into() }
            }
        }
    }

    /// Waits until `id` is no longer pending, `wait` passes, or shutdown starts.
    /// Returns the approval as last seen.
    pub async fn wait_for(&self, id: &str, wait: Duration) -> Result<Approval, Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        let waiter = self.store.waiters().register(id);
        let mut shutdown = self.shutdown_tx.subscribe();
        loop {
            let notified = waiter.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let a = self.current(id).await?;
            if a.status != Status::Pending {
                return Ok(a);
            }
            // Not kept while waiting: ten thousand held requests would hold ten
            // thousand copies of their approvals.
            drop(a);
            if *shutdown.borrow_and_update() {
                return Err(Refusal::ShuttingDown);
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => return self.current(id).await,
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn current(&self, id: &str) -> Result<Approval, Refusal> {
        self.store
            .get(id)
            .await
            .map_err(|_| Refusal::StoreUnavailable)?
            .ok_or_else(|| Refusal::NotFound(format!("approval {id}")))
    }

    /// Claims the one use of an approved request's grant and records it (synced)
    /// before anything is sent; gives the grant back if the record cannot be written.
    async fn claim_recorded(
        &self,
        a: &Approval,
        request_id: &str,
    ) -> Result<(Approval, StoredRequest, Subject), Refusal> {
        let now = self.clock.now();
        let claim = self.store.claim_grant(&a.id, self.settings.grant_ttl, now).await.map_err(|e| {
            tracing::error!(error = %e, approval.id = %a.id, "store unavailable: refusing");
            Refusal::StoreUnavailable
        })?;
        match claim {
            Claim::Granted(a, stored) => {
                let subject = Self::subject_of(&a);
                let ev = Event::GrantUsed {
                    subject: subject.clone(),
                    request_id: request_id.to_string(),
                    approval_id: a.id.clone(),
                    decided_by: a.decided_by.clone(),
                    approvals: a.approvals.clone(),
                };
                if let Err(e) = self.audit.append(&ev, Durability::Synced).await {
                    audit_failed(&e, "grant_used");
                    self.metrics.audit_failures.inc();
                    let _ = self.store.release_grant(&a.id, stored).await;
                    return Err(Refusal::AuditUnavailable);
                }
                Ok((a, stored, subject))
            }
            Claim::Used(a) => Err(Refusal::ApprovalUsed { approval_id: a.id }),
            Claim::Lapsed(a) => Err(Refusal::ApprovalExpired { approval_id: a.id }),
            Claim::NotApproved(a) => Err(self.refusal_for(&a, a.status)),
            Claim::NotFound => Err(Refusal::ApprovalExpired { approval_id: a.id.clone() }),
        }
    }

    /// Takes the grant of an approved request and forwards the stored request.
    async fn use_grant(self: &Arc<Self>, a: &Approval, request_id: &str) -> Result<Response<Body>, Refusal> {
        let (a, stored, subject) = self.claim_recorded(a, request_id).await?;
        let Some(upstream) = self.live().upstreams.get(&stored.upstream).cloned() else {
            let upstream = stored.upstream.clone();
            let _ = self.store.release_grant(&a.id, stored).await;
            return Err(Refusal::UnknownUpstream(upstream));
        };
        self.forward(upstream, stored, subject, request_id.to_string(), Some(a.id.clone())).await
    }

    /// Forwards in a task of its own, so a client that disconnects cannot leave a
    /// grant half-used or a forward unrecorded.
    fn forward(
        self: &Arc<Self>,
        upstream: Arc<Upstream>,
        req: StoredRequest,
        subject: Subject,
        request_id: String,
        approval_id: Option<String>,
    ) -> impl std::future::Future<Output = Result<Response<Body>, Refusal>> {
        let (tx, rx) = oneshot::channel();
        let gate = self.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let res = upstream.send(&req).await;
            let latency = start.elapsed();
            let (status, outcome, error, reply) = match res {
                Ok(resp) => {
                    gate.metrics
                        .upstream_latency
                        .get_or_create(&vec![("upstream", upstream.name.clone())])
                        .observe(latency.as_secs_f64());
                    let status = resp.status().as_u16();
                    let (mut parts, body) = resp.into_parts();
                    respond::strip_hop_by_hop(&mut parts.headers);
                    let body: Body = body.map_err(|e| Box::new(e) as BoxError).boxed();
                    (Some(status), "ok", None, Ok(Response::from_parts(parts, body)))
                }
                Err(e) => {
                    gate.metrics
                        .upstream_errors
                        .get_or_create(&vec![("upstream", upstream.name.clone()), ("kind", e.kind().to_string())])
                        .inc();
                    tracing::warn!(request.id = %request_id, upstream = %upstream.name, error = %e, "forward failed");
                    if let (Some(id), false) = (&approval_id, e.maybe_sent()) {
                        // Nothing reached the upstream: the grant stays usable.
                        let _ = gate.store.release_grant(id, req).await;
                    }
                    let refusal = match &e {
                        crate::upstream::ForwardError::Timeout(_) => Refusal::UpstreamTimeout {
                            upstream: upstream.name.clone(),
                            approval_id: approval_id.clone(),
                        },
                        other => Refusal::UpstreamUnreachable {
                            upstream: upstream.name.clone(),
                            detail: other.to_string(),
                            maybe_delivered: other.maybe_sent(),
                        },
                    };
                    let outcome = if e.maybe_sent() { "unknown" } else { "connect_failed" };
                    (None, outcome, Some(e.kind().to_string()), Err(refusal))
                }
            };
            let ev = Event::Forwarded {
                subject,
                request_id,
                approval_id: approval_id.clone(),
                status,
                outcome: outcome.to_string(),
                error,
                latency_ms: latency.as_millis() as u64,
            };
            // Recorded before the answer is handed back: once the agent has its
            // response, the log has the forward.
            let durability = if approval_id.is_some() { Durability::Synced } else { Durability::Written };
            if let Err(e) = gate.audit.append(&ev, durability).await {
                // The request went out: its record is written as soon as the log
                // takes it.
                audit_failed(&e, "forwarded");
                gate.metrics.audit_failures.inc();
                gate.record_later(ev);
            }
            let _ = tx.send(reply);
        });
        async move {
            rx.await.unwrap_or_else(|_| {
                Err(Refusal::UpstreamUnreachable {
                    upstream: "unknown".into(),
                    detail: "forward task ended".into(),
                    maybe_delivered: true,
                })
            })
        }
    }

    // ---------------------------------------------------------------------
    // The request_approval entrance.
    // ---------------------------------------------------------------------

    /// Ties an `Idempotency-Key` (within `scope`: the agent, and the upstream for
    /// proxied requests) to the request it first came with: the same key with other
    /// bytes is refused (`idempotency_conflict`). The key is kept as long as the
    /// request's approval may be pending or its grant used.
    #[allow(clippy::too_many_arguments)]
    async fn remember_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        fp: &str,
        verdict: &crate::policy::Verdict,
        subject: &Subject,
        request_id: &str,
        payload_json: Option<&str>,
    ) -> Result<(), Refusal> {
        let now = self.clock.now();
        let lifetime = verdict.plan.as_ref().and_then(|p| p.expires_after).unwrap_or_default();
        let ttl = lifetime.max(self.settings.default_expires_after) + self.settings.grant_ttl;
        let matched = verdict.matched;
        let meta = format!("idem:{}", fingerprint::idempotency_key(scope, key));
        // One atomic step: two requests racing with one key cannot both take it.
        let first = self.store.set_meta_once(&meta, fp, ttl, now).await.map_err(|e| {
            tracing::error!(error = %e, "store unavailable: refusing");
            Refusal::StoreUnavailable
        })?;
        match first {
            None => Ok(()),
            Some(first) if first == fp => Ok(()),
            Some(_) => {
                let ev = Self::decision_event(
                    subject,
                    request_id,
                    Decision::Deny,
                    matched,
                    "refused: this Idempotency-Key was first used with other bytes (idempotency_conflict)",
                    None,
                    None,
                    payload_json.map(str::to_string),
                    None,
                );
                if let Err(e) = self.audit.append(&ev, Durability::Written).await {
                    audit_failed(&e, "decision");
                    self.record_later(ev);
                }
                Err(Refusal::IdempotencyConflict)
            }
        }
    }

    /// Decides on a `request_approval` call. Allowed calls come back approved at
    /// once (decided by the rule); denied ones as a refusal; the rest are held up to
    /// `wait` and come back with their current status.
    pub async fn ask(self: &Arc<Self>, a: AskAction) -> Result<Approval, Refusal> {
        if self.is_shutting_down() {
            return Err(Refusal::ShuttingDown);
        }
        let live = self.live();
        let now = self.clock.now();
        let canonical_payload = crate::audit::record::canonical(&a.payload);
        let payload_sha = sha256_hex(canonical_payload.as_bytes());
        let doc = input::api_input(
            &input::ApiView {
                agent: &a.agent,
                action: &a.action,
                payload: &a.payload,
                risk: a.risk.map(Risk::as_str),
                policy_hints: &a.policy_hints,
                justification: a.justification.as_deref(),
            },
            now,
        );
        let (verdict, _) = live.policy.evaluate(&doc);
        // A held request keeps this future alive for minutes: the input document
        // must not stay in it.
        drop(doc);
        self.count_decision("api", verdict.decision, verdict.matched);
        let subject = Subject {
            agent: a.agent.clone(),
            action: a.action.clone(),
            body_sha256: payload_sha,
            rule_ids: verdict.rule_ids.clone(),
            policy_bundle: live.policy.hash().to_string(),
            entrance: "api".into(),
            upstream: None,
            target: None,
        };
        let fp = fingerprint::api(&a.agent, &a.action, &canonical_payload);
        // A denied call reserves no key: nothing was opened that a retry could reuse.
        if let (Some(key), false) = (&a.idempotency_key, verdict.decision == Decision::Deny) {
            let payload = Some(canonical_payload.as_str());
            self.remember_idempotency_key(&a.agent, key, &fp, &verdict, &subject, &a.request_id, payload).await?;
        }
        let reuse = Reuse::Ask { grant_ttl: self.settings.grant_ttl };
        match verdict.decision {
            Decision::Deny => Err(self
                .refuse_denied(&subject, &a.request_id, verdict, Some(canonical_payload), a.justification.as_deref())
                .await),
            Decision::Allow => {
                // Approved by rule: an approval object that is decided already.
                let plan = ApprovalPlan {
                    routes: Vec::new(),
                    risk: a.risk.unwrap_or(Risk::Low),
                    risk_reason: verdict.reason.clone(),
                    action: None,
                    summary: Default::default(),
                    escalate_after: None,
                    expires_after: None,
                    quorum: 1,
                    rule_ids: verdict.rule_ids.clone(),
                };
                let mut ap = self.new_approval(&fp, Entrance::Api, &subject, &plan, a.justification.clone(), now);
                ap.status = Status::Approved;
                ap.decided_by = Some("policy".into());
                ap.decided_at = Some(now);
                ap.decided_via = Some(Channel::Rule);
                ap.reason = Some(verdict.reason.clone());
                let open = OpenRequest { fingerprint: fp, approval: ap, request: None, reuse, now };
                let opened = self.store.open(open).await.map_err(|_| Refusal::StoreUnavailable)?;
                let (ap, created) = match opened {
                    Opened::Created(x) => (x, true),
                    Opened::Attached(x) | Opened::RecentlyRejected(x) if x.body_sha256 != subject.body_sha256 => {
                        let _ = x;
                        return Err(Refusal::IdempotencyConflict);
                    }
                    Opened::Attached(x) | Opened::RecentlyRejected(x) => (x, false),
                };
                let ev = Self::decision_event(
                    &subject,
                    &a.request_id,
                    Decision::Allow,
                    verdict.matched,
                    &verdict.reason,
                    Some(&ap.id),
                    None,
                    Some(canonical_payload),
                    a.justification.as_deref(),
                );
                let mut res = self.audit.append(&ev, Durability::Written).await.map(|_| ());
                if res.is_ok() && created {
                    res = self
                        .audit
                        .append(
                            &Event::ApprovalDecided {
                                subject: subject.clone(),
                                approval_id: ap.id.clone(),
                                verdict: "approve".into(),
                                status: ap.status.as_str().into(),
                                decided_by: "policy".into(),
                                channel: Channel::Rule.as_str().into(),
                                reason: ap.reason.clone(),
                                approvals: vec![],
                                quorum: 1,
                            },
                            Durability::Synced,
                        )
                        .await
                        .map(|_| ());
                }
                if let Err(e) = res {
                    audit_failed(&e, "decision");
                    self.metrics.audit_failures.inc();
                    return Err(Refusal::AuditUnavailable);
                }
                Ok(ap)
            }
            Decision::RequireApproval => {
                let Some(mut plan) = verdict.plan.clone() else {
                    let v = crate::policy::Verdict::error("require_approval without an approval plan");
                    return Err(self
                        .refuse_denied(&subject, &a.request_id, v, Some(canonical_payload), a.justification.as_deref())
                        .await);
                };
                // The agent's own risk estimate can raise the risk, never lower it.
                if let Some(r) = a.risk {
                    plan.risk = plan.risk.max(r);
                }
                let mut subject = subject;
                if let Some(act) = &plan.action {
                    subject.action = act.clone();
                }
                let candidate = self.new_approval(&fp, Entrance::Api, &subject, &plan, a.justification.clone(), now);
                let open = OpenRequest { fingerprint: fp, approval: candidate, request: None, reuse, now };
                let ap = self
                    .open(open, &subject, &a.request_id, &verdict.reason, verdict.matched, Some(canonical_payload))
                    .await?;
                if ap.status != Status::Pending || a.wait.is_zero() {
                    return Ok(ap);
                }
                self.wait_for(&ap.id, a.wait).await
            }
        }
    }

    // ---------------------------------------------------------------------
    // The MCP gateway entrance.
    // ---------------------------------------------------------------------

    /// Decides on a gated MCP `tools/call`: allowed (recorded, forward now),
    /// held (an approval opened or attached to), or refused.
    pub async fn mcp_decide(self: &Arc<Self>, a: &McpAction) -> Result<McpDecision, Refusal> {
        if self.is_shutting_down() {
            return Err(Refusal::ShuttingDown);
        }
        let live = self.live();
        let now = self.clock.now();
        let canonical_args = crate::audit::record::canonical(&a.arguments);
        let target = format!("mcp {}/{}", a.server, a.tool);
        let mut subject = Subject {
            agent: a.agent.clone(),
            action: target.clone(),
            body_sha256: sha256_hex(canonical_args.as_bytes()),
            rule_ids: Vec::new(),
            policy_bundle: live.policy.hash().to_string(),
            entrance: "mcp".into(),
            upstream: Some(a.server.clone()),
            target: Some(target),
        };
        let doc = input::mcp_input(
            &input::McpView {
                agent: &a.agent,
                server: &a.server,
                tool: &a.tool,
                arguments: &a.arguments,
                justification: a.justification.as_deref(),
            },
            now,
        );
        let (verdict, _) = live.policy.evaluate(&doc);
        // A held request keeps this future alive for minutes: the input document
        // must not stay in it.
        drop(doc);
        subject.rule_ids = verdict.rule_ids.clone();
        if let Some(action) = verdict.plan.as_ref().and_then(|p| p.action.clone()) {
            subject.action = action;
        }
        self.count_decision(&a.server, verdict.decision, verdict.matched);
        match verdict.decision {
            Decision::Allow => {
                self.record_allowed(&subject, &a.request_id, &verdict, Some(canonical_args), None).await?;
                Ok(McpDecision::Allowed(McpPermit { subject, approval_id: None, request_id: a.request_id.clone() }))
            }
            Decision::Deny => {
                Err(self.refuse_denied(&subject, &a.request_id, verdict, Some(canonical_args), None).await)
            }
            Decision::RequireApproval => {
                let Some(plan) = verdict.plan.clone() else {
                    let v = crate::policy::Verdict::error("require_approval without an approval plan");
                    return Err(self.refuse_denied(&subject, &a.request_id, v, Some(canonical_args), None).await);
                };
                let fp = fingerprint::mcp(&a.agent, &a.server, &a.tool, &canonical_args);
                let candidate = self.new_approval(&fp, Entrance::Mcp, &subject, &plan, a.justification.clone(), now);
                let stored = StoredRequest {
                    upstream: a.server.clone(),
                    method: "tools/call".into(),
                    path_and_query: format!("/{}", a.tool),
                    headers: Vec::new(),
                    body: bytes::Bytes::from(canonical_args.clone()),
                };
                let open = OpenRequest {
                    fingerprint: fp,
                    approval: candidate,
                    request: Some(stored),
                    reuse: Reuse::Forward {
                        grant_ttl: self.settings.grant_ttl,
                        reject_memory: self.settings.reject_memory,
                    },
                    now,
                };
                let approval = self
                    .open(open, &subject, &a.request_id, &verdict.reason, verdict.matched, Some(canonical_args))
                    .await?;
                Ok(McpDecision::Held(approval))
            }
        }
    }

    /// Holds a gated tool call until its approval is decided or `wait` passes,
    /// then takes the grant: the call may go to the server once.
    pub async fn mcp_hold(&self, approval: &Approval, request_id: &str, wait: Duration) -> Result<McpPermit, Refusal> {
        self.metrics.held.inc();
        let _held = scopeguard(|| {
            self.metrics.held.dec();
        });
        let a = self.wait_for(&approval.id, wait).await?;
        match a.status {
            Status::Pending => Err(Refusal::ApprovalPending {
                approval_id: a.id.clone(),
                status_url: format!("/v1/approvals/{}", a.id),
                retry_after: a.expires_at.since(self.clock.now()).as_secs().clamp(1, 5),
                route: a.route.clone(),
            }),
            Status::Approved => {
                let (a, _, subject) = self.claim_recorded(&a, request_id).await?;
                Ok(McpPermit { subject, approval_id: Some(a.id.clone()), request_id: request_id.to_string() })
            }
            other => Err(self.refusal_for(&a, other)),
        }
    }

    /// Records that a permitted tool call went to its server, and how it ended.
    pub async fn mcp_forwarded(
        &self,
        permit: &McpPermit,
        status: Option<u16>,
        outcome: &str,
        error: Option<String>,
        latency: Duration,
    ) {
        let ev = Event::Forwarded {
            subject: permit.subject.clone(),
            request_id: permit.request_id.clone(),
            approval_id: permit.approval_id.clone(),
            status,
            outcome: outcome.to_string(),
            error,
            latency_ms: latency.as_millis() as u64,
        };
        let durability = if permit.approval_id.is_some() { Durability::Synced } else { Durability::Written };
        if let Err(e) = self.audit.append(&ev, durability).await {
            audit_failed(&e, "forwarded");
            self.metrics.audit_failures.inc();
            self.record_later(ev);
        }
    }

    // ---------------------------------------------------------------------
    // Decisions by people, and timers.
    // ---------------------------------------------------------------------

    /// Records a configured approver's decision (admin API, web page).
    pub async fn decide(
        &self,
        approver: &str,
        id: &str,
        verdict: Verdict,
        reason: Option<String>,
        channel: Channel,
    ) -> Result<Approval, DecideError> {
        self.decide_authorized(approver, id, verdict, reason, channel, &|live, a| live.may_decide(approver, a)).await
    }

    /// [`Gate::decide`] in a task of its own: a caller that goes away (a client that
    /// disconnects) cannot stop a decision between the store and its record, and
    /// many decisions (a bulk call) spread over the worker threads.
    pub async fn decide_detached(
        self: &Arc<Self>,
        approver: String,
        id: String,
        verdict: Verdict,
        reason: Option<String>,
        channel: Channel,
    ) -> Result<Approval, DecideError> {
        let gate = self.clone();
        tokio::spawn(async move { gate.decide(&approver, &id, verdict, reason, channel).await })
            .await
            .unwrap_or_else(|e| Err(DecideError::Store(StoreError::Unavailable(format!("decision task: {e}")))))
    }

    /// Records a decision by `who` (an approver id, or a channel identity such as
    /// `slack:U123`), allowed when `authorize` says so for the approval as it is
    /// now. Approver lists are read from the live config at this moment.
    pub async fn decide_authorized(
        &self,
        who: &str,
        id: &str,
        verdict: Verdict,
        reason: Option<String>,
        channel: Channel,
        authorize: &(dyn Fn(&Live, &Approval) -> bool + Sync),
    ) -> Result<Approval, DecideError> {
        let approver = who;
        let reason = reason.map(|r| r.trim().to_string()).filter(|r| !r.is_empty());
        if let Some(r) = &reason {
            if r.chars().count() > 2000 {
                return Err(DecideError::BadRequest("reason is longer than 2000 characters".into()));
            }
        }
        if verdict == Verdict::Reject && reason.is_none() {
            return Err(DecideError::BadRequest("a reason is required to reject".into()));
        }
        let live = self.live();
        let a = self.store.get(id).await?.ok_or_else(|| DecideError::NotFound(id.to_string()))?;
        if !authorize(&live, &a) {
            return Err(DecideError::Forbidden { approver: approver.into(), route: a.route.clone() });
        }
        if !self.audit.health().is_ok() {
            // No decision without its record: refuse before the store changes.
            let why = self.audit.health().last_error().unwrap_or_else(|| "failing".into());
            return Err(DecideError::AuditUnavailable(why));
        }
        let now = self.clock.now();
        let outcome = self
            .store
            .decide(id, Vote { approver: approver.to_string(), verdict, reason: reason.clone(), channel, now })
            .await?;
        let (a, change) = match outcome {
            DecideOutcome::Decided(a) => (a, Change::Decided),
            DecideOutcome::Counted(a) => (a, Change::Voted),
            DecideOutcome::AlreadyVoted(a) => return Ok(a),
            DecideOutcome::AlreadyFinal(a) => return Err(DecideError::AlreadyDecided(Box::new(a))),
            DecideOutcome::NotFound => return Err(DecideError::NotFound(id.to_string())),
        };
        let ev = Event::ApprovalDecided {
            subject: Self::subject_of(&a),
            approval_id: a.id.clone(),
            verdict: match verdict {
                Verdict::Approve => "approve".into(),
                Verdict::Reject => "reject".into(),
            },
            status: a.status.as_str().into(),
            decided_by: approver.to_string(),
            channel: channel.as_str().into(),
            reason,
            approvals: a.approvals.clone(),
            quorum: a.quorum,
        };
        if let Err(e) = self.audit.append(&ev, Durability::Synced).await {
            // The log failed between the health check and this write. The decision
            // stands in the store, so its record must not be lost: it is written
            // again until the log recovers. Forwarding needs a synced grant record
            // after it, so nothing leaves while the log is down.
            audit_failed(&e, "approval_decided");
            self.metrics.audit_failures.inc();
            self.record_later(ev);
        }
        if change == Change::Decided {
            self.metrics
                .approval_latency
                .get_or_create(&vec![("route", a.route.clone()), ("status", a.status.as_str().to_string())])
                .observe(now.since(a.created_at).as_secs_f64());
        }
        tracing::info!(approval.id = %a.id, decided_by = approver, channel = channel.as_str(), status = %a.status, "vote recorded");
        self.notifiers.publish(change, &a);
        Ok(a)
    }

    /// Appends `ev` again, with backoff, until the log takes it; the record of
    /// something that already happened is never dropped.
    fn record_later(&self, ev: Event) {
        /// Bounds the memory a long outage can take; past it, records are dropped
        /// loudly (an error per record, and the failure counter).
        const MAX_LATE: usize = 100_000;
        if self.late_records.fetch_add(1, Ordering::AcqRel) >= MAX_LATE {
            self.late_records.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(kind = ev.kind(), "audit record dropped: too many records wait for the log");
            self.metrics.audit_failures.inc();
            return;
        }
        let audit = self.audit.clone();
        let late = self.late_records.clone();
        tokio::spawn(async move {
            let _done = scopeguard(move || {
                late.fetch_sub(1, Ordering::AcqRel);
            });
            let mut wait = Duration::from_millis(100);
            loop {
                tokio::time::sleep(wait).await;
                match audit.append(&ev, Durability::Synced).await {
                    Ok(_) => {
                        tracing::info!(kind = ev.kind(), "audit record written after the log recovered");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(kind = ev.kind(), error = %e, "audit record still waiting for the log");
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                }
            }
        });
    }

    /// Ends a pending approval without a person, and records it.
    pub async fn finish(&self, id: &str, how: Finish, reason: &str) -> Result<Option<Approval>, StoreError> {
        let now = self.clock.now();
        let Some(a) = self.store.finish(id, how, now).await? else { return Ok(None) };
        self.record_end(&a, reason).await;
        Ok(Some(a))
    }

    async fn record_end(&self, a: &Approval, reason: &str) {
        self.metrics.approvals_ended.get_or_create(&vec![("status", a.status.as_str().to_string())]).inc();
        let ev = Event::ApprovalEnded {
            subject: Self::subject_of(a),
            approval_id: a.id.clone(),
            status: a.status.as_str().into(),
            reason: reason.to_string(),
        };
        if let Err(e) = self.audit.append(&ev, Durability::Synced).await {
            audit_failed(&e, "approval_ended");
            self.metrics.audit_failures.inc();
            self.record_later(ev);
        }
        self.notifiers.publish(Change::Ended, a);
    }

    /// Fires a timer. The store transitions are atomic, so a timer that two
    /// replicas fire acts once. A failed timer stays leased in a shared store, and
    /// another sweep fires it again.
    async fn on_timer(&self, id: &str, kind: TimerKind) {
        let res = match kind {
            TimerKind::Expire => {
                self.finish(id, Finish::Expired, "expires_after passed without a decision").await.map(|_| ())
            }
            TimerKind::Escalate => self.escalate(id).await,
        };
        match res {
            Ok(()) => {
                if let Err(e) = self.store.timer_done(id, kind).await {
                    tracing::debug!(approval.id = %id, error = %e, timer = ?kind, "timer done not recorded");
                }
            }
            Err(e) => tracing::error!(approval.id = %id, error = %e, timer = ?kind, "timer failed"),
        }
    }

    async fn escalate(&self, id: &str) -> Result<(), StoreError> {
        let live = self.live();
        let Some(a) = self.store.get(id).await? else { return Ok(()) };
        let targets: Vec<String> =
            a.routes.iter().filter_map(|r| live.routes.get(r).and_then(|rc| rc.escalate_to.clone())).collect();
        if targets.is_empty() {
            return Ok(());
        }
        let Some(a) = self.store.escalate(id, &targets, self.clock.now()).await? else { return Ok(()) };
        self.metrics.escalations.inc();
        let ev = Event::ApprovalEscalated {
            subject: Self::subject_of(&a),
            approval_id: a.id.clone(),
            escalated_to: a.escalated_to.clone(),
        };
        if let Err(e) = self.audit.append(&ev, Durability::Synced).await {
            audit_failed(&e, "approval_escalated");
            self.metrics.audit_failures.inc();
            self.record_later(ev);
        }
        self.notifiers.publish(Change::Escalated, &a);
        Ok(())
    }

    /// Starts the shutdown: new requests are refused, held ones answered, and the
    /// memory store's pending approvals interrupted and recorded.
    pub async fn begin_shutdown(&self) -> Vec<String> {
        self.shutting_down.store(true, Ordering::Release);
        let _ = self.shutdown_tx.send(true);
        let interrupted = match self.store.shutdown(self.clock.now()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "store shutdown failed");
                Vec::new()
            }
        };
        for a in &interrupted {
            self.record_end(a, "the proxy shut down while it was pending (memory store)").await;
        }
        interrupted.into_iter().map(|a| a.id).collect()
    }

    /// At the end of a shutdown with a store that dies with the process: withdraws
    /// every approved grant not yet used, and records it, so that no approval is
    /// silently dropped. (A shared store keeps them for the other replicas.)
    pub async fn void_unused_grants(&self) -> Vec<String> {
        if self.store.shared() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let q = crate::store::ListQuery { status: Some(Status::Approved), after: after.take(), limit: 500 };
            let Ok(page) = self.store.list(&q).await else { break };
            for a in &page.approvals {
                if let Ok(Claim::Granted(a, _)) =
                    self.store.claim_grant(&a.id, self.settings.grant_ttl, self.clock.now()).await
                {
                    self.record_end(&a, "the proxy shut down before the approved request was forwarded; the grant is withdrawn (memory store)")
                        .await;
                    out.push(a.id);
                }
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        out
    }

    /// The admin view: approvals `approver` may see.
    pub fn visible_to(&self, approver: &str, a: &Approval) -> bool {
        self.live().may_see(approver, a)
    }
}

/// Runs `f` on drop.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    G(Some(f))
}

/// How long a replica owns a shared timer it took; if it dies, another takes it
/// over after this.
const TIMER_LEASE: Duration = Duration::from_secs(30);
/// Shared timers are swept a little after they are due, so that the replica that
/// set them (and holds them in its queue) usually fires them first.
const SWEEP_GRACE: Duration = Duration::from_secs(2);

/// The timer loop: one task, a sorted queue, the injected clock. With a shared
/// store it also sweeps the store's due timers every second, so that timers of a
/// replica that died still fire (lease-based, exactly once in effect).
async fn run_timers(gate: std::sync::Weak<Gate>, mut rx: mpsc::UnboundedReceiver<(Timestamp, String, TimerKind)>) {
    let mut queue: std::collections::BTreeSet<(Timestamp, TimerKind, String)> = Default::default();
    let purge_every = Duration::from_secs(60);
    let (mut next_purge, shared) = {
        let Some(g) = gate.upgrade() else { return };
        (g.clock.now().plus(purge_every), g.store.shared())
    };
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let Some(g) = gate.upgrade() else { return };
        let clock = g.clock.clone();
        drop(g);
        let next = queue.first().map(|(t, _, _)| *t).unwrap_or(next_purge).min(next_purge);
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((t, id, k)) => { queue.insert((t, k, id)); }
                None => return,
            },
            _ = sweep.tick(), if shared => {
                let Some(g) = gate.upgrade() else { return };
                let due = Timestamp(g.clock.now().0.saturating_sub(SWEEP_GRACE.as_millis() as u64));
                match g.store.take_due_timers(due, TIMER_LEASE, 200).await {
                    Ok(timers) => {
                        for (id, kind) in timers {
                            let g2 = g.clone();
                            tokio::spawn(async move { g2.on_timer(&id, kind).await });
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "timer sweep deferred"),
                }
            }
            _ = clock.sleep_until(next) => {
                let now = clock.now();
                let Some(g) = gate.upgrade() else { return };
                while let Some(first) = queue.first().cloned() {
                    if first.0 > now {
                        break;
                    }
                    queue.remove(&first);
                    let g2 = g.clone();
                    tokio::spawn(async move { g2.on_timer(&first.2, first.1).await });
                }
                if now >= next_purge {
                    next_purge = now.plus(purge_every);
                    if let Err(e) = g.store.purge(now, g.settings.decided_retention).await {
                        tracing::warn!(error = %e, "purge failed");
                    }
                }
            }
        }
    }
}
