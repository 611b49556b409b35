//! The approval card (Block Kit) and the reject modal: pure functions from an
//! approval to Slack's JSON (INTERFACE.md §6).
//!
//! Everything an agent or a rule controls (action, summary, justification, reasons)
//! is escaped for mrkdwn, so it cannot mention `@channel` or forge a link, and is
//! passed through [`crate::redact`], so a credential never reaches a channel.
//! Texts are clipped to Block Kit's limits.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::approval::{Approval, Status};
use crate::clock::Timestamp;
use crate::redact;

/// `action_id` of the Approve button (INTERFACE.md §6).
pub const APPROVE: &str = "approve";
/// `action_id` of the Reject button (INTERFACE.md §6).
pub const REJECT: &str = "reject";
/// `callback_id` of the modal that asks for a rejection reason.
pub const REJECT_MODAL: &str = "approvalplane_reject";
/// `block_id` and `action_id` of the modal's reason input.
pub const REASON_BLOCK: &str = "reason";
pub const REASON_ACTION: &str = "reason";

/// Block Kit limits we clip to.
const SECTION_TEXT_MAX: usize = 3000;
const FIELD_TEXT_MAX: usize = 2000;
const FIELDS_PER_SECTION: usize = 10;
const MAX_SUMMARY_FIELDS: usize = 30;
const FALLBACK_TEXT_MAX: usize = 1000;

/// What the renderer needs besides the approval.
#[derive(Debug, Clone)]
pub struct CardContext<'a> {
    /// Business time, for "escalates in 15m".
    pub now: Timestamp,
    /// Base of the web page link (`server.public_url`).
    pub public_url: &'a str,
    /// Approver id → Slack user id, to mention the people who decided.
    pub slack_users: &'a BTreeMap<String, String>,
    /// Set on the card posted to an escalation route's channel: who to mention
    /// (`<!subteam^ID>` or user mentions) and the route's name.
    pub escalation: Option<Escalation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    pub route: String,
    pub mention: String,
}

/// A message: the notification text and the blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Card {
    pub text: String,
    pub blocks: Vec<Value>,
}

/// Escapes the three characters Slack's mrkdwn treats as control characters.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Shown text: credentials masked, then escaped.
fn shown(s: &str) -> String {
    escape(&redact::mask_credentials(s))
}

/// Clips `s` to `max` characters, never inside an `&...;` entity, ending with `…`.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    if let Some(amp) = out.rfind('&') {
        if !out[amp..].contains(';') {
            out.truncate(amp);
        }
    }
    out.push('…');
    out
}

/// "42s", "15m", "3m 12s", "1h 5m", "2d 3h".
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 if s % 60 == 0 => format!("{}m", s / 60),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86399 if (s % 3600) / 60 == 0 => format!("{}h", s / 3600),
        3600..=86399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ if (s % 86400) / 3600 == 0 => format!("{}d", s / 86400),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// A time left, rounded to the minute beyond two minutes: "15m", not "14m 59s".
pub fn countdown(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    let secs = if ms >= 120_000 { (ms + 30_000) / 60_000 * 60 } else { (ms + 500) / 1000 };
    human(Duration::from_secs(secs))
}

/// Slack's date formatting: shown in each reader's time zone, with a fallback.
fn slack_date(t: Timestamp, format: &str) -> String {
    format!("<!date^{}^{}|{}>", t.0 / 1000, format, t.rfc3339_seconds())
}

/// How a decider is named: `<@U…>` when their Slack user is known, else `@id`.
pub fn mention(who: &str, slack_users: &BTreeMap<String, String>) -> String {
    if let Some(u) = who.strip_prefix("slack:") {
        if is_slack_id(u) {
            return format!("<@{u}>");
        }
    }
    match slack_users.get(who) {
        Some(u) if is_slack_id(u) => format!("<@{u}>"),
        _ => format!("@{}", escape(who)),
    }
}

/// Slack ids are upper-case letters and digits (`U0ALICE`, `S0FINANCE`, `C0FIN`).
pub fn is_slack_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

fn badge(a: &Approval) -> &'static str {
    match a.status {
        Status::Pending if !a.escalated_to.is_empty() => "● PENDING · ESCALATED",
        Status::Pending => "● PENDING",
        Status::Approved => "✅ APPROVED",
        Status::Rejected => "❌ REJECTED",
        Status::Expired => "⌛ EXPIRED",
        Status::Abandoned => "⏹ WITHDRAWN",
        Status::Interrupted => "⏹ INTERRUPTED",
    }
}

/// The outcome line: who decided and how long it took, or what ended it.
pub fn outcome(a: &Approval, slack_users: &BTreeMap<String, String>) -> Option<String> {
    // The mention renders as the person's Slack name; the approver id beside it is
    // the one the audit log and the admin API use.
    let by = match a.decided_by.as_deref() {
        Some(w) => match mention(w, slack_users) {
            m if m.starts_with("<@") && !w.starts_with("slack:") => format!("{m} ({})", escape(w)),
            m => m,
        },
        None => "someone".into(),
    };
    let took = a.decided_at.map(|t| human(t.since(a.created_at))).unwrap_or_default();
    let escalated = (!a.escalated_to.is_empty()).then(|| escape(&a.escalated_to.join(", ")));
    match a.status {
        Status::Pending => escalated.map(|r| format!("⏫ Escalated to {r}")),
        Status::Approved => Some(format!("✅ Approved by {by} in {took}")),
        Status::Rejected => Some(match &a.reason {
            Some(r) => format!("❌ Rejected by {by}: {}", clip(&shown(r), 1500)),
            None => format!("❌ Rejected by {by}"),
        }),
        Status::Expired => Some(format!("⌛ Expired after {took} without a decision")),
        Status::Abandoned => Some("⏹ Withdrawn: the agent stopped waiting".into()),
        Status::Interrupted => Some("⏹ Interrupted: the proxy shut down while it was pending".into()),
    }
}

fn mrkdwn(text: String) -> Value {
    json!({"type": "mrkdwn", "text": clip(&text, SECTION_TEXT_MAX)})
}

fn section(block_id: &str, text: String) -> Value {
    json!({"type": "section", "block_id": block_id, "text": mrkdwn(text)})
}

fn context(block_id: &str, parts: Vec<String>) -> Value {
    let elements: Vec<Value> = parts.into_iter().take(10).map(mrkdwn).collect();
    json!({"type": "context", "block_id": block_id, "elements": elements})
}

fn plain(text: &str, max: usize) -> Value {
    json!({"type": "plain_text", "text": clip(text, max), "emoji": true})
}

fn summary_value(key: &str, v: &Value) -> String {
    if redact::is_sensitive_field(key) {
        return redact::REDACTED.to_string();
    }
    let raw = match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    };
    shown(&raw)
}

/// The approval card. Pending cards carry the Approve and Reject buttons; decided,
/// expired and ended ones show the outcome instead.
pub fn render(a: &Approval, ctx: &CardContext<'_>) -> Card {
    let mut blocks = Vec::new();
    if let Some(e) = &ctx.escalation {
        blocks.push(section(
            "ap_escalation",
            format!(
                "⏫ {} escalated to *{}*: waiting since {}",
                e.mention,
                escape(&e.route),
                slack_date(a.created_at, "{date_short_pretty} {time}")
            ),
        ));
    }
    let action = shown(&a.action);
    blocks.push(section("ap_head", format!("*{}* · req `{}`    *{}*", escape(&a.agent), escape(&a.id), badge(a))));
    let mut what =
        format!("*{}* requested by an autonomous agent · {}", clip(&action, 500), slack_date(a.created_at, "{ago}"));
    if let Some(t) = a.target.as_deref().filter(|t| *t != a.action) {
        what.push_str(&format!("\n`{}`", clip(&shown(t), 500)));
    }
    blocks.push(section("ap_action", what));
    let fields: Vec<Value> = a
        .summary
        .iter()
        .take(MAX_SUMMARY_FIELDS)
        .map(|(k, v)| mrkdwn(clip(&format!("*{}*\n{}", escape(k), summary_value(k, v)), FIELD_TEXT_MAX)))
        .collect();
    for (i, chunk) in fields.chunks(FIELDS_PER_SECTION).enumerate() {
        blocks.push(json!({"type": "section", "block_id": format!("ap_summary_{i}"), "fields": chunk}));
    }
    if let Some(j) = a.justification.as_deref().filter(|j| !j.trim().is_empty()) {
        blocks.push(section("ap_reason", format!("*reason* “{}” _(model-inferred)_", clip(&shown(j), 2000))));
    }
    blocks.push(section("ap_risk", format!("*Risk: {}* · {}", a.risk.as_str(), clip(&shown(&a.risk_reason), 2000))));
    let mut policy =
        format!("policy {} → {}", clip(&escape(&a.rule_ids.join(", ")), 500), escape(&a.routes.join(", ")));
    if a.status == Status::Pending {
        match (a.escalated_to.is_empty(), a.escalate_at) {
            (true, Some(at)) => policy.push_str(&format!(
                " · escalates in {} ({})",
                countdown(at.since(ctx.now)),
                slack_date(at, "{date_short_pretty} {time}")
            )),
            (false, _) => policy.push_str(&format!(" · escalated to {}", escape(&a.escalated_to.join(", ")))),
            (true, None) => {}
        }
        policy.push_str(&format!(
            " · expires in {} ({})",
            countdown(a.expires_at.since(ctx.now)),
            slack_date(a.expires_at, "{date_short_pretty} {time}")
        ));
    }
    blocks.push(context("ap_policy", vec![policy]));
    let link = format!("{}/ui/approvals/{}", ctx.public_url, a.id);
    blocks.push(context(
        "ap_meta",
        vec![format!(
            "approval `{}` · body sha256 `{}` · <{}|Open in ApprovalPlane>",
            escape(&a.id),
            escape(&a.body_sha256),
            escape(&link)
        )],
    ));
    if a.quorum > 1 {
        let who: Vec<String> = a.approvals.iter().map(|w| mention(w, ctx.slack_users)).collect();
        let mut q = format!("*Approvals {}/{}*", a.approvals.len(), a.quorum);
        if !who.is_empty() {
            q.push_str(&format!(": {}", who.join(", ")));
        }
        blocks.push(context("ap_quorum", vec![q]));
    }
    if let Some(o) = outcome(a, ctx.slack_users) {
        blocks.push(section("ap_outcome", o));
    }
    if a.status == Status::Pending {
        blocks.push(buttons(a, &action));
    }
    let mut text = match a.status {
        Status::Pending => format!(
            "{} requests {} ({} risk) · approval {} on {}",
            escape(&a.agent),
            action,
            a.risk.as_str(),
            escape(&a.id),
            escape(&a.route)
        ),
        _ => format!(
            "{} · {} requested by {} · approval {}",
            outcome(a, ctx.slack_users).unwrap_or_default(),
            action,
            escape(&a.agent),
            escape(&a.id)
        ),
    };
    if let Some(e) = &ctx.escalation {
        text = format!("{} escalated: {text}", e.mention);
    }
    Card { text: clip(&text, FALLBACK_TEXT_MAX), blocks }
}

fn buttons(a: &Approval, action: &str) -> Value {
    let approve_label =
        if a.quorum > 1 { format!("Approve ({}/{})", a.approvals.len() + 1, a.quorum) } else { "Approve".to_string() };
    json!({
        "type": "actions",
        "block_id": "ap_actions",
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE,
                "text": plain(&approve_label, 75),
                "style": "primary",
                "value": a.id,
                "confirm": {
                    "title": plain("Approve this action?", 100),
                    "text": {"type": "mrkdwn", "text": clip(&format!("*{}* by *{}* will go ahead.", action, escape(&a.agent)), 300)},
                    "confirm": plain("Approve", 30),
                    "deny": plain("Cancel", 30),
                    "style": "primary",
                },
            },
            {
                "type": "button",
                "action_id": REJECT,
                "text": plain("Reject", 75),
                "style": "danger",
                "value": a.id,
                "confirm": {
                    "title": plain("Reject this action?", 100),
                    "text": {"type": "mrkdwn", "text": clip(&format!("*{}* will be refused. You will be asked for a reason.", action), 300)},
                    "confirm": plain("Reject", 30),
                    "deny": plain("Cancel", 30),
                    "style": "danger",
                },
            },
        ],
    })
}

/// What the reject modal carries back in `private_metadata`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModalMeta {
    pub approval_id: String,
    /// Where the button was clicked, for ephemeral replies.
    #[serde(default)]
    pub channel: Option<String>,
}

/// The modal that asks for a rejection reason.
pub fn reject_modal(a: &Approval, meta: &ModalMeta) -> Value {
    json!({
        "type": "modal",
        "callback_id": REJECT_MODAL,
        "private_metadata": serde_json::to_string(meta).unwrap_or_default(),
        "title": plain("Reject request", 24),
        "submit": plain("Reject", 24),
        "close": plain("Cancel", 24),
        "blocks": [
            section("ap_modal_what", format!(
                "*{}* requested by *{}* · req `{}`",
                clip(&shown(&a.action), 500),
                escape(&a.agent),
                escape(&a.id)
            )),
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": plain("Why are you rejecting it?", 2000),
                "hint": plain("The agent sees this reason, and it is recorded in the audit log.", 2000),
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_ACTION,
                    "multiline": true,
                    "min_length": 1,
                    "max_length": 2000,
                },
            },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::{Entrance, Risk};

    fn approval() -> Approval {
        let created = Timestamp(1_795_466_193_000);
        Approval {
            id: "apr_8f2c0000000000000001".into(),
            status: Status::Pending,
            route: "finance-oncall".into(),
            routes: vec!["finance-oncall".into()],
            agent: "support-agent".into(),
            action: "issue_refund".into(),
            risk: Risk::High,
            summary: serde_json::from_value(json!({"customer": "cus_4193_amaya", "amount": "$2,400.00"})).unwrap(),
            justification: Some("duplicate charge".into()),
            rule_ids: vec!["stripe.refund.large".into()],
            body_sha256: "ab".repeat(32),
            created_at: created,
            decided_by: None,
            decided_at: None,
            reason: None,
            approvals: vec![],
            quorum: 1,
            kind: Entrance::Http,
            upstream: Some("stripe".into()),
            target: Some("POST /stripe/v1/refunds".into()),
            risk_reason: "amount over your $500 auto-approve threshold".into(),
            policy_bundle: "b".into(),
            expires_at: created.plus(Duration::from_secs(3600)),
            escalate_at: Some(created.plus(Duration::from_secs(900))),
            escalated_to: vec![],
            decided_via: None,
        }
    }

    fn ctx(users: &BTreeMap<String, String>) -> CardContext<'_> {
        CardContext {
            now: Timestamp(1_795_466_193_000),
            public_url: "https://approvals.example.com",
            slack_users: users,
            escalation: None,
        }
    }

    fn all_text(c: &Card) -> String {
        serde_json::to_string(&c.blocks).unwrap()
    }

    #[test]
    fn the_landing_page_card() {
        let users = BTreeMap::new();
        let c = render(&approval(), &ctx(&users));
        let t = all_text(&c);
        for want in [
            "*support-agent* · req `apr_8f2c0000000000000001`",
            "● PENDING",
            "*issue_refund* requested by an autonomous agent",
            "{ago}",
            "*customer*\\ncus_4193_amaya",
            "*amount*\\n$2,400.00",
            "“duplicate charge” _(model-inferred)_",
            "*Risk: high* · amount over your $500 auto-approve threshold",
            "policy stripe.refund.large → finance-oncall · escalates in 15m",
            "body sha256 `abababab",
            "<https://approvals.example.com/ui/approvals/apr_8f2c0000000000000001|Open in ApprovalPlane>",
        ] {
            assert!(t.contains(want), "missing {want:?} in {t}");
        }
        let actions = c.blocks.last().unwrap();
        assert_eq!(actions["type"], "actions");
        let els = actions["elements"].as_array().unwrap();
        assert_eq!((els[0]["action_id"].as_str(), els[1]["action_id"].as_str()), (Some(APPROVE), Some(REJECT)));
        for e in els {
            assert_eq!(e["value"], "apr_8f2c0000000000000001");
            assert!(e["confirm"]["title"]["text"].is_string() && e["confirm"]["confirm"]["text"].is_string());
        }
        assert!(c.text.contains("support-agent requests issue_refund (high risk)"), "{}", c.text);
    }

    #[test]
    fn outcomes_replace_the_buttons() {
        let users = BTreeMap::from([("alice".to_string(), "U0ALICE".to_string())]);
        type Change = Box<dyn Fn(&mut Approval)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|a| {
                    a.status = Status::Approved;
                    a.decided_by = Some("alice".into());
                    a.decided_at = Some(a.created_at.plus(Duration::from_secs(42)));
                }),
                "✅ Approved by <@U0ALICE> (alice) in 42s",
            ),
            (
                Box::new(|a| {
                    a.status = Status::Rejected;
                    a.decided_by = Some("bob".into());
                    a.decided_at = Some(a.created_at.plus(Duration::from_secs(70)));
                    a.reason = Some("not a <duplicate>".into());
                }),
                "❌ Rejected by @bob: not a &lt;duplicate&gt;",
            ),
            (
                Box::new(|a| {
                    a.status = Status::Approved;
                    a.decided_by = Some("slack:U0DAVE".into());
                    a.decided_at = Some(a.created_at.plus(Duration::from_secs(3720)));
                }),
                "✅ Approved by <@U0DAVE> in 1h 2m",
            ),
            (
                Box::new(|a| {
                    a.status = Status::Expired;
                    a.decided_at = Some(a.created_at.plus(Duration::from_secs(3600)));
                }),
                "⌛ Expired after 1h without a decision",
            ),
            (Box::new(|a| a.escalated_to = vec!["finance-leads".into()]), "⏫ Escalated to finance-leads"),
        ];
        for (change, want) in cases {
            let mut a = approval();
            change(&mut a);
            let c = render(&a, &ctx(&users));
            let t = all_text(&c);
            assert!(t.contains(want), "missing {want:?} in {t}");
            let has_buttons = c.blocks.iter().any(|b| b["type"] == "actions");
            assert_eq!(has_buttons, a.status == Status::Pending, "{want}");
        }
    }

    #[test]
    fn quorum_progress_is_shown() {
        let users = BTreeMap::from([("alice".to_string(), "U0ALICE".to_string())]);
        let mut a = approval();
        a.quorum = 2;
        a.approvals = vec!["alice".into()];
        let t = all_text(&render(&a, &ctx(&users)));
        assert!(t.contains("*Approvals 1/2*: <@U0ALICE>"), "{t}");
        assert!(t.contains("Approve (2/2)"), "{t}");
    }

    #[test]
    fn agent_text_cannot_mention_link_or_leak() {
        let users = BTreeMap::new();
        let mut a = approval();
        a.justification = Some("<!channel> see <https://evil.example|here> Bearer abcdefghijklmnop".into());
        a.summary.insert("api_key".into(), json!("sk_live_123456789012345"));
        a.summary.insert("note".into(), json!("key sk_live_abcdefghijklmnop & more"));
        a.action = "<@U0ADMIN>".into();
        let c = render(&a, &ctx(&users));
        let t = all_text(&c) + &c.text;
        for bad in ["<!channel>", "<https://evil", "abcdefghijklmnop", "sk_live_", "<@U0ADMIN>"] {
            assert!(!t.contains(bad), "{bad:?} leaked: {t}");
        }
        assert!(t.contains("&lt;!channel&gt;"), "{t}");
        assert!(t.contains("*api_key*\\n[redacted]"), "{t}");
    }

    #[test]
    fn limits_are_respected() {
        let users = BTreeMap::new();
        let mut a = approval();
        a.justification = Some("<".repeat(5000));
        for i in 0..40 {
            a.summary.insert(format!("k{i}"), json!("v".repeat(3000)));
        }
        let c = render(&a, &ctx(&users));
        assert!(c.blocks.len() <= 50);
        for b in &c.blocks {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(t.chars().count() <= SECTION_TEXT_MAX);
                assert!(!t.ends_with("&l…") && !t.contains("&…"), "entity cut: {}", &t[t.len() - 10..]);
            }
            if let Some(f) = b["fields"].as_array() {
                assert!(f.len() <= FIELDS_PER_SECTION);
                assert!(f.iter().all(|x| x["text"].as_str().unwrap().chars().count() <= FIELD_TEXT_MAX));
            }
        }
    }

    #[test]
    fn escalation_card_mentions_the_group() {
        let users = BTreeMap::new();
        let mut a = approval();
        a.escalated_to = vec!["finance-leads".into()];
        let mut c = ctx(&users);
        c.escalation = Some(Escalation { route: "finance-leads".into(), mention: "<!subteam^S0LEADS>".into() });
        let card = render(&a, &c);
        assert_eq!(card.blocks[0]["block_id"], "ap_escalation");
        assert!(all_text(&card).contains("<!subteam^S0LEADS> escalated to *finance-leads*"));
        assert!(card.text.starts_with("<!subteam^S0LEADS> escalated"));
    }

    #[test]
    fn human_durations() {
        for (s, want) in [(0, "0s"), (42, "42s"), (900, "15m"), (192, "3m 12s"), (3600, "1h"), (3900, "1h 5m")] {
            assert_eq!(human(Duration::from_secs(s)), want);
        }
        assert_eq!(human(Duration::from_secs(2 * 86400 + 3 * 3600)), "2d 3h");
        assert_eq!(countdown(Duration::from_millis(899_990)), "15m");
        assert_eq!(countdown(Duration::from_millis(3_599_000)), "1h");
        assert_eq!(countdown(Duration::from_millis(41_600)), "42s");
    }

    #[test]
    fn the_reject_modal_carries_the_approval() {
        let meta = ModalMeta { approval_id: "apr_8f2c0000000000000001".into(), channel: Some("C0FIN".into()) };
        let m = reject_modal(&approval(), &meta);
        assert_eq!(m["callback_id"], REJECT_MODAL);
        let back: ModalMeta = serde_json::from_str(m["private_metadata"].as_str().unwrap()).unwrap();
        assert_eq!(back, meta);
        assert_eq!(m["blocks"][1]["element"]["action_id"], REASON_ACTION);
        assert!(m["title"]["text"].as_str().unwrap().chars().count() <= 24);
    }
}
