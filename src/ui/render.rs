//! HTML for the web page: plain functions from values to escaped strings.
//!
//! Every value that comes from outside (agent ids, summaries, justifications,
//! reasons, audit fields) goes through [`esc`]. Pages load one stylesheet and one
//! script from `/ui/assets/`, so the content security policy allows no inline
//! script or style.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::approval::{Approval, Status};
use crate::clock::Timestamp;

/// Escapes text for HTML element content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value.
pub fn url_enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `3m 12s`, `2h 5m`, `4d 2h`.
pub fn dur(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// What a signed-in page shows in its header.
pub struct Chrome<'a> {
    pub approver: &'a str,
    pub csrf: &'a str,
    /// `pending`, `history` or `detail`: which nav item is current.
    pub page: &'a str,
}

/// A whole page. `main` is the live region that updates replace.
pub fn page(title: &str, chrome: Option<&Chrome<'_>>, body_attrs: &str, main: &str, refresh: bool) -> String {
    let mut h = String::with_capacity(main.len() + 2048);
    h.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str("<meta name=\"referrer\" content=\"no-referrer\">\n");
    h.push_str("<meta name=\"color-scheme\" content=\"light dark\">\n");
    if refresh {
        // Arrived from another site: SameSite=Strict cookies were withheld. A
        // refresh from this page is same-site, so the session cookie is sent.
        h.push_str("<meta http-equiv=\"refresh\" content=\"0\">\n");
    }
    let _ = writeln!(h, "<title>{} · ApprovalPlane</title>", esc(title));
    h.push_str("<link rel=\"stylesheet\" href=\"/ui/assets/app.css\">\n");
    h.push_str("<script src=\"/ui/assets/app.js\" defer></script>\n</head>\n");
    let _ = writeln!(h, "<body{body_attrs}>");
    h.push_str("<header class=\"top\">\n<a class=\"brand\" href=\"/ui\">ApprovalPlane</a>\n");
    if let Some(c) = chrome {
        let cur = |p: &str| if c.page == p { " aria-current=\"page\"" } else { "" };
        let _ = write!(
            h,
            "<nav><a href=\"/ui\"{}>Pending</a><a href=\"/ui/history\"{}>History</a></nav>\n\
             <div class=\"who\"><span class=\"live-dot\" id=\"live-status\" title=\"live updates\"></span>\
             <span class=\"approver\">{}</span>\
             <form method=\"post\" action=\"/ui/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button class=\"link\" type=\"submit\">Sign out</button></form></div>\n",
            cur("pending"),
            cur("history"),
            esc(c.approver),
            esc(c.csrf)
        );
    }
    h.push_str("</header>\n<main id=\"live\">\n");
    h.push_str(main);
    h.push_str("\n</main>\n</body>\n</html>\n");
    h
}

/// The body attributes of a signed-in page.
pub fn live_attrs(page: &str, approval: Option<&str>) -> String {
    let mut s = format!(" data-page=\"{}\" data-live=\"1\"", esc(page));
    if let Some(id) = approval {
        let _ = write!(s, " data-approval=\"{}\"", esc(id));
    }
    s
}

/// The sign-in page: an approver token, posted with the pre-session CSRF token.
pub fn signin(csrf: &str, next: &str, error: Option<&str>) -> String {
    let mut m = String::new();
    m.push_str("<section class=\"panel signin\">\n<h1>Sign in</h1>\n");
    if let Some(e) = error {
        let _ = writeln!(m, "<p class=\"error\" role=\"alert\">{}</p>", esc(e));
    }
    m.push_str(
        "<p>Open the sign-in link from your notification, or sign in with your approver token.</p>\n\
         <form method=\"post\" action=\"/ui/login\" class=\"stack\">\n",
    );
    let _ = writeln!(m, "<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf));
    let _ = writeln!(m, "<input type=\"hidden\" name=\"next\" value=\"{}\">", esc(next));
    m.push_str(
        "<label for=\"token\">Approver token</label>\n\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required>\n\
         <button type=\"submit\" class=\"primary\">Sign in</button>\n</form>\n</section>",
    );
    m
}

/// The confirm page of a sign-in link. Opening the link changes nothing; the
/// button's POST uses it up.
pub fn link_confirm(approver: &str, token: &str, csrf: &str) -> String {
    format!(
        "<section class=\"panel signin\">\n<h1>Sign in as {a}</h1>\n\
         <p>This link signs you in once, as <strong>{a}</strong>, and opens the approval it was sent for.</p>\n\
         <form method=\"post\" action=\"/ui/link/{t}\" class=\"stack\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{c}\">\n\
         <button type=\"submit\" class=\"primary\" id=\"confirm\">Continue as {a}</button>\n</form>\n</section>",
        a = esc(approver),
        t = esc(token),
        c = esc(csrf)
    )
}

/// A page that only says something (errors, refusals).
pub fn message(title: &str, text: &str, signin_link: bool) -> String {
    let mut m = format!("<section class=\"panel\">\n<h1>{}</h1>\n<p>{}</p>\n", esc(title), esc(text));
    if signin_link {
        m.push_str("<p><a href=\"/ui\">Go to the sign-in page</a></p>\n");
    }
    m.push_str("</section>");
    m
}

fn risk_badge(a: &Approval) -> String {
    format!("<span class=\"badge risk risk-{r}\">{r}</span>", r = a.risk.as_str())
}

fn status_badge(s: Status) -> String {
    format!("<span class=\"badge status status-{s}\">{s}</span>", s = s.as_str())
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn summary(a: &Approval) -> String {
    if a.summary.is_empty() {
        return String::new();
    }
    let mut s = String::from("<dl class=\"summary\">");
    for (k, v) in &a.summary {
        let _ = write!(s, "<div><dt>{}</dt><dd>{}</dd></div>", esc(k), esc(&value_text(v)));
    }
    s.push_str("</dl>");
    s
}

fn time_since(t: Timestamp, now: Timestamp) -> String {
    format!("<time data-since=\"{}\" datetime=\"{}\">{}</time>", t.0, t.rfc3339_seconds(), dur(now.since(t)))
}

fn time_until(t: Timestamp, now: Timestamp) -> String {
    let text = if t > now { format!("in {}", dur(t.since(now))) } else { "now".to_string() };
    format!(
        "<time data-until=\"{}\" datetime=\"{}\" title=\"{}\">{}</time>",
        t.0,
        t.rfc3339_seconds(),
        t.rfc3339_seconds(),
        text
    )
}

/// The escalation line: when, and to whom, or that it happened.
fn escalation(a: &Approval, escalate_to: Option<&str>, now: Timestamp) -> String {
    if !a.escalated_to.is_empty() {
        return format!("Escalated to {}", esc(&a.escalated_to.join(", ")));
    }
    match a.escalate_at {
        Some(t) if a.status == Status::Pending => format!(
            "Escalates{} {}",
            escalate_to.map(|r| format!(" to {}", esc(r))).unwrap_or_default(),
            time_until(t, now)
        ),
        _ => String::new(),
    }
}

/// One approval in the pending list.
pub fn pending_card(a: &Approval, escalate_to: Option<&str>, now: Timestamp) -> String {
    let mut c = String::new();
    let _ = write!(
        c,
        "<li class=\"card risk-edge-{risk}\" data-id=\"{id}\">\n<a class=\"card-link\" href=\"/ui/approvals/{id}\">\n\
         <div class=\"card-head\"><span class=\"action\">{action}</span>{badge}</div>\n\
         <div class=\"meta\"><span class=\"agent\">{agent}</span> · <span class=\"route\">{route}</span></div>\n\
         <p class=\"risk-reason\">{reason}</p>\n{summary}\n{justification}",
        risk = a.risk.as_str(),
        id = esc(&a.id),
        action = esc(&a.action),
        badge = risk_badge(a),
        agent = esc(&a.agent),
        route = esc(&a.routes.join(", ")),
        reason = esc(&a.risk_reason),
        summary = summary(a),
        // Before the decision form: the approver reads the agent's why first.
        justification = a
            .justification
            .as_ref()
            .map(|j| format!(
                "<div class=\"justification\"><h3>Agent's justification <small>(model-inferred, not verified)</small></h3>\
                 <blockquote>{}</blockquote></div>\n",
                esc(j)
            ))
            .unwrap_or_default(),
    );
    let esc_line = escalation(a, escalate_to, now);
    let _ = write!(
        c,
        "<div class=\"times\"><span>Waiting {}</span>{}<span>Expires {}</span></div>\n</a>\n</li>",
        time_since(a.created_at, now),
        if esc_line.is_empty() { String::new() } else { format!("<span>{esc_line}</span>") },
        time_until(a.expires_at, now)
    );
    c
}

/// The pending view's live region.
pub fn pending(cards: &[String]) -> String {
    let mut m = format!(
        "<div class=\"view-head\"><h1>Pending</h1><span class=\"count\" id=\"pending-count\">{}</span></div>\n",
        cards.len()
    );
    if cards.is_empty() {
        m.push_str("<p class=\"empty\">Nothing is waiting for you.</p>");
        return m;
    }
    m.push_str("<ul class=\"cards\" id=\"pending-list\">\n");
    for c in cards {
        m.push_str(c);
        m.push('\n');
    }
    m.push_str("</ul>");
    m
}

/// One record of an approval's audit trail, reduced to what a person reads.
#[derive(Debug, Clone)]
pub struct TrailItem {
    pub ts: String,
    pub kind: String,
    pub fields: Vec<(String, String)>,
}

/// What the detail view shows beside the approval.
pub struct Detail<'a> {
    pub approval: &'a Approval,
    pub escalate_to: Option<&'a str>,
    pub trail: &'a [TrailItem],
    /// A problem reading the trail, or tampering found while verifying it.
    pub trail_note: Option<String>,
    /// The agent's own payload (`request_approval` calls), as recorded.
    pub payload: Option<String>,
    pub csrf: &'a str,
    pub may_decide: bool,
    pub already_voted: bool,
    pub error: Option<&'a str>,
    pub now: Timestamp,
}

fn row(dl: &mut String, k: &str, v_html: &str) {
    let _ = write!(dl, "<div><dt>{k}</dt><dd>{v_html}</dd></div>");
}

/// The detail view's live region.
pub fn detail(d: &Detail<'_>) -> String {
    let a = d.approval;
    let now = d.now;
    let mut m = String::new();
    let _ = write!(
        m,
        "<article class=\"detail\" data-id=\"{id}\" data-status=\"{st}\">\n<p class=\"back\"><a href=\"/ui\">← Pending</a></p>\n\
         <div class=\"card-head\"><h1 class=\"action\">{action}</h1>{risk}{status}</div>\n\
         <div class=\"meta\"><span class=\"agent\">{agent}</span> · <span class=\"route\">{route}</span> · <code>{id}</code></div>\n\
         <p class=\"risk-reason\">{reason}</p>\n{summary}\n",
        id = esc(&a.id),
        st = a.status.as_str(),
        action = esc(&a.action),
        risk = risk_badge(a),
        status = status_badge(a.status),
        agent = esc(&a.agent),
        route = esc(&a.routes.join(", ")),
        reason = esc(&a.risk_reason),
        summary = summary(a),
    );
    if let Some(e) = d.error {
        let _ = writeln!(m, "<p class=\"error\" role=\"alert\" id=\"decision-error\">{}</p>", esc(e));
    }
    if a.status == Status::Pending {
        let esc_line = escalation(a, d.escalate_to, now);
        let _ = writeln!(
            m,
            "<p class=\"times\"><span>Waiting {}</span>{}<span>Expires {}</span></p>",
            time_since(a.created_at, now),
            if esc_line.is_empty() { String::new() } else { format!("<span>{esc_line}</span>") },
            time_until(a.expires_at, now)
        );
        if a.quorum > 1 {
            let _ = writeln!(
                m,
                "<p class=\"quorum\">Needs {} approvals; so far: {}</p>",
                a.quorum,
                if a.approvals.is_empty() { "none".to_string() } else { esc(&a.approvals.join(", ")) }
            );
        }
        if d.may_decide {
            let _ = write!(
                m,
                "<form method=\"post\" action=\"/ui/approvals/{id}/decision\" class=\"decide stack\" id=\"decide\">\n\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
                 <label for=\"reason\">Reason <small>(required to reject)</small></label>\n\
                 <textarea id=\"reason\" name=\"reason\" rows=\"3\" maxlength=\"2000\"></textarea>\n\
                 <div class=\"buttons\">\
                 <button type=\"submit\" name=\"decision\" value=\"reject\" class=\"reject\" id=\"reject\">Reject</button>\
                 <button type=\"submit\" name=\"decision\" value=\"approve\" class=\"approve\" id=\"approve\">{approve}</button>\
                 </div>\n</form>\n",
                id = esc(&a.id),
                csrf = esc(d.csrf),
                approve = if d.already_voted { "Approved by you" } else { "Approve" },
            );
        } else {
            m.push_str("<p class=\"note\">You may see this approval but not decide it.</p>\n");
        }
    } else {
        let mut s = format!("<section class=\"outcome outcome-{}\" id=\"outcome\"><p>", a.status.as_str());
        match (&a.decided_by, a.decided_at) {
            (Some(by), Some(at)) => {
                let _ = write!(
                    s,
                    "<strong>{}</strong> by <strong>{}</strong>{} at <time datetime=\"{}\">{}</time>",
                    capitalised(a.status.as_str()),
                    esc(by),
                    a.decided_via.map(|c| format!(" via {}", c.as_str())).unwrap_or_default(),
                    at.rfc3339_seconds(),
                    at.rfc3339_seconds()
                );
            }
            _ => {
                let _ = write!(s, "<strong>{}</strong>", capitalised(a.status.as_str()));
            }
        }
        s.push_str("</p>");
        if let Some(r) = &a.reason {
            let _ = write!(s, "<blockquote class=\"reason\">{}</blockquote>", esc(r));
        }
        s.push_str("</section>\n");
        m.push_str(&s);
    }

    // The request, as much as may be shown: nothing here is a credential.
    m.push_str("<section><h2>Request</h2><dl class=\"facts\">");
    row(&mut m, "Agent", &esc(&a.agent));
    row(&mut m, "Entrance", a.kind.as_str());
    if let Some(t) = &a.target {
        row(&mut m, "Target", &format!("<code>{}</code>", esc(t)));
    }
    if let Some(u) = &a.upstream {
        row(&mut m, "Upstream", &esc(u));
    }
    row(&mut m, "Body SHA-256", &format!("<code class=\"digest\">{}</code>", esc(&a.body_sha256)));
    row(&mut m, "Requested", &format!("<time datetime=\"{0}\">{0}</time>", a.created_at.rfc3339_seconds()));
    m.push_str("</dl>");
    if let Some(p) = &d.payload {
        let _ = write!(m, "<h3>Payload</h3><pre class=\"payload\">{}</pre>", esc(p));
    }
    m.push_str("</section>\n");

    m.push_str("<section><h2>Policy</h2><dl class=\"facts\">");
    let rules: String = a.rule_ids.iter().map(|r| format!("<li><code>{}</code></li>", esc(r))).collect();
    row(&mut m, "Matched rules", &format!("<ul class=\"rules\">{rules}</ul>"));
    row(&mut m, "Risk", &format!("{} {}", risk_badge(a), esc(&a.risk_reason)));
    row(&mut m, "Routes", &esc(&a.routes.join(", ")));
    if !a.escalated_to.is_empty() {
        row(&mut m, "Escalated to", &esc(&a.escalated_to.join(", ")));
    }
    row(&mut m, "Quorum", &format!("{} (approved so far: {})", a.quorum, a.approvals.len()));
    row(&mut m, "Policy bundle", &format!("<code class=\"digest\">{}</code>", esc(&a.policy_bundle)));
    m.push_str("</dl></section>\n");

    m.push_str("<section><h2>Audit trail</h2>");
    if let Some(n) = &d.trail_note {
        let _ = write!(m, "<p class=\"note\">{}</p>", esc(n));
    }
    if d.trail.is_empty() {
        m.push_str("<p class=\"empty\">No records found.</p>");
    } else {
        m.push_str("<ol class=\"trail\" id=\"trail\">");
        for t in d.trail {
            let _ = write!(
                m,
                "<li><time datetime=\"{ts}\">{ts}</time> <strong>{kind}</strong>",
                ts = esc(&t.ts),
                kind = esc(&t.kind)
            );
            if !t.fields.is_empty() {
                m.push_str("<span class=\"fields\">");
                for (k, v) in &t.fields {
                    let _ = write!(m, " <span class=\"field\">{}: {}</span>", esc(k), esc(v));
                }
                m.push_str("</span>");
            }
            m.push_str("</li>");
        }
        m.push_str("</ol>");
    }
    m.push_str("</section>\n</article>");
    m
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The filters of the history view.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub status: Option<Status>,
    pub route: Option<String>,
    pub agent: Option<String>,
}

const STATUSES: [Status; 6] =
    [Status::Pending, Status::Approved, Status::Rejected, Status::Expired, Status::Abandoned, Status::Interrupted];

fn select(name: &str, label: &str, options: &[String], current: Option<&str>) -> String {
    let mut s = format!(
        "<label>{label}<select name=\"{name}\"><option value=\"\">any</option>",
        label = esc(label),
        name = esc(name)
    );
    for o in options {
        let sel = if current == Some(o.as_str()) { " selected" } else { "" };
        let _ = write!(s, "<option value=\"{o}\"{sel}>{o}</option>", o = esc(o));
    }
    s.push_str("</select></label>");
    s
}

/// The history view's live region: filters, then the approvals, newest first.
pub fn history(
    rows: &[Approval],
    f: &Filters,
    routes: &[String],
    agents: &[String],
    truncated: bool,
    now: Timestamp,
) -> String {
    let mut m = String::from("<div class=\"view-head\"><h1>History</h1></div>\n");
    m.push_str("<form method=\"get\" action=\"/ui/history\" class=\"filters\" id=\"filters\">");
    let statuses: Vec<String> = STATUSES.iter().map(|s| s.as_str().to_string()).collect();
    m.push_str(&select("status", "Status", &statuses, f.status.map(Status::as_str)));
    m.push_str(&select("route", "Route", routes, f.route.as_deref()));
    m.push_str(&select("agent", "Agent", agents, f.agent.as_deref()));
    m.push_str("<button type=\"submit\">Filter</button></form>\n");
    if rows.is_empty() {
        m.push_str("<p class=\"empty\">No approvals match.</p>");
        return m;
    }
    m.push_str("<ul class=\"history\" id=\"history-list\">");
    for a in rows {
        let when = a.decided_at.unwrap_or(a.created_at);
        let _ = write!(
            m,
            "<li data-id=\"{id}\"><a href=\"/ui/approvals/{id}\">\
             <div class=\"card-head\"><span class=\"action\">{action}</span>{status}{risk}</div>\
             <div class=\"meta\"><span class=\"agent\">{agent}</span> · <span class=\"route\">{route}</span> · \
             <time datetime=\"{ts}\" title=\"{ts}\">{ago} ago</time>{by}</div>{reason}</a></li>",
            id = esc(&a.id),
            action = esc(&a.action),
            status = status_badge(a.status),
            risk = risk_badge(a),
            agent = esc(&a.agent),
            route = esc(&a.routes.join(", ")),
            ts = when.rfc3339_seconds(),
            ago = dur(now.since(when)),
            by = a.decided_by.as_ref().map(|b| format!(" · by {}", esc(b))).unwrap_or_default(),
            reason = a.reason.as_ref().map(|r| format!("<p class=\"reason\">{}</p>", esc(r))).unwrap_or_default(),
        );
    }
    m.push_str("</ul>");
    if truncated {
        m.push_str("<p class=\"note\">Showing the newest 200; narrow the filters to see older ones.</p>");
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_attributes() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(url_enc("a b/c&d"), "a%20b%2Fc%26d");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(dur(Duration::from_secs(5)), "5s");
        assert_eq!(dur(Duration::from_secs(192)), "3m 12s");
        assert_eq!(dur(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(dur(Duration::from_secs(86_400 * 2 + 3600)), "2d 1h");
    }

    #[test]
    fn every_page_has_the_viewport_meta() {
        let p = page("Sign in", None, "", &signin("t", "/ui", None), false);
        assert!(p.contains("<meta name=\"viewport\""));
        assert!(!p.contains("http-equiv=\"refresh\""));
        assert!(page("x", None, "", "", true).contains("http-equiv=\"refresh\""));
    }
}
