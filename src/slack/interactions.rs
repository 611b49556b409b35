//! Decisions from Slack: `POST /slack/interactions` (HTTP mode) and the
//! interactive envelopes of Socket Mode both end here.
//!
//! Over HTTP, nothing is parsed before the v0 signature is verified (5-minute
//! window, constant-time comparison) and the signature has been claimed once in
//! the store; any failure is 401 and changes nothing. Clicks are acknowledged at
//! once and worked on in a task of their own: Approve decides, Reject opens a
//! modal asking for a reason (`views.open` straight after the ack, since a
//! `trigger_id` lives 3 seconds) and the modal's submission decides. Who may
//! decide is checked against the live config at decision time; anyone else gets
//! an ephemeral message and nothing changes.
//!
//! Payloads are parsed tolerantly: unknown fields are ignored; a payload that is
//! not a JSON object with a `type` is 400.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{Args, Retry};
use super::card::{self, ModalMeta};
use super::verify::{self, SignatureError};
use super::{Inner, Slack};
use crate::approval::{Approval, Channel, Verdict};
use crate::gate::{DecideError, Gate};
use crate::respond::{self, Body};

/// Largest interaction body we read (Slack sends the whole message back).
const MAX_BODY: usize = 1024 * 1024;
/// How long a seen signature is remembered: the whole window, both ways.
const REPLAY_MEMORY: Duration = Duration::from_secs(2 * verify::WINDOW_SECS + 60);
/// How long a modal submission may take before we close the modal anyway (Slack
/// waits 3 seconds for the answer).
const SUBMISSION_BUDGET: Duration = Duration::from_millis(2000);

/// Where an interaction arrived, which decides how errors are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /slack/interactions`: a modal submission can answer with errors.
    Http,
    /// Socket Mode: acknowledged before the work, so errors go ephemeral.
    Socket,
}

/// The parts of an interaction payload we use. Everything else is ignored.
#[derive(Debug, Deserialize)]
pub struct Interaction {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub trigger_id: Option<String>,
    #[serde(default)]
    pub container: Option<Container>,
    #[serde(default)]
    pub channel: Option<IdOnly>,
    #[serde(default)]
    pub actions: Vec<Action>,
    #[serde(default)]
    pub view: Option<View>,
}

#[derive(Debug, Deserialize)]
pub struct User {
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub struct IdOnly {
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub struct Container {
    #[serde(default)]
    pub channel_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Action {
    #[serde(default)]
    pub action_id: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct View {
    #[serde(default)]
    pub callback_id: Option<String>,
    #[serde(default)]
    pub private_metadata: Option<String>,
    #[serde(default)]
    pub state: Option<ViewState>,
}

#[derive(Debug, Deserialize)]
pub struct ViewState {
    #[serde(default)]
    pub values: BTreeMap<String, BTreeMap<String, InputValue>>,
}

#[derive(Debug, Deserialize)]
pub struct InputValue {
    #[serde(default)]
    pub value: Option<String>,
}

impl Interaction {
    /// Parses a payload object. `Err` is a malformed payload (400).
    pub fn parse(v: Value) -> Result<Interaction, String> {
        if !v.is_object() {
            return Err("the payload is not a JSON object".into());
        }
        serde_json::from_value(v).map_err(|e| format!("the payload is malformed: {e}"))
    }

    fn channel_id(&self) -> Option<String> {
        self.container
            .as_ref()
            .and_then(|c| c.channel_id.clone())
            .or_else(|| self.channel.as_ref().map(|c| c.id.clone()))
    }
}

/// Extracts the `payload` field of a form-encoded interaction body.
pub fn form_payload(body: &[u8]) -> Option<String> {
    form_urlencoded::parse(body).find(|(k, _)| k == "payload").map(|(_, v)| v.into_owned())
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn refuse(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    respond::json(status, &json!({"error": {"type": kind, "message": message}}))
}

impl Slack {
    /// `POST /slack/interactions`.
    pub async fn handle_http(&self, req: Request<Incoming>) -> Response<Body> {
        let inner = &self.inner;
        let Some(secret) = inner.signing_secret() else {
            return refuse(StatusCode::NOT_FOUND, "not_found", "slack interactions over HTTP are not configured");
        };
        let Some(gate) = inner.gate() else {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "starting", "not ready");
        };
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return refuse(StatusCode::PAYLOAD_TOO_LARGE, "malformed_request", "body too large or unreadable")
            }
        };
        let now_secs = gate.clock.now().0 / 1000;
        let ts = header(&parts.headers, "x-slack-request-timestamp");
        let sig = header(&parts.headers, "x-slack-signature");
        if let Err(e) = verify::verify(secret.expose().as_bytes(), ts, sig, &body, now_secs) {
            let reason = match e {
                SignatureError::MissingHeader(_) => "slack_missing_header",
                SignatureError::BadTimestamp | SignatureError::Stale { .. } => "slack_stale_timestamp",
                SignatureError::Malformed | SignatureError::Mismatch => "slack_bad_signature",
            };
            gate.metrics.refusal(reason);
            tracing::warn!(reason, error = %e, "slack interaction refused");
            return refuse(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string());
        }
        let sig = sig.unwrap_or_default().trim().to_ascii_lowercase();
        match gate.store.claim_once(&format!("slack:sig:{sig}"), REPLAY_MEMORY, gate.clock.now()).await {
            Ok(true) => {}
            Ok(false) => {
                gate.metrics.refusal("slack_replayed");
                tracing::warn!(reason = "slack_replayed", "slack interaction refused");
                return refuse(StatusCode::UNAUTHORIZED, "unauthorized", "this request was already received");
            }
            Err(e) => {
                tracing::error!(error = %e, "store unavailable; slack interaction refused");
                let mut r = refuse(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "retry");
                r.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("5"));
                return r;
            }
        }
        // Verified: now parse.
        if form_urlencoded::parse(&body).any(|(k, _)| k == "ssl_check") {
            return respond::text(StatusCode::OK, "");
        }
        let Some(payload) = form_payload(&body) else {
            return refuse(StatusCode::BAD_REQUEST, "malformed_request", "no payload field");
        };
        let value: Value = match serde_json::from_str(&payload) {
            Ok(v) => v,
            Err(e) => {
                return refuse(StatusCode::BAD_REQUEST, "malformed_request", &format!("payload is not JSON: {e}"))
            }
        };
        let ix = match Interaction::parse(value) {
            Ok(ix) => ix,
            Err(m) => return refuse(StatusCode::BAD_REQUEST, "malformed_request", &m),
        };
        match self.dispatch(ix, Source::Http).await {
            Some(answer) => respond::json(StatusCode::OK, &answer),
            None => respond::text(StatusCode::OK, ""),
        }
    }

    /// Handles one verified interaction. Returns the body of the HTTP answer when
    /// it has one (a modal's errors); the work itself runs in its own task.
    pub async fn dispatch(&self, ix: Interaction, source: Source) -> Option<Value> {
        let inner = self.inner.clone();
        match ix.kind.as_str() {
            "block_actions" => {
                tokio::spawn(async move { inner.on_block_actions(ix).await });
                None
            }
            "view_submission"
                if ix.view.as_ref().and_then(|v| v.callback_id.as_deref()) == Some(card::REJECT_MODAL) =>
            {
                let task = tokio::spawn(async move { inner.on_reject_submission(ix, source).await });
                if source == Source::Socket {
                    return None;
                }
                match tokio::time::timeout(SUBMISSION_BUDGET, task).await {
                    Ok(Ok(Some(message))) => Some(json!({
                        "response_action": "errors",
                        "errors": {card::REASON_BLOCK: message},
                    })),
                    // Decided, or still working: close the modal; the card shows the outcome.
                    _ => None,
                }
            }
            other => {
                tracing::debug!(slack.interaction = other, "slack interaction ignored");
                None
            }
        }
    }
}

/// What a person is told when a click does not decide.
fn refusal_text(e: &DecideError, route: &str) -> String {
    match e {
        DecideError::Forbidden { .. } => format!("You are not an approver for {route}."),
        DecideError::NotFound(id) => format!("Approval {id} was not found; it may have been purged."),
        DecideError::AlreadyDecided(a) => match &a.decided_by {
            Some(by) => format!("Approval {} is already {} (by {by}).", a.id, a.status),
            None => format!("Approval {} is already {}.", a.id, a.status),
        },
        DecideError::BadRequest(m) => m.clone(),
        DecideError::Store(_) => "The approval store is unavailable; please try again.".into(),
        DecideError::AuditUnavailable(_) => {
            "The audit log is unavailable, so the decision was not taken; please try again.".into()
        }
    }
}

impl Inner {
    async fn ephemeral(&self, channel: Option<&str>, user: &str, text: &str) {
        let Some(channel) = channel else {
            tracing::info!(slack.user = user, message = text, "no channel for an ephemeral reply");
            return;
        };
        let body = json!({"channel": channel, "user": user, "text": card::escape(text)});
        if let Err(e) = self.bot_call("chat.postEphemeral", Args::Json(&body), Retry::INTERACTIVE).await {
            tracing::warn!(slack.user = user, error = %e, "ephemeral reply not delivered");
        }
    }

    /// Brings this approval's cards up to date (only the Slack ones: other
    /// notifiers heard about the decision when it was taken). A click on a
    /// decided approval means its card may be stale, e.g. posted by a replica
    /// that missed the decision.
    fn refresh_cards(self: &Arc<Self>, a: &Approval) {
        use crate::notify::Notifier;
        Slack { inner: self.clone() }.publish(crate::notify::Change::Decided, a);
    }

    /// The approval named by a button, or the message to show instead.
    async fn lookup(&self, gate: &Gate, id: Option<&str>) -> Result<Approval, String> {
        let id = id.unwrap_or("").trim();
        if !Approval::looks_like_id(id) {
            return Err(format!("Approval {:?} was not found.", id));
        }
        match gate.store.get(id).await {
            Ok(Some(a)) => Ok(a),
            Ok(None) => Err(format!("Approval {id} was not found; it may have been purged.")),
            Err(_) => Err("The approval store is unavailable; please try again.".into()),
        }
    }

    async fn on_block_actions(self: Arc<Self>, ix: Interaction) {
        let Some(gate) = self.gate() else { return };
        let Some(user) = ix.user.as_ref().map(|u| u.id.clone()) else {
            tracing::info!("slack block action without a user; ignored");
            return;
        };
        let channel = ix.channel_id();
        for action in &ix.actions {
            match action.action_id.as_deref() {
                Some(card::APPROVE) => {
                    self.click_approve(&gate, &user, channel.as_deref(), action.value.as_deref()).await
                }
                Some(card::REJECT) => {
                    self.click_reject(
                        &gate,
                        &user,
                        channel.as_deref(),
                        action.value.as_deref(),
                        ix.trigger_id.as_deref(),
                    )
                    .await
                }
                other => tracing::debug!(slack.action = other.unwrap_or(""), "slack action ignored"),
            }
        }
    }

    /// Whether `user` may decide `a`; tells them when not.
    async fn authorize(&self, gate: &Gate, user: &str, a: &Approval) -> Result<super::Identity, String> {
        let live = gate.live();
        match self.identity(&live, user, a).await {
            Ok(Some(ident)) => Ok(ident),
            Ok(None) => {
                gate.metrics.refusal("slack_not_an_approver");
                tracing::info!(approval.id = %a.id, slack.user = user, route = %a.route, "slack click refused: not an approver");
                Err(format!("You are not an approver for {}.", a.route))
            }
            Err(e) => {
                tracing::warn!(approval.id = %a.id, slack.user = user, error = %e, "user group membership unknown");
                Err("Your user group membership could not be checked with Slack; please try again.".into())
            }
        }
    }

    async fn click_approve(self: &Arc<Self>, gate: &Arc<Gate>, user: &str, channel: Option<&str>, value: Option<&str>) {
        let a = match self.lookup(gate, value).await {
            Ok(a) => a,
            Err(m) => return self.ephemeral(channel, user, &m).await,
        };
        let ident = match self.authorize(gate, user, &a).await {
            Ok(i) => i,
            Err(m) => return self.ephemeral(channel, user, &m).await,
        };
        let r = gate
            .decide_authorized(&ident.who, &a.id, Verdict::Approve, None, Channel::Slack, &|live, ap| {
                ident.allows(live, ap)
            })
            .await;
        self.after_decision(r, user, channel, &a).await;
    }

    async fn after_decision(
        self: &Arc<Self>,
        r: Result<Approval, DecideError>,
        user: &str,
        channel: Option<&str>,
        a: &Approval,
    ) -> Option<String> {
        match r {
            Ok(_) => None,
            Err(e) => {
                if let DecideError::AlreadyDecided(done) = &e {
                    self.refresh_cards(done);
                }
                let text = refusal_text(&e, &a.route);
                tracing::info!(approval.id = %a.id, slack.user = user, error = %e, "slack decision not taken");
                self.ephemeral(channel, user, &text).await;
                Some(text)
            }
        }
    }

    async fn click_reject(
        &self,
        gate: &Arc<Gate>,
        user: &str,
        channel: Option<&str>,
        value: Option<&str>,
        trigger_id: Option<&str>,
    ) {
        let a = match self.lookup(gate, value).await {
            Ok(a) => a,
            Err(m) => return self.ephemeral(channel, user, &m).await,
        };
        if a.status.is_final() {
            let text = refusal_text(&DecideError::AlreadyDecided(Box::new(a.clone())), &a.route);
            return self.ephemeral(channel, user, &text).await;
        }
        if let Err(m) = self.authorize(gate, user, &a).await {
            return self.ephemeral(channel, user, &m).await;
        }
        let Some(trigger_id) = trigger_id else {
            return self
                .ephemeral(channel, user, "Slack sent no trigger for the reason dialog; please try again.")
                .await;
        };
        let meta = ModalMeta { approval_id: a.id.clone(), channel: channel.map(str::to_string) };
        let body = json!({"trigger_id": trigger_id, "view": card::reject_modal(&a, &meta)});
        match self.bot_call("views.open", Args::Json(&body), Retry::TRIGGER).await {
            Ok(_) => tracing::info!(approval.id = %a.id, slack.user = user, "reject dialog opened"),
            Err(e) => {
                tracing::warn!(approval.id = %a.id, slack.user = user, error = %e, "reject dialog not opened");
                self.ephemeral(channel, user, "The reason dialog could not be opened; please click Reject again.")
                    .await;
            }
        }
    }

    /// The modal's submission: decides the rejection. Returns the error to show in
    /// the modal (HTTP) or already sent as an ephemeral message (Socket Mode).
    async fn on_reject_submission(self: Arc<Self>, ix: Interaction, source: Source) -> Option<String> {
        let gate = self.gate()?;
        let user = ix.user.as_ref().map(|u| u.id.clone())?;
        let view = ix.view.as_ref()?;
        let meta: Option<ModalMeta> = view.private_metadata.as_deref().and_then(|m| serde_json::from_str(m).ok());
        let channel = meta.as_ref().and_then(|m| m.channel.clone());
        let tell = |text: String| {
            let this = self.clone();
            let channel = channel.clone();
            let user = user.clone();
            async move {
                if source == Source::Socket {
                    this.ephemeral(channel.as_deref(), &user, &text).await;
                }
                Some(text)
            }
        };
        let Some(meta) = meta else {
            return tell("This dialog is out of date; please click Reject on the card again.".into()).await;
        };
        let reason = view
            .state
            .as_ref()
            .and_then(|s| s.values.get(card::REASON_BLOCK))
            .and_then(|b| b.get(card::REASON_ACTION))
            .and_then(|v| v.value.clone())
            .unwrap_or_default();
        if reason.trim().is_empty() {
            return tell("A reason is required to reject.".into()).await;
        }
        let a = match self.lookup(&gate, Some(&meta.approval_id)).await {
            Ok(a) => a,
            Err(m) => return tell(m).await,
        };
        let ident = match self.authorize(&gate, &user, &a).await {
            Ok(i) => i,
            Err(m) => return tell(m).await,
        };
        let r = gate
            .decide_authorized(&ident.who, &a.id, Verdict::Reject, Some(reason), Channel::Slack, &|live, ap| {
                ident.allows(live, ap)
            })
            .await;
        match r {
            Ok(_) => None,
            Err(e) => {
                if let DecideError::AlreadyDecided(done) = &e {
                    self.refresh_cards(done);
                }
                tracing::info!(approval.id = %a.id, slack.user = %user, error = %e, "slack rejection not taken");
                tell(refusal_text(&e, &a.route)).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerant_parsing() {
        // The documented block_actions shape, with fields we do not know.
        let v = json!({
            "type": "block_actions",
            "user": {"id": "U0ALICE", "username": "alice", "team_id": "T1"},
            "api_app_id": "A1", "token": "legacy", "is_enterprise_install": false,
            "container": {"type": "message", "message_ts": "1.2", "channel_id": "C0FIN", "is_ephemeral": false},
            "trigger_id": "1.2.abc",
            "team": {"id": "T1", "domain": "x"},
            "channel": {"id": "C0FIN", "name": "finance"},
            "message": {"type": "message", "ts": "1.2", "blocks": []},
            "state": {"values": {}},
            "response_url": "https://hooks.slack.com/actions/x",
            "actions": [{"action_id": "approve", "block_id": "ap_actions", "text": {"type": "plain_text", "text": "Approve"},
                         "value": "apr_00000000000000000001", "style": "primary", "type": "button", "action_ts": "1.3"}],
            "brand_new_field": {"nested": [1, 2, 3]},
        });
        let ix = Interaction::parse(v).unwrap();
        assert_eq!(ix.kind, "block_actions");
        assert_eq!(ix.channel_id().as_deref(), Some("C0FIN"));
        assert_eq!(ix.actions[0].action_id.as_deref(), Some("approve"));
        // Other element types (no value) are fine too.
        let ix = Interaction::parse(json!({"type": "block_actions", "actions": [{"type": "static_select"}]})).unwrap();
        assert!(ix.actions[0].value.is_none());
        // Malformed.
        for bad in
            [json!([1]), json!("x"), json!({"no_type": 1}), json!({"type": 1}), json!({"type": "x", "user": "U1"})]
        {
            assert!(Interaction::parse(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_form_payload_field() {
        let body = form_urlencoded::Serializer::new(String::new()).append_pair("payload", "{\"type\":\"x\"}").finish();
        assert_eq!(form_payload(body.as_bytes()).as_deref(), Some("{\"type\":\"x\"}"));
        assert_eq!(form_payload(b"other=1"), None);
    }
}
