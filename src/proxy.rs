//! The agent-facing listener: proxy routes, `/v1/approvals`, `/mcp`.
//!
//! Owns reading a request safely: the path checks, agent authentication, the body
//! limit, header hygiene (hop-by-hop and credentials out, `Host` and
//! `Content-Length` recomputed by the forwarder). The decision itself is the gate's.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::approval::StoredRequest;
use crate::gate::{request_id, Gate, HttpAction, Live};
use crate::refusal::Refusal;
use crate::respond::{Body, HOP_BY_HOP};

/// The header carrying the agent's own reason for an action.
pub const JUSTIFICATION_HEADER: &str = "x-approval-justification";
const MAX_JUSTIFICATION: usize = 2000;

/// The most header bytes (names and values) a request may carry.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The response header naming the request id (also in its audit records).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The agent listener's entry point.
pub async fn handle(gate: Arc<Gate>, req: Request<Incoming>) -> Response<Body> {
    let request_id = request_id();
    let path = req.uri().path();
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let header_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    let res = match first {
        _ if header_bytes > MAX_HEADER_BYTES => Err(Refusal::HeadersTooLarge { limit: MAX_HEADER_BYTES }),
        // Each in a box of its own, sized to the path taken: hyper keeps one
        // in-flight slot per connection for as long as the connection lives, and a
        // held request keeps its future for minutes. (A future boxed in the
        // statement that awaits it would still take its size in this one.)
        "v1" => {
            let f = Box::pin(crate::api::handle(&gate, req, &request_id));
            f.await
        }
        "mcp" => {
            let f = Box::pin(crate::mcp::handle(&gate, req));
            f.await
        }
        _ => {
            let f = Box::pin(proxy(&gate, req, &request_id));
            f.await
        }
    };
    let mut resp = match res {
        Ok(r) => r,
        Err(refusal) => {
            gate.metrics.refusal(refusal.kind());
            tracing::debug!(request.id = %request_id, error.type = refusal.kind(), "refused");
            refusal.response()
        }
    };
    // The upstream's own X-Request-Id, on a relayed response, is left as it is.
    if !resp.headers().contains_key(REQUEST_ID_HEADER) {
        if let Ok(v) = http::HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
    }
    resp
}

/// Refuses paths that could mean different things to different parsers.
pub fn check_path(path: &str) -> Result<(), Refusal> {
    let bad = |why: &str| Err(Refusal::MalformedRequest(format!("path {path:?} {why}")));
    if !path.starts_with('/') {
        return bad("must start with /");
    }
    if path.contains('\\') {
        return bad("holds a backslash");
    }
    let lower = path.to_ascii_lowercase();
    for enc in ["%2f", "%5c", "%2e", "%00"] {
        if lower.contains(enc) {
            return bad("holds an encoded slash, backslash, dot or NUL");
        }
    }
    // Anywhere, not only as a segment: `..;` and the like are traversals to some
    // servers (Tomcat, Spring). A GitHub compare (`base...head`) is refused too.
    if path.contains("..") {
        return bad("holds ..");
    }
    let segs: Vec<&str> = path[1..].split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        if *s == "." {
            return bad("holds a . segment");
        }
        if s.is_empty() && i + 1 != segs.len() {
            return bad("holds an empty segment (//)");
        }
    }
    Ok(())
}

/// The agent's token: `Authorization: Bearer|token <t>`, Basic-auth password, or the
/// upstream's inject header (raw or with a `Bearer ` prefix).
pub fn presented_token(headers: &HeaderMap, inject_header: Option<&http::HeaderName>) -> Option<String> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
            return (!rest.is_empty()).then(|| rest.to_string());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let raw = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
            let s = String::from_utf8(raw).ok()?;
            let (_, pw) = s.split_once(':')?;
            // Stripe's SDK sends the key as the Basic user with an empty password.
            let (user, _) = s.split_once(':')?;
            let t = if pw.is_empty() { user } else { pw };
            return (!t.is_empty()).then(|| t.to_string());
        }
    }
    let h = inject_header?;
    let v = headers.get(h)?.to_str().ok()?.trim();
    let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).unwrap_or(v).trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Authenticates the caller of the agent listener.
pub fn authenticate(
    gate: &Gate,
    live: &Live,
    headers: &HeaderMap,
    inject_header: Option<&http::HeaderName>,
) -> Result<String, Refusal> {
    let token = presented_token(headers, inject_header);
    gate.agent_for(live, token.as_deref()).ok_or(Refusal::AgentUnauthorized)
}

/// Reads the body up to `limit` bytes, within `timeout` (a slow body is cut off).
pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, Refusal> {
    if let Some(cl) = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        if cl > limit as u64 {
            return Err(Refusal::BodyTooLarge { limit });
        }
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(Refusal::RequestTimeout),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::BodyTooLarge { limit }),
        Ok(Err(e)) => Err(Refusal::MalformedRequest(format!("the body could not be read: {e}"))),
    }
}

/// `Prefer: wait=N` (RFC 7240), in seconds.
pub fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|p| p.trim().strip_prefix("wait="))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .min()
        .map(Duration::from_secs)
}

fn justification(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(v) = headers.get(JUSTIFICATION_HEADER) else { return Ok(None) };
    let s = std::str::from_utf8(v.as_bytes())
        .map_err(|_| Refusal::MalformedRequest("X-Approval-Justification is not UTF-8".into()))?
        .trim();
    if s.chars().count() > MAX_JUSTIFICATION {
        return Err(Refusal::MalformedRequest(format!(
            "X-Approval-Justification is longer than {MAX_JUSTIFICATION} characters"
        )));
    }
    Ok((!s.is_empty()).then(|| s.to_string()))
}

/// The headers that go upstream, names lowercase, in order.
pub(crate) fn forwardable(
    headers: &HeaderMap,
    strip_credentials: bool,
    inject_header: Option<&http::HeaderName>,
) -> Result<Vec<(String, String)>, Refusal> {
    let connection_named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name)
            || connection_named.iter().any(|c| c == name)
            || name == HOST.as_str()
            || name == CONTENT_LENGTH.as_str()
            || name == "expect"
            || name == JUSTIFICATION_HEADER
            || name == "prefer"
        {
            continue;
        }
        if strip_credentials && (name == AUTHORIZATION.as_str() || inject_header.is_some_and(|h| h == k)) {
            continue;
        }
        let value = std::str::from_utf8(v.as_bytes())
            .map_err(|_| Refusal::MalformedRequest(format!("header {name} is not UTF-8 text")))?;
        out.push((name.to_string(), value.to_string()));
    }
    // `Prefer` preferences other than wait are the upstream's business.
    let rest: Vec<String> = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with("wait="))
        .map(str::to_string)
        .collect();
    if !rest.is_empty() {
        out.push(("prefer".into(), rest.join(", ")));
    }
    Ok(out)
}

async fn proxy(gate: &Arc<Gate>, req: Request<Incoming>, request_id: &str) -> Result<Response<Body>, Refusal> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    check_path(path)?;
    let rest = &path[1..];
    let (name, sub) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let live = gate.live();
    let upstream = live.upstreams.get(name).cloned().ok_or_else(|| Refusal::UnknownUpstream(name.to_string()))?;
    let agent = authenticate(gate, &live, &parts.headers, upstream.inject_header())?;
    let body = read_body(body, &parts.headers, gate.settings.max_body_bytes, gate.settings.body_read_timeout).await?;
    let headers = forwardable(&parts.headers, live.agents_configured(), upstream.inject_header())?;
    let justification = justification(&parts.headers)?;
    let wait = prefer_wait(&parts.headers).map_or(gate.settings.hold_timeout, |w| w.min(gate.settings.hold_timeout));
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{sub}?{q}"),
        None => sub.to_string(),
    };
    let host = parts.headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let action = HttpAction {
        request_id: request_id.to_string(),
        agent,
        req: StoredRequest {
            upstream: name.to_string(),
            method: parts.method.as_str().to_string(),
            path_and_query,
            headers,
            body,
        },
        justification,
        wait,
        status_base: format!("http://{host}"),
    };
    // A held request keeps this future for minutes: the parsed head (its header
    // map, its URI) goes now; the action has what the gate needs.
    drop((live, parts));
    let f = Box::pin(gate.proxy(action));
    f.await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_tricks_are_refused() {
        for p in [
            "/stripe/../admin",
            "/stripe/./x",
            "/stripe//v1",
            "//stripe/v1",
            "/stripe/%2e%2e/x",
            "/stripe%2fv1",
            "/stripe/a%2Fb",
            "/stripe/a\\b",
            "/stripe/%00",
            "/stripe/%5c",
            "/stripe/..;/admin",
            "/stripe/v1/a..b",
            "/github/repos/o/r/compare/main...dev",
        ] {
            assert!(check_path(p).is_err(), "{p}");
        }
        for p in [
            "/stripe/v1/refunds",
            "/stripe/v1/refunds/",
            "/stripe",
            "/stripe/a%20b",
            "/stripe/v1/a.b",
            "/up/.well-known",
        ] {
            assert!(check_path(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn tokens_from_every_place() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer t1".parse().unwrap());
        assert_eq!(presented_token(&h, None).as_deref(), Some("t1"));
        h.insert(AUTHORIZATION, "token t2".parse().unwrap());
        assert_eq!(presented_token(&h, None).as_deref(), Some("t2"));
        let basic = base64::engine::general_purpose::STANDARD.encode("user:t3");
        h.insert(AUTHORIZATION, format!("Basic {basic}").parse().unwrap());
        assert_eq!(presented_token(&h, None).as_deref(), Some("t3"));
        let stripe = base64::engine::general_purpose::STANDARD.encode("sk_agent:");
        h.insert(AUTHORIZATION, format!("Basic {stripe}").parse().unwrap());
        assert_eq!(presented_token(&h, None).as_deref(), Some("sk_agent"));
        let mut h = HeaderMap::new();
        let x = http::HeaderName::from_static("x-api-key");
        h.insert(x.clone(), "t4".parse().unwrap());
        assert_eq!(presented_token(&h, Some(&x)).as_deref(), Some("t4"));
        assert_eq!(presented_token(&h, None), None);
    }

    #[test]
    fn hop_by_hop_and_credentials_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert(AUTHORIZATION, "Bearer agent".parse().unwrap());
        h.insert("host", "proxy".parse().unwrap());
        h.insert("content-length", "3".parse().unwrap());
        h.insert("prefer", "wait=5, return=minimal".parse().unwrap());
        h.insert(JUSTIFICATION_HEADER, "because".parse().unwrap());
        h.insert("stripe-version", "2024-06-20".parse().unwrap());
        let f = forwardable(&h, true, None).unwrap();
        let names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["stripe-version", "prefer"]);
        assert_eq!(f[1].1, "return=minimal");
        assert_eq!(prefer_wait(&h), Some(Duration::from_secs(5)));
        let f = forwardable(&h, false, None).unwrap();
        assert!(f.iter().any(|(k, _)| k == "authorization"), "without agents the agent's own credential passes");
    }
}
