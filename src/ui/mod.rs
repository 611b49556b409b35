//! The approver web page, `/ui` on the control listener: pending approvals, one
//! approval in detail (with its audit trail) where Approve and Reject sit, and the
//! history of decisions with filters. Server-rendered HTML with a little script,
//! live over server-sent events; the assets are compiled into the binary.
//!
//! Owns sign-in (approver token or a signed single-use link, see [`auth`]), the
//! session cookie, CSRF checks and the live feed ([`feed`]). It does not own who
//! may decide: every decision goes through [`Gate::decide`], which reads the route
//! approver lists at that moment, and every view shows only what
//! [`crate::gate::Live::may_see`] allows.
//!
//! Routes (all under `/ui`): `GET /` pending, `GET /approvals/{id}` detail,
//! `POST /approvals/{id}/decision`, `GET /history`, `GET /events` (SSE),
//! `POST /login`, `POST /logout`, `GET|POST /link/{token}`, `GET /assets/*`.

pub mod auth;
pub mod feed;
pub mod render;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION,
    REFERRER_POLICY, SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::approval::{Approval, Channel, Status, Verdict};
use crate::gate::{token_digest, DecideError, Gate, Live};
use crate::respond::{self, Body};
use crate::store::{ListQuery, StoreError};

pub use auth::{Keys, LinkError, Session, SignInLinks};
pub use feed::LiveFeed;

use render::{Chrome, Detail, Filters, TrailItem};

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

const SESSION_COOKIE: &str = "ap_session";
const PRE_COOKIE: &str = "ap_pre";
const MAX_FORM: usize = 16 * 1024;
/// Approvals scanned for one list view, at most.
const MAX_SCAN: usize = 20_000;
/// Rows in the history view.
const HISTORY_ROWS: usize = 200;
/// Audit records shown for one approval.
const MAX_TRAIL: usize = 200;
/// Header the page's script sends to get only the live region.
const PARTIAL: &str = "x-ap-partial";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The web page.
pub struct Ui {
    gate: Arc<Gate>,
    keys: Arc<Keys>,
    links: Arc<SignInLinks>,
    feed: Arc<LiveFeed>,
    audit_dir: PathBuf,
    /// Cookies get `Secure` when `server.public_url` is https.
    secure: bool,
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui").field("audit_dir", &self.audit_dir).field("secure", &self.secure).finish()
    }
}

/// What a view shows.
enum View<'a> {
    Pending,
    History,
    Detail(&'a str),
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The value of cookie `name`, from every `Cookie` header.
fn cookie(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = h.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")).then(|| rest.trim())
}

fn set_header(r: &mut Response<Body>, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(name, v);
    }
}

/// An HTML response with the page's security headers.
fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(respond::full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Sign-in links carry their token in the path: never leak it in a Referer.
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = html(StatusCode::SEE_OTHER, String::new());
    set_header(&mut r, LOCATION, to);
    r
}

fn asset(content_type: &'static str, text: &'static str) -> Response<Body> {
    let mut r = Response::new(respond::full(text));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    r.headers_mut().insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

/// Only redirect to our own pages after sign-in.
fn safe_next(next: &str) -> &str {
    let ok = (next == "/ui" || next.starts_with("/ui/") || next.starts_with("/ui?"))
        && !next.contains("//")
        && !next.contains('\\')
        && !next.starts_with("/ui/link/")
        && next.len() <= 512;
    if ok {
        next
    } else {
        "/ui"
    }
}

fn form_field(form: &Value, name: &str) -> Option<String> {
    form.get(name).and_then(Value::as_str).map(str::to_string)
}

/// What `approver` signs in with now: their token digests (in a stable order), or
/// nothing for an approver without a token (links only).
fn credential_of(live: &Live, approver: &str) -> Vec<u8> {
    let mut digests: Vec<&[u8; 32]> =
        live.approver_tokens.iter().filter(|(_, a)| *a == approver).map(|(d, _)| d).collect();
    digests.sort();
    digests.into_iter().flatten().copied().collect()
}

fn looks_like_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= 2048 && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Ui {
    pub fn new(
        gate: Arc<Gate>,
        keys: Arc<Keys>,
        links: Arc<SignInLinks>,
        feed: Arc<LiveFeed>,
        audit_dir: PathBuf,
        public_url: &str,
    ) -> Ui {
        Ui { gate, keys, links, feed, audit_dir, secure: public_url.starts_with("https://") }
    }

    /// Mints sign-in links (for notifiers that deliver to one approver).
    pub fn links(&self) -> &Arc<SignInLinks> {
        &self.links
    }

    fn cookie_attrs(&self, max_age: u64) -> String {
        format!("Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{}", if self.secure { "; Secure" } else { "" })
    }

    /// The signed-in approver, if the cookie is genuine, unexpired, the approver is
    /// still configured, and their token is still the one they signed in with.
    fn session(&self, h: &HeaderMap) -> Option<Session> {
        let c = cookie(h, SESSION_COOKIE)?;
        let s = self.keys.open_session(&c, self.gate.clock.now())?;
        let live = self.gate.live();
        if !live.approvers.contains_key(&s.approver) {
            return None;
        }
        self.keys.session_current(&s, &credential_of(&live, &s.approver)).then_some(s)
    }

    /// The pre-session cookie, and whether it must be set on the response.
    fn pre(&self, h: &HeaderMap) -> (String, bool) {
        match cookie(h, PRE_COOKIE) {
            Some(v) if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) => (v, false),
            _ => (Keys::new_pre(), true),
        }
    }

    fn with_pre(&self, mut r: Response<Body>, pre: &str, set: bool) -> Response<Body> {
        if set {
            set_header(&mut r, SET_COOKIE, &format!("{PRE_COOKIE}={pre}; {}", self.cookie_attrs(3600)));
        }
        r
    }

    /// A page for someone who is not signed in.
    fn public_page(&self, status: StatusCode, title: &str, main: &str) -> Response<Body> {
        html(status, render::page(title, None, "", main, false))
    }

    fn refusal(&self, status: StatusCode, title: &str, text: &str) -> Response<Body> {
        self.public_page(status, title, &render::message(title, text, true))
    }

    /// The sign-in page (200, as INTERFACE.md §4 asks of `GET /ui` without a session).
    fn signin_page(&self, h: &HeaderMap, status: StatusCode, next: &str, error: Option<&str>) -> Response<Body> {
        let (pre, set) = self.pre(h);
        let csrf = self.keys.csrf_for_pre(&pre);
        // Arriving from another site (a link in a chat or mail app), the browser
        // withholds SameSite=Strict cookies, so a signed-in approver would land
        // here. Reload once: the reload comes from this page, so it is same-site,
        // carries the session cookie if there is one, and is not refreshed again.
        let refresh = status == StatusCode::OK && error.is_none() && header(h, "sec-fetch-site") == Some("cross-site");
        let page = render::page("Sign in", None, "", &render::signin(&csrf, safe_next(next), error), refresh);
        self.with_pre(html(status, page), &pre, set)
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let live = self.gate.live();
        if let Some(t) = bearer(req.headers()) {
            if live.agent_tokens.contains_key(&token_digest(t)) {
                tracing::warn!(path = %req.uri().path(), "agent token refused on the web page");
                return self.refusal(StatusCode::FORBIDDEN, "Forbidden", "Agent tokens cannot use the approver page.");
            }
        }
        drop(live);
        // HEAD is answered as GET (hyper sends no body).
        let method = if req.method() == Method::HEAD { Method::GET } else { req.method().clone() };
        if method == Method::POST && header(req.headers(), "sec-fetch-site") == Some("cross-site") {
            return self.refusal(StatusCode::FORBIDDEN, "Forbidden", "Cross-site form posts are refused.");
        }
        let path = req.uri().path().to_string();
        let rest = path.strip_prefix("/ui").unwrap_or("");
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        match (&method, segs.as_slice()) {
            (&Method::GET, []) => self.view(req, View::Pending).await,
            (&Method::GET, ["history"]) => self.view(req, View::History).await,
            (&Method::GET, ["approvals", id]) => {
                let id = id.to_string();
                self.view(req, View::Detail(&id)).await
            }
            (&Method::POST, ["approvals", id, "decision"]) => {
                let id = id.to_string();
                self.decide(req, &id).await
            }
            (&Method::GET, ["events"]) => self.events(&req),
            (&Method::GET, ["assets", "app.css"]) => asset("text/css; charset=utf-8", CSS),
            (&Method::GET, ["assets", "app.js"]) => asset("text/javascript; charset=utf-8", JS),
            (&Method::POST, ["login"]) => self.login(req).await,
            (&Method::POST, ["logout"]) => self.logout(req).await,
            (&Method::GET, ["link", token]) => self.link_get(req.headers(), token),
            (&Method::POST, ["link", token]) => {
                let token = token.to_string();
                self.link_post(req, &token).await
            }
            _ => self.refusal(StatusCode::NOT_FOUND, "Not found", "There is no such page."),
        }
    }

    // -----------------------------------------------------------------
    // Views.
    // -----------------------------------------------------------------

    async fn view(&self, req: Request<Incoming>, view: View<'_>) -> Response<Body> {
        let h = req.headers();
        let partial = header(h, PARTIAL) == Some("1");
        let Some(s) = self.session(h) else {
            if partial {
                return html(StatusCode::UNAUTHORIZED, String::new());
            }
            // Back to this page after sign-in, unless it names an approval: nothing
            // about an approval, not even its id, is on a page without a session.
            let next = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/ui");
            let next = if next.contains("apr_") { "/ui" } else { next };
            return self.signin_page(h, StatusCode::OK, next, None);
        };
        let query = req.uri().query().unwrap_or("").to_string();
        let (status, title, page, approval, main) = match view {
            View::Pending => match self.pending_main(&s).await {
                Ok(m) => (StatusCode::OK, "Pending".to_string(), "pending", None, m),
                Err(e) => return self.store_down(&e),
            },
            View::History => match self.history_main(&s, &query).await {
                Ok(m) => (StatusCode::OK, "History".to_string(), "history", None, m),
                Err(e) => return self.store_down(&e),
            },
            View::Detail(id) => {
                let (status, main) = self.detail_main(&s, id, None).await;
                (status, "Approval".to_string(), "detail", Some(id), main)
            }
        };
        if partial {
            return html(status, main);
        }
        let csrf = self.keys.csrf_for_session(&s);
        let chrome = Chrome { approver: &s.approver, csrf: &csrf, page };
        html(status, render::page(&title, Some(&chrome), &render::live_attrs(page, approval), &main, false))
    }

    fn store_down(&self, e: &StoreError) -> Response<Body> {
        tracing::error!(error = %e, "store unavailable for the web page");
        let mut r = self.refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "The approval store is unavailable; retry in a moment.",
        );
        r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    }

    /// Every approval `who` may see, oldest first, optionally of one status.
    async fn visible(&self, who: &str, status: Option<Status>) -> Result<Vec<Approval>, StoreError> {
        let live = self.gate.live();
        let mut q = ListQuery { status, after: None, limit: 1000 };
        let mut out = Vec::new();
        let mut scanned = 0usize;
        loop {
            let page = self.gate.store.list(&q).await?;
            scanned += page.approvals.len();
            out.extend(page.approvals.into_iter().filter(|a| live.may_see(who, a)));
            match page.next {
                Some(n) if scanned < MAX_SCAN => q.after = Some(n),
                _ => break,
            }
        }
        Ok(out)
    }

    fn escalate_to(&self, a: &Approval) -> Option<String> {
        self.gate.live().routes.get(&a.route).and_then(|r| r.escalate_to.clone())
    }

    async fn pending_main(&self, s: &Session) -> Result<String, StoreError> {
        let now = self.gate.clock.now();
        let list = self.visible(&s.approver, Some(Status::Pending)).await?;
        let cards: Vec<String> =
            list.iter().map(|a| render::pending_card(a, self.escalate_to(a).as_deref(), now)).collect();
        Ok(render::pending(&cards))
    }

    async fn history_main(&self, s: &Session, query: &str) -> Result<String, StoreError> {
        let q = crate::policy::qs::parse(query).unwrap_or(Value::Null);
        let get = |k: &str| q.get(k).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_string);
        let f =
            Filters { status: get("status").and_then(|v| Status::parse(&v)), route: get("route"), agent: get("agent") };
        let all = self.visible(&s.approver, None).await?;
        let live = self.gate.live();
        let mut routes: Vec<String> = live
            .routes
            .iter()
            .filter(|(_, rc)| rc.approvers.iter().any(|x| x == &s.approver))
            .map(|(n, _)| n.clone())
            .collect();
        let mut agents: Vec<String> = Vec::new();
        for a in &all {
            for r in a.deciding_routes() {
                if !routes.contains(r) {
                    routes.push(r.clone());
                }
            }
            if !agents.contains(&a.agent) {
                agents.push(a.agent.clone());
            }
        }
        routes.sort();
        agents.sort();
        let mut rows: Vec<Approval> = all
            .into_iter()
            .filter(|a| f.status.is_none_or(|st| a.status == st))
            .filter(|a| f.route.as_ref().is_none_or(|r| a.deciding_routes().any(|x| x == r)))
            .filter(|a| f.agent.as_ref().is_none_or(|ag| &a.agent == ag))
            .collect();
        rows.sort_by_key(|a| std::cmp::Reverse(a.decided_at.unwrap_or(a.created_at)));
        let truncated = rows.len() > HISTORY_ROWS;
        rows.truncate(HISTORY_ROWS);
        Ok(render::history(&rows, &f, &routes, &agents, truncated, self.gate.clock.now()))
    }

    /// The detail view's live region and status.
    async fn detail_main(&self, s: &Session, id: &str, error: Option<&str>) -> (StatusCode, String) {
        let a = match self.gate.store.get(id).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                return (StatusCode::NOT_FOUND, render::message("Not found", &format!("No approval {id}."), false))
            }
            Err(e) => {
                tracing::error!(error = %e, approval.id = %id, "store unavailable for the web page");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    render::message("Unavailable", "The approval store is unavailable; retry.", false),
                );
            }
        };
        let live = self.gate.live();
        if !live.may_see(&s.approver, &a) {
            return (
                StatusCode::FORBIDDEN,
                render::message("Forbidden", "You are not an approver for this approval's routes.", false),
            );
        }
        let may_decide = live.may_decide(&s.approver, &a);
        drop(live);
        let dir = self.audit_dir.clone();
        let aid = a.id.clone();
        let (trail, trail_note, payload) = tokio::task::spawn_blocking(move || read_trail(&dir, &aid))
            .await
            .unwrap_or_else(|e| (Vec::new(), Some(format!("the audit trail could not be read: {e}")), None));
        let csrf = self.keys.csrf_for_session(s);
        let escalate_to = self.escalate_to(&a);
        let d = Detail {
            approval: &a,
            escalate_to: escalate_to.as_deref(),
            trail: &trail,
            trail_note,
            payload,
            csrf: &csrf,
            may_decide,
            already_voted: a.approvals.iter().any(|x| x == &s.approver),
            error,
            now: self.gate.clock.now(),
        };
        (StatusCode::OK, render::detail(&d))
    }

    // -----------------------------------------------------------------
    // State changes: each needs a session (or a pre-session) and its CSRF token.
    // -----------------------------------------------------------------

    async fn read_form(req: Request<Incoming>) -> Result<(HeaderMap, Value), StatusCode> {
        let (parts, body) = req.into_parts();
        let ct = header(&parts.headers, "content-type").unwrap_or("");
        if !ct.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
            return Err(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        let bytes = Limited::new(body, MAX_FORM).collect().await.map_err(|_| StatusCode::PAYLOAD_TOO_LARGE)?.to_bytes();
        let text = std::str::from_utf8(&bytes).map_err(|_| StatusCode::BAD_REQUEST)?;
        let form = crate::policy::qs::parse(text).map_err(|_| StatusCode::BAD_REQUEST)?;
        Ok((parts.headers, form))
    }

    fn bad_form(&self, status: StatusCode) -> Response<Body> {
        self.refusal(status, "Bad request", "The form could not be read.")
    }

    fn csrf_refused(&self) -> Response<Body> {
        tracing::warn!("web form refused: missing or wrong CSRF token");
        self.refusal(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The form's security token is missing or wrong. Reload the page and try again.",
        )
    }

    async fn decide(&self, req: Request<Incoming>, id: &str) -> Response<Body> {
        let Some(s) = self.session(req.headers()) else {
            return self.refusal(StatusCode::FORBIDDEN, "Signed out", "Your session has ended; sign in again.");
        };
        let (_, form) = match Self::read_form(req).await {
            Ok(f) => f,
            Err(st) => return self.bad_form(st),
        };
        let sent = form_field(&form, "csrf").unwrap_or_default();
        if !auth::ct_eq(&sent, &self.keys.csrf_for_session(&s)) {
            return self.csrf_refused();
        }
        let verdict = match form_field(&form, "decision").as_deref() {
            Some("approve") => Verdict::Approve,
            Some("reject") => Verdict::Reject,
            _ => return self.bad_form(StatusCode::BAD_REQUEST),
        };
        let reason = form_field(&form, "reason");
        match self.gate.decide(&s.approver, id, verdict, reason, Channel::Web).await {
            Ok(a) => {
                tracing::info!(approval.id = %a.id, decided_by = %s.approver, channel = "web", status = %a.status, "decision from the web page");
                redirect(&format!("/ui/approvals/{}", a.id))
            }
            Err(e) => {
                let status = match &e {
                    DecideError::BadRequest(_) => StatusCode::BAD_REQUEST,
                    DecideError::NotFound(_) => StatusCode::NOT_FOUND,
                    DecideError::Forbidden { .. } => StatusCode::FORBIDDEN,
                    DecideError::AlreadyDecided(_) => StatusCode::CONFLICT,
                    DecideError::Store(_) | DecideError::AuditUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                };
                tracing::warn!(approval.id = %id, approver = %s.approver, error = %e, "web decision refused");
                let msg = match &e {
                    DecideError::BadRequest(m) => {
                        let mut m = m.clone();
                        if let Some(c) = m.get_mut(0..1) {
                            c.make_ascii_uppercase();
                        }
                        m
                    }
                    DecideError::Forbidden { .. } => "You are not an approver for this approval's routes.".into(),
                    DecideError::AlreadyDecided(a) => format!("Already {}.", a.status),
                    DecideError::NotFound(_) => "No such approval.".into(),
                    DecideError::Store(_) => "The approval store is unavailable; retry.".into(),
                    DecideError::AuditUnavailable(_) => {
                        "The audit log is unavailable; the decision was not taken. Retry.".into()
                    }
                };
                let (view_status, main) = self.detail_main(&s, id, Some(&msg)).await;
                let status = if view_status == StatusCode::OK { status } else { view_status };
                let csrf = self.keys.csrf_for_session(&s);
                let chrome = Chrome { approver: &s.approver, csrf: &csrf, page: "detail" };
                html(
                    status,
                    render::page("Approval", Some(&chrome), &render::live_attrs("detail", Some(id)), &main, false),
                )
            }
        }
    }

    fn session_cookie(&self, value: &str) -> String {
        format!("{SESSION_COOKIE}={value}; {}", self.cookie_attrs(auth::SESSION_TTL.as_secs()))
    }

    async fn login(&self, req: Request<Incoming>) -> Response<Body> {
        let (h, form) = match Self::read_form(req).await {
            Ok(f) => f,
            Err(st) => return self.bad_form(st),
        };
        let (pre, _) = self.pre(&h);
        let sent = form_field(&form, "csrf").unwrap_or_default();
        if cookie(&h, PRE_COOKIE).is_none() || !auth::ct_eq(&sent, &self.keys.csrf_for_pre(&pre)) {
            return self.csrf_refused();
        }
        let next = form_field(&form, "next").unwrap_or_else(|| "/ui".into());
        let token = form_field(&form, "token").unwrap_or_default();
        let live = self.gate.live();
        let d = token_digest(token.trim());
        if let Some(who) = live.approver_tokens.get(&d).cloned() {
            let credential = credential_of(&live, &who);
            drop(live);
            let (_, value) = self.keys.new_session(&who, &credential, self.gate.clock.now());
            tracing::info!(approver = %who, method = "token", "signed in to the web page");
            let mut r = redirect(safe_next(&next));
            set_header(&mut r, SET_COOKIE, &self.session_cookie(&value));
            return r;
        }
        if live.agent_tokens.contains_key(&d) {
            tracing::warn!("agent token refused at web sign-in");
            return self.refusal(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "Agent tokens cannot sign in to the approver page.",
            );
        }
        tracing::warn!("web sign-in with an unknown token");
        self.signin_page(&h, StatusCode::UNAUTHORIZED, &next, Some("That token is not an approver token."))
    }

    async fn logout(&self, req: Request<Incoming>) -> Response<Body> {
        let s = self.session(req.headers());
        let (_, form) = match Self::read_form(req).await {
            Ok(f) => f,
            Err(st) => return self.bad_form(st),
        };
        if let Some(s) = &s {
            let sent = form_field(&form, "csrf").unwrap_or_default();
            if !auth::ct_eq(&sent, &self.keys.csrf_for_session(s)) {
                return self.csrf_refused();
            }
        }
        let mut r = redirect("/ui");
        set_header(&mut r, SET_COOKIE, &format!("{SESSION_COOKIE}=; {}", self.cookie_attrs(0)));
        r
    }

    fn link_refusal(&self, e: LinkError) -> Response<Body> {
        tracing::warn!(error = %e, "sign-in link refused");
        let (status, text) = match e {
            LinkError::Expired => {
                (StatusCode::GONE, "This sign-in link has expired. Ask for a new one, or sign in with your token.")
            }
            LinkError::Used => (
                StatusCode::GONE,
                "This sign-in link has already been used. Sign in with your token, or use a newer link.",
            ),
            LinkError::BadSignature | LinkError::Malformed => {
                (StatusCode::FORBIDDEN, "This sign-in link is not valid.")
            }
        };
        self.refusal(status, "Sign-in link refused", text)
    }

    /// Opening a link: checks it and asks to confirm. Uses nothing up, so link
    /// previews and mail scanners cannot burn it.
    fn link_get(&self, h: &HeaderMap, token: &str) -> Response<Body> {
        if !looks_like_token(token) {
            return self.link_refusal(LinkError::Malformed);
        }
        let claims = match self.links.verify(token, self.gate.clock.now()) {
            Ok(c) => c,
            Err(e) => return self.link_refusal(e),
        };
        if !self.gate.live().approvers.contains_key(&claims.approver) {
            return self.link_refusal(LinkError::BadSignature);
        }
        let (pre, set) = self.pre(h);
        let main = render::link_confirm(&claims.approver, token, &self.keys.csrf_for_pre(&pre));
        let mut r = self.with_pre(self.public_page(StatusCode::OK, "Sign in", &main), &pre, set);
        // Never cached, never indexed.
        set_header(&mut r, HeaderName::from_static("x-robots-tag"), "noindex, nofollow");
        r
    }

    /// Confirming a link: uses it up (once, across replicas) and signs in.
    async fn link_post(&self, req: Request<Incoming>, token: &str) -> Response<Body> {
        if !looks_like_token(token) {
            return self.link_refusal(LinkError::Malformed);
        }
        let (h, form) = match Self::read_form(req).await {
            Ok(f) => f,
            Err(st) => return self.bad_form(st),
        };
        let now = self.gate.clock.now();
        let claims = match self.links.verify(token, now) {
            Ok(c) => c,
            Err(e) => return self.link_refusal(e),
        };
        // CSRF before the claim: a forged post must not burn the link.
        let (pre, _) = self.pre(&h);
        let sent = form_field(&form, "csrf").unwrap_or_default();
        if cookie(&h, PRE_COOKIE).is_none() || !auth::ct_eq(&sent, &self.keys.csrf_for_pre(&pre)) {
            return self.csrf_refused();
        }
        if !self.gate.live().approvers.contains_key(&claims.approver) {
            return self.link_refusal(LinkError::BadSignature);
        }
        let ttl = claims.expires.since(now) + Duration::from_secs(60);
        match self.gate.store.claim_once(&format!("link:{}", claims.nonce), ttl, now).await {
            Ok(true) => {}
            Ok(false) => return self.link_refusal(LinkError::Used),
            Err(e) => return self.store_down(&e),
        }
        let credential = credential_of(&self.gate.live(), &claims.approver);
        let (_, value) = self.keys.new_session(&claims.approver, &credential, now);
        tracing::info!(approver = %claims.approver, approval.id = %claims.approval_id, method = "link", "signed in to the web page");
        let to = if Approval::looks_like_id(&claims.approval_id) {
            format!("/ui/approvals/{}", claims.approval_id)
        } else {
            "/ui".to_string()
        };
        let mut r = redirect(&to);
        set_header(&mut r, SET_COOKIE, &self.session_cookie(&value));
        r
    }

    // -----------------------------------------------------------------
    // Live updates.
    // -----------------------------------------------------------------

    fn events(&self, req: &Request<Incoming>) -> Response<Body> {
        let Some(s) = self.session(req.headers()) else {
            return respond::text(StatusCode::UNAUTHORIZED, "sign in first\n");
        };
        let Some(slot) = self.feed.open_stream() else {
            return respond::text(StatusCode::SERVICE_UNAVAILABLE, "too many open event streams\n");
        };
        let (tx, body) = feed::SseBody::channel();
        let mut sub = self.feed.subscribe();
        let gate = self.gate.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut shutdown = gate.shutdown_watch();
            let mut ping = tokio::time::interval(feed::KEEPALIVE);
            ping.tick().await;
            if tx.send(bytes::Bytes::from_static(b"retry: 2000\n: connected\n\n")).await.is_err() {
                return;
            }
            loop {
                if *shutdown.borrow_and_update() {
                    return;
                }
                let msg = tokio::select! {
                    r = sub.recv() => match r {
                        Ok(ev) => {
                            if !gate.live().may_see(&s.approver, &ev.approval) {
                                continue;
                            }
                            feed::sse_event(&ev)
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            bytes::Bytes::from_static(b"event: resync\ndata: {}\n\n")
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = ping.tick() => {
                        if gate.clock.now() >= s.expires {
                            return;
                        }
                        bytes::Bytes::from_static(b": ping\n\n")
                    }
                    _ = shutdown.changed() => return,
                    _ = tx.closed() => return,
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        let mut r = Response::new(body.boxed());
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
        r
    }
}

/// Fields of an audit record worth showing a person, in this order.
const TRAIL_FIELDS: &[&str] = &[
    "decision",
    "verdict",
    "decided_by",
    "channel",
    "status",
    "outcome",
    "reason",
    "routes",
    "risk",
    "escalated_to",
    "approvals",
    "request_id",
    "latency_ms",
];

fn field_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => Some(
            a.iter()
                .map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        other => Some(other.to_string()),
    }
}

/// The audit records of approval `id`, verified on the way: what happened, a note
/// when the log is unreadable or fails verification, and the agent's payload when
/// a decision record carries it.
///
/// This scans every chain file under `dir` (on a blocking thread): fine for the
/// retention a proxy keeps locally; a long-lived log would want an index by
/// approval id.
pub fn read_trail(dir: &Path, id: &str) -> (Vec<TrailItem>, Option<String>, Option<String>) {
    let mut items = Vec::new();
    let mut payload = None;
    let res = crate::audit::verify::verify_with(dir, &Default::default(), |rec| {
        if rec.get("approval_id").and_then(Value::as_str) != Some(id) {
            return;
        }
        if payload.is_none() {
            if let Some(p) = rec.get("payload_json").and_then(Value::as_str) {
                payload = Some(
                    serde_json::from_str::<Value>(p)
                        .ok()
                        .and_then(|v| serde_json::to_string_pretty(&v).ok())
                        .unwrap_or_else(|| p.to_string()),
                );
            }
        }
        if items.len() >= MAX_TRAIL {
            return;
        }
        let fields = TRAIL_FIELDS
            .iter()
            .filter_map(|k| rec.get(*k).and_then(field_text).map(|v| (k.to_string(), v)))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        items.push(TrailItem {
            ts: rec.get("ts").and_then(Value::as_str).unwrap_or("").to_string(),
            kind: rec.get("kind").and_then(Value::as_str).unwrap_or("").to_string(),
            fields,
        });
    });
    let note = match res {
        Ok(r) if r.intact() => None,
        Ok(r) => r.findings.first().map(|f| format!("The audit log failed verification: {f}")),
        Err(e) => Some(format!("The audit log could not be read: {e}")),
    };
    (items, note, payload)
}
