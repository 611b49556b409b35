//! The control listener: people and ops. `/v1/admin/*`, `/healthz`, `/readyz`,
//! `/metrics`, `/slack/interactions` (handled by [`crate::slack`]) and `/ui` (the
//! web page, [`crate::ui`]).
//!
//! Agents never reach this listener's decision endpoints: an agent token gets 403,
//! and config check refuses an upstream that points here.

use std::sync::Arc;

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::approval::{Approval, Channel, Status, Verdict};
use crate::gate::{token_digest, DecideError, Gate};
use crate::policy::json::parse_strict;
use crate::reload::LiveSecrets;
use crate::respond::{self, Body};
use crate::store::ListQuery;

const MAX_ADMIN_BODY: usize = 256 * 1024;
/// A bulk decision holds up to `MAX_BULK` ids of 24 bytes, quoted.
const MAX_BULK_BODY: usize = 1024 * 1024;
const MAX_BULK: usize = 10_000;
/// Bulk decisions run this many at a time, so their synced audit records share
/// group commits and held requests are released together.
const BULK_CONCURRENCY: usize = 256;

/// One id's outcome in a bulk decision's `results`.
#[derive(serde::Serialize)]
struct BulkItem<'a> {
    id: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval: Option<&'a Approval>,
}

/// State the control listener needs beyond the gate.
pub struct Control {
    pub gate: Arc<Gate>,
    /// Where `server.metrics_token_*` is read at each scrape (a reload may rotate it).
    pub secrets: LiveSecrets,
    /// Present when `[slack]` is configured.
    pub slack: Option<crate::slack::Slack>,
    /// The approver web page, `/ui`.
    pub ui: Arc<crate::ui::Ui>,
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response<Body> {
    respond::json(status, &json!({"error": {"type": kind, "message": message.into()}}))
}

fn bearer(req_headers: &http::HeaderMap) -> Option<&str> {
    let v = req_headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")).then(|| rest.trim())
}

/// Who is calling the admin API: an approver id, or the response to send.
fn approver(gate: &Gate, headers: &http::HeaderMap) -> Result<String, Box<Response<Body>>> {
    let live = gate.live();
    let Some(token) = bearer(headers) else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send an approver token as \"Authorization: Bearer <token>\"",
        )));
    };
    let d = token_digest(token);
    if let Some(id) = live.approver_tokens.get(&d) {
        return Ok(id.clone());
    }
    if live.agent_tokens.contains_key(&d) {
        return Err(Box::new(error(StatusCode::FORBIDDEN, "forbidden", "agent tokens cannot use the admin API")));
    }
    Err(Box::new(error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token")))
}

async fn read_json(body: Incoming) -> Result<Value, Box<Response<Body>>> {
    read_json_limited(body, MAX_ADMIN_BODY).await
}

async fn read_json_limited(body: Incoming, limit: usize) -> Result<Value, Box<Response<Body>>> {
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| {
            Box::new(error(StatusCode::PAYLOAD_TOO_LARGE, "malformed_request", "body too large or unreadable"))
        })?
        .to_bytes();
    parse_strict(&bytes).map_err(|e| {
        Box::new(error(StatusCode::BAD_REQUEST, "malformed_request", format!("body is not valid JSON: {e}")))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: String,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    ids: Vec<String>,
    decision: String,
    reason: Option<String>,
}

fn verdict(s: &str) -> Result<Verdict, Box<Response<Body>>> {
    match s {
        "approve" => Ok(Verdict::Approve),
        "reject" => Ok(Verdict::Reject),
        o => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            format!("decision {o:?} is not \"approve\" or \"reject\""),
        ))),
    }
}

/// The response for one decision's outcome.
pub fn decision_response(r: Result<Approval, DecideError>) -> Response<Body> {
    let status = decision_status(&r);
    match r {
        Ok(a) => respond::json(status, &a.to_json()),
        Err(DecideError::BadRequest(m)) => error(status, "malformed_request", m),
        Err(DecideError::NotFound(id)) => error(status, "not_found", format!("approval {id} not found")),
        Err(e @ DecideError::Forbidden { .. }) => error(status, "forbidden", e.to_string()),
        // The object itself, as a 200 would carry it, plus the error (which also
        // holds it, under `approval`).
        Err(DecideError::AlreadyDecided(a)) => {
            let object = a.to_json();
            let mut body = object.clone();
            body["error"] = json!({"type": "already_decided", "message": format!("approval {} is already {}", a.id, a.status), "approval": object});
            respond::json(status, &body)
        }
        Err(DecideError::AuditUnavailable(_)) => {
            let mut r = error(
                status,
                "audit_unavailable",
                "the audit log is unavailable, and a decision is not taken without its record; retry",
            );
            r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        Err(DecideError::Store(_)) => {
            let mut r = error(status, "store_unavailable", "the approval store is unavailable; retry");
            r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
    }
}

/// The HTTP status of a decision's outcome, the same for single and bulk calls.
/// An unavailable log or store is logged here, once per decision.
fn decision_status(r: &Result<Approval, DecideError>) -> StatusCode {
    match r {
        Ok(_) => StatusCode::OK,
        Err(DecideError::BadRequest(_)) => StatusCode::BAD_REQUEST,
        Err(DecideError::NotFound(_)) => StatusCode::NOT_FOUND,
        Err(DecideError::Forbidden { .. }) => StatusCode::FORBIDDEN,
        Err(DecideError::AlreadyDecided(_)) => StatusCode::CONFLICT,
        Err(DecideError::AuditUnavailable(e)) => {
            tracing::error!(error = %e, "audit log unavailable: decision refused");
            StatusCode::SERVICE_UNAVAILABLE
        }
        Err(DecideError::Store(e)) => {
            tracing::error!(error = %e, "store unavailable during a decision");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

impl Control {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/healthz") => respond::text(StatusCode::OK, "ok\n"),
            (Method::GET, "/readyz") => self.readyz().await,
            (Method::GET, "/metrics") => self.metrics(&req).await,
            (Method::POST, "/slack/interactions") => match &self.slack {
                Some(slack) => slack.handle_http(req).await,
                None => error(StatusCode::NOT_FOUND, "not_found", "slack is not configured"),
            },
            (_, p) if p.starts_with("/v1/admin/") => self.admin(req).await,
            (_, p) if p == "/ui" || p.starts_with("/ui/") => self.ui.handle(req).await,
            _ => error(StatusCode::NOT_FOUND, "not_found", format!("no such endpoint: {path}")),
        }
    }

    async fn readyz(&self) -> Response<Body> {
        let g = &self.gate;
        let store = g.store.ping().await;
        let audit_ok = g.audit.health().is_ok();
        let shutting = g.is_shutting_down();
        let ready = store.is_ok() && audit_ok && !shutting;
        let body = json!({
            "ready": ready,
            "store": match &store { Ok(()) => json!("ok"), Err(e) => json!(e.to_string()) },
            "audit": if audit_ok { json!("ok") } else { json!(g.audit.health().last_error().unwrap_or_else(|| "failing".into())) },
            "shutting_down": shutting,
            "policy_bundle": g.live().policy.hash(),
        });
        respond::json(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
    }

    async fn metrics(&self, req: &Request<Incoming>) -> Response<Body> {
        // `Some(None)`: a token is configured but not set, so nothing matches.
        let want = self.secrets.read(|c, s| c.server.metrics_token.as_ref().map(|r| s.get(r).cloned()));
        if let Some(want) = want {
            let ok = match (bearer(req.headers()), want) {
                (Some(b), Some(t)) => bool::from(b.as_bytes().ct_eq(t.expose().as_bytes())),
                _ => false,
            };
            if !ok {
                return error(StatusCode::UNAUTHORIZED, "unauthorized", "metrics need the metrics token");
            }
        }
        let g = &self.gate;
        let m = &g.metrics;
        m.store_healthy.set(i64::from(g.store.ping().await.is_ok()));
        if let Ok(counts) = g.store.pending_counts().await {
            for route in g.live().routes.keys() {
                m.pending.get_or_create(&vec![("route", route.clone())]).set(*counts.get(route).unwrap_or(&0) as i64);
            }
        }
        let h = g.audit.health();
        m.audit_records.set(h.records.load(std::sync::atomic::Ordering::Relaxed) as i64);
        m.audit_healthy.set(i64::from(h.is_ok()));
        let last = h.last_checkpoint_ms.load(std::sync::atomic::Ordering::Relaxed);
        if last > 0 {
            m.audit_checkpoint_age.set(g.clock.now().since(crate::clock::Timestamp(last)).as_secs() as i64);
        }
        // Prometheus text by default; OpenMetrics when the scraper asks for it (as
        // Prometheus itself does, in its Accept header).
        let openmetrics = req
            .headers()
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("application/openmetrics-text"));
        let (body, ctype) = if openmetrics {
            (m.render(), "application/openmetrics-text; version=1.0.0; charset=utf-8")
        } else {
            (m.render_prometheus(), "text/plain; version=0.0.4; charset=utf-8")
        };
        let mut r = respond::text(StatusCode::OK, body);
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
        r
    }

    async fn admin(&self, req: Request<Incoming>) -> Response<Body> {
        let who = match approver(&self.gate, req.headers()) {
            Ok(w) => w,
            Err(r) => return *r,
        };
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().trim_end_matches('/');
        let segs: Vec<&str> = path.trim_start_matches("/v1/admin/").split('/').collect();
        match (&parts.method, segs.as_slice()) {
            (&Method::GET, ["approvals"]) => self.list(&who, parts.uri.query()).await,
            (&Method::GET, ["approvals", id]) => match self.gate.store.get(id).await {
                Ok(Some(a)) if self.gate.visible_to(&who, &a) => respond::json(StatusCode::OK, &a.to_json()),
                Ok(Some(_)) => error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("{who} is not an approver for this approval's routes"),
                ),
                Ok(None) => error(StatusCode::NOT_FOUND, "not_found", format!("approval {id} not found")),
                Err(e) => decision_response(Err(DecideError::Store(e))),
            },
            (&Method::POST, ["approvals", "decision"]) => {
                let v = match read_json_limited(body, MAX_BULK_BODY).await {
                    Ok(v) => v,
                    Err(r) => return *r,
                };
                let b: BulkBody = match serde_json::from_value(v) {
                    Ok(b) => b,
                    Err(e) => return error(StatusCode::BAD_REQUEST, "malformed_request", e.to_string()),
                };
                if b.ids.is_empty() || b.ids.len() > MAX_BULK {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "malformed_request",
                        format!("ids must hold 1 to {MAX_BULK} ids"),
                    );
                }
                let v = match verdict(&b.decision) {
                    Ok(v) => v,
                    Err(r) => return *r,
                };
                use futures_util::StreamExt;
                // Each decision and its result item (encoded there, typed: no
                // `Value` tree per approval) are made in a task of their own (see
                // `Gate::decide_detached`), in order, BULK_CONCURRENCY at once.
                let items: Vec<Vec<u8>> = futures_util::stream::iter(b.ids)
                    .map(|id| {
                        let (gate, who, reason) = (self.gate.clone(), who.clone(), b.reason.clone());
                        tokio::spawn(async move {
                            let r = gate.decide(&who, &id, v, reason, Channel::AdminApi).await;
                            let status = decision_status(&r).as_u16();
                            let item = match &r {
                                Ok(a) => BulkItem { id: &id, status, error: None, approval: Some(a) },
                                Err(DecideError::AlreadyDecided(a)) => BulkItem {
                                    id: &id,
                                    status,
                                    error: Some("already_decided".into()),
                                    approval: Some(a),
                                },
                                Err(e) => BulkItem { id: &id, status, error: Some(e.to_string()), approval: None },
                            };
                            serde_json::to_vec(&item).unwrap_or_default()
                        })
                    })
                    .buffered(BULK_CONCURRENCY)
                    .map(|r| {
                        r.unwrap_or_else(|e| {
                            serde_json::to_vec(&json!({"status": 500, "error": format!("decision task: {e}")}))
                                .unwrap_or_default()
                        })
                    })
                    .collect()
                    .await;
                let mut body = Vec::with_capacity(16 + items.iter().map(|i| i.len() + 1).sum::<usize>());
                body.extend_from_slice(b"{\"results\":[");
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(item);
                }
                body.extend_from_slice(b"]}");
                respond::json_bytes(StatusCode::OK, body)
            }
            (&Method::POST, ["approvals", id, "decision"]) => {
                let v = match read_json(body).await {
                    Ok(v) => v,
                    Err(r) => return *r,
                };
                let b: DecisionBody = match serde_json::from_value(v) {
                    Ok(b) => b,
                    Err(e) => return error(StatusCode::BAD_REQUEST, "malformed_request", e.to_string()),
                };
                let v = match verdict(&b.decision) {
                    Ok(v) => v,
                    Err(r) => return *r,
                };
                decision_response(
                    self.gate.decide_detached(who.to_string(), id.to_string(), v, b.reason, Channel::AdminApi).await,
                )
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such endpoint: {} {}", parts.method, parts.uri.path()),
            ),
        }
    }

    async fn list(&self, who: &str, query: Option<&str>) -> Response<Body> {
        let mut q = ListQuery { status: None, after: None, limit: 1000 };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "status" => match Status::parse(v) {
                    Some(s) => q.status = Some(s),
                    None => {
                        return error(StatusCode::BAD_REQUEST, "malformed_request", format!("unknown status {v:?}"))
                    }
                },
                "after" => q.after = Some(v.to_string()),
                "limit" => match v.parse::<usize>() {
                    Ok(n) if (1..=1000).contains(&n) => q.limit = n,
                    _ => return error(StatusCode::BAD_REQUEST, "malformed_request", "limit must be 1 to 1000"),
                },
                _ => return error(StatusCode::BAD_REQUEST, "malformed_request", format!("unknown parameter {k:?}")),
            }
        }
        let want = q.limit;
        let mut out = Vec::new();
        let mut next = None;
        loop {
            let page = match self.gate.store.list(&q).await {
                Ok(p) => p,
                Err(e) => return decision_response(Err(DecideError::Store(e))),
            };
            for a in page.approvals {
                if out.len() > want {
                    break;
                }
                if self.gate.visible_to(who, &a) {
                    out.push(a);
                }
            }
            if out.len() > want {
                out.truncate(want);
                next = out.last().map(crate::store::cursor);
                break;
            }
            match page.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        let approvals: Vec<Value> = out.iter().map(Approval::to_json).collect();
        respond::json(StatusCode::OK, &json!({"approvals": approvals, "next": next}))
    }
}
