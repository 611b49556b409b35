//! Builds the policy input document of INTERFACE.md §5.
//!
//! Owns body interpretation: what the rules see of a request. Unreadable bodies are
//! refused here (as `malformed_body`) rather than passed on, because a body the rules
//! cannot read is a body the rules cannot judge.

use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;
use crate::policy::{json::parse_strict, qs};
use crate::redact;

/// The most of a body's text the input carries; `truncated` says when cut.
pub const MAX_BODY_TEXT: usize = 64 * 1024;

/// Why a request cannot be shown to the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The body does not parse under its declared type, or is encoded.
    #[error("{0}")]
    Body(String),
    /// The query string is ambiguous or malformed.
    #[error("{0}")]
    Query(String),
}

/// A proxied request, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct HttpView<'a> {
    pub agent: &'a str,
    pub upstream: &'a str,
    pub method: &'a str,
    /// Below the upstream prefix, starting with `/`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Forwardable headers, names lowercase.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    pub justification: Option<&'a str>,
    /// The upstream's `inject_header`, redacted like any credential.
    pub inject_header: Option<&'a str>,
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(b: &[u8]) -> String {
    crate::fingerprint::digest_hex(&Sha256::digest(b))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Parses the body under its declared content type.
pub fn parse_body(headers: &[(String, String)], body: &[u8]) -> Result<Value, InputError> {
    // Every Content-Encoding line counts: the upstream applies them all.
    for enc in headers.iter().filter(|(k, _)| k == "content-encoding").map(|(_, v)| v.as_str()) {
        if !enc.trim().eq_ignore_ascii_case("identity") && !enc.trim().is_empty() {
            return Err(InputError::Body(format!(
                "Content-Encoding {enc:?} is not accepted: send the body uncompressed so the policy can read it"
            )));
        }
    }
    if body.is_empty() {
        return Ok(Value::Null);
    }
    let Some(ct) = header(headers, "content-type") else {
        return Ok(Value::Null);
    };
    // Two declared types: the policy and the upstream could read the body differently.
    if headers.iter().filter(|(k, _)| k == "content-type").count() > 1 {
        return Err(InputError::Body("Content-Type is sent more than once: send one".to_string()));
    }
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let charset_ok = parts.all(|p| {
        let p = p.trim().to_ascii_lowercase();
        match p.strip_prefix("charset=") {
            Some(cs) => matches!(cs.trim_matches('"'), "utf-8" | "utf8" | "us-ascii"),
            None => true,
        }
    });
    let is_json = media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"));
    let is_form = media == "application/x-www-form-urlencoded";
    if (is_json || is_form) && !charset_ok {
        return Err(InputError::Body(format!("charset in {ct:?} is not supported: use UTF-8")));
    }
    if is_json {
        return parse_strict(body).map_err(|e| InputError::Body(format!("body is not valid JSON: {e}")));
    }
    if is_form {
        let text =
            std::str::from_utf8(body).map_err(|_| InputError::Body("form body is not valid UTF-8".to_string()))?;
        return qs::parse(text).map_err(|e| InputError::Body(format!("form body: {e}")));
    }
    Ok(Value::Null)
}

/// Parses a query string qs-style.
pub fn parse_query(query: Option<&str>) -> Result<Value, InputError> {
    match query {
        None | Some("") => Ok(Value::Object(Map::new())),
        Some(q) => qs::parse(q).map_err(|e| InputError::Query(format!("query string: {e}"))),
    }
}

/// What an input document is built as: `serde_json` values for display (`rules
/// explain`), regorus values for evaluation, so the request path builds its
/// document once, in the form the VM reads, instead of a JSON tree converted after.
pub trait Doc: Sized {
    fn object<K: AsRef<str>>(members: impl IntoIterator<Item = (K, Self)>) -> Self;
    fn text(s: &str) -> Self;
    fn string(s: String) -> Self;
    fn boolean(b: bool) -> Self;
    fn null() -> Self;
    /// A part parsed as JSON (the body, the query string).
    fn json(v: Value) -> Result<Self, InputError>;
}

impl Doc for Value {
    fn object<K: AsRef<str>>(members: impl IntoIterator<Item = (K, Self)>) -> Self {
        Value::Object(members.into_iter().map(|(k, v)| (k.as_ref().to_string(), v)).collect())
    }
    fn text(s: &str) -> Self {
        Value::String(s.to_string())
    }
    fn string(s: String) -> Self {
        Value::String(s)
    }
    fn boolean(b: bool) -> Self {
        Value::Bool(b)
    }
    fn null() -> Self {
        Value::Null
    }
    fn json(v: Value) -> Result<Self, InputError> {
        Ok(v)
    }
}

impl Doc for regorus::Value {
    fn object<K: AsRef<str>>(members: impl IntoIterator<Item = (K, Self)>) -> Self {
        let map: std::collections::BTreeMap<regorus::Value, regorus::Value> =
            members.into_iter().map(|(k, v)| (regorus::Value::from(k.as_ref()), v)).collect();
        regorus::Value::from(map)
    }
    fn text(s: &str) -> Self {
        regorus::Value::from(s)
    }
    fn string(s: String) -> Self {
        regorus::Value::from(s)
    }
    fn boolean(b: bool) -> Self {
        regorus::Value::from(b)
    }
    fn null() -> Self {
        regorus::Value::Null
    }
    fn json(v: Value) -> Result<Self, InputError> {
        use serde::Deserialize;
        regorus::Value::deserialize(&v).map_err(|e| InputError::Body(format!("input document: {e}")))
    }
}

/// The input document for a proxied request.
pub fn http_input<D: Doc>(v: &HttpView<'_>, now: Timestamp) -> Result<D, InputError> {
    let parsed_body = parse_body(v.headers, v.body)?;
    let query = parse_query(v.query)?;
    // Repeated headers are joined with ", ", in order (RFC 9110 §5.3).
    let mut headers: Vec<(&str, String)> = Vec::with_capacity(v.headers.len());
    for (k, val) in v.headers {
        let shown = redact::header_value(k, val, v.inject_header);
        match headers.iter_mut().find(|(name, _)| *name == k.as_str()) {
            Some((_, s)) => {
                s.push_str(", ");
                s.push_str(shown);
            }
            None => headers.push((k.as_str(), shown.to_string())),
        }
    }
    let (body, truncated, encoding) = body_text(v.body);
    let mut request = vec![
        ("method", D::text(v.method)),
        ("path", D::text(v.path)),
        ("query", D::json(query)?),
        ("headers", D::object(headers.into_iter().map(|(k, s)| (k, D::string(s))))),
        ("body", D::string(body)),
        ("body_sha256", D::string(sha256_hex(v.body))),
        ("truncated", D::boolean(truncated)),
        ("parsed_body", D::json(parsed_body)?),
    ];
    if let Some(e) = encoding {
        request.push(("body_encoding", D::text(e)));
    }
    Ok(D::object([
        ("kind", D::text("http")),
        ("agent", D::object([("id", D::text(v.agent))])),
        ("upstream", D::text(v.upstream)),
        ("justification", v.justification.map_or_else(D::null, D::text)),
        ("request", D::object(request)),
        ("now", D::string(now.rfc3339_seconds())),
    ]))
}

/// The body as text for the rules: UTF-8 as is (cut at [`MAX_BODY_TEXT`]), anything
/// else as base64.
fn body_text(body: &[u8]) -> (String, bool, Option<&'static str>) {
    match std::str::from_utf8(body) {
        Ok(s) if s.len() <= MAX_BODY_TEXT => (s.to_string(), false, None),
        Ok(s) => {
            let mut end = MAX_BODY_TEXT;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            (s[..end].to_string(), true, None)
        }
        Err(_) => {
            let cut = &body[..body.len().min(MAX_BODY_TEXT)];
            (base64::engine::general_purpose::STANDARD.encode(cut), cut.len() < body.len(), Some("base64"))
        }
    }
}

/// A `request_approval` call, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct ApiView<'a> {
    pub agent: &'a str,
    pub action: &'a str,
    pub payload: &'a Value,
    pub risk: Option<&'a str>,
    pub policy_hints: &'a [String],
    pub justification: Option<&'a str>,
}

pub fn api_input(v: &ApiView<'_>, now: Timestamp) -> Value {
    json!({
        "kind": "api",
        "agent": {"id": v.agent},
        "action": v.action,
        "payload": v.payload,
        "risk": v.risk,
        "policy_hints": v.policy_hints,
        "justification": v.justification,
        "now": now.rfc3339_seconds(),
    })
}

/// A gated MCP `tools/call`, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct McpView<'a> {
    pub agent: &'a str,
    pub server: &'a str,
    pub tool: &'a str,
    pub arguments: &'a Value,
    pub justification: Option<&'a str>,
}

pub fn mcp_input(v: &McpView<'_>, now: Timestamp) -> Value {
    json!({
        "kind": "mcp",
        "agent": {"id": v.agent},
        "mcp": {"server": v.server, "tool": v.tool, "arguments": v.arguments},
        "justification": v.justification,
        "now": now.rfc3339_seconds(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn view<'a>(headers: &'a [(String, String)], body: &'a [u8], query: Option<&'a str>) -> HttpView<'a> {
        HttpView {
            agent: "support-agent",
            upstream: "stripe",
            method: "POST",
            path: "/v1/refunds",
            query,
            headers,
            body,
            justification: Some("duplicate charge"),
            inject_header: Some("authorization"),
        }
    }

    #[test]
    fn the_contract_example() {
        let headers =
            h(&[("content-type", "application/x-www-form-urlencoded"), ("authorization", "Bearer sk_live_x")]);
        let body = b"charge=ch_1&amount=240000&metadata[order]=6735";
        let doc: Value =
            http_input(&view(&headers, body, Some("expand[]=charge")), Timestamp(1_795_466_193_000)).unwrap();
        assert_eq!(doc["kind"], "http");
        assert_eq!(doc["agent"]["id"], "support-agent");
        assert_eq!(doc["request"]["query"], json!({"expand": ["charge"]}));
        assert_eq!(
            doc["request"]["parsed_body"],
            json!({"charge": "ch_1", "amount": "240000", "metadata": {"order": "6735"}})
        );
        assert_eq!(doc["request"]["headers"]["authorization"], "[redacted]");
        assert_eq!(doc["request"]["truncated"], false);
        assert_eq!(doc["request"]["body_sha256"], sha256_hex(body));
        assert_eq!(doc["now"], "2026-11-23T20:36:33Z");
        assert_eq!(doc["justification"], "duplicate charge");
    }

    #[test]
    fn both_forms_of_the_document_agree() {
        use serde::Deserialize;
        let form = h(&[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", "Bearer sk_live_x"),
            ("x-tag", "a"),
            ("accept", "*/*"),
            ("x-tag", "b"),
        ]);
        let json_ct = h(&[("content-type", "application/json"), ("x-n", "1")]);
        let none = h(&[]);
        let big = vec![b'a'; MAX_BODY_TEXT + 10];
        type Case<'a> = (&'a [(String, String)], &'a [u8], Option<&'a str>, Option<&'a str>);
        let cases: [Case; 6] = [
            (&form, b"charge=ch_1&amount=240000&metadata[order]=6735", Some("expand[]=charge&x=1"), Some("why")),
            (
                &json_ct,
                br#"{"amount": 12.5, "n": -3, "big": 123456789012345678901, "l": [1, {"a": null}]}"#,
                None,
                None,
            ),
            (&none, b"", Some(""), None),
            (&none, b"\xff\x00", None, Some("")),
            (&none, &big, None, None),
            (&json_ct, b"[]", Some("a[b]=1&a[c]=2"), None),
        ];
        for (headers, body, query, justification) in cases {
            let mut v = view(headers, body, query);
            v.justification = justification;
            let json: Value = http_input(&v, Timestamp(1_795_466_193_000)).unwrap();
            let direct: regorus::Value = http_input(&v, Timestamp(1_795_466_193_000)).unwrap();
            assert_eq!(direct, regorus::Value::deserialize(&json).unwrap(), "{json}");
        }
        let joined: Value = http_input(&view(&form, b"", None), Timestamp(0)).unwrap();
        assert_eq!(joined["request"]["headers"]["x-tag"], "a, b");
        let keys: Vec<&String> = joined["request"]["headers"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["content-type", "authorization", "x-tag", "accept"]);
    }

    #[test]
    fn unreadable_bodies_are_refused() {
        let form = h(&[("content-type", "application/x-www-form-urlencoded")]);
        let json_ct = h(&[("content-type", "application/json; charset=utf-8")]);
        let gz = h(&[("content-type", "application/json"), ("content-encoding", "gzip")]);
        let latin = h(&[("content-type", "application/json; charset=latin1")]);
        let gz_second =
            h(&[("content-type", "application/json"), ("content-encoding", "identity"), ("content-encoding", "gzip")]);
        let two_types = h(&[("content-type", "text/plain"), ("content-type", "application/json")]);
        type Case<'a> = (&'a [(String, String)], &'a [u8]);
        let bad: [Case; 7] = [
            (&gz_second, b"{}"),
            (&two_types, br#"{"a":1,"a":2}"#),
            (&form, b"amount=100&amount=999999"),
            (&json_ct, br#"{"amount":100,"amount":999999}"#),
            (&json_ct, b"{not json"),
            (&gz, b"\x1f\x8b"),
            (&latin, b"{}"),
        ];
        for (headers, body) in bad {
            let e = http_input::<Value>(&view(headers, body, None), Timestamp(0)).unwrap_err();
            assert!(matches!(e, InputError::Body(_)), "{e}");
        }
        let e = http_input::<Value>(&view(&form, b"", Some("a=1&a=2")), Timestamp(0)).unwrap_err();
        assert!(matches!(e, InputError::Query(_)));
    }

    #[test]
    fn long_and_binary_bodies() {
        let big = vec![b'a'; MAX_BODY_TEXT + 10];
        let none = h(&[]);
        let doc = http_input::<Value>(&view(&none, &big, None), Timestamp(0)).unwrap();
        assert_eq!(doc["request"]["truncated"], true);
        assert_eq!(doc["request"]["body"].as_str().unwrap().len(), MAX_BODY_TEXT);
        let doc = http_input::<Value>(&view(&none, b"\xff\x00", None), Timestamp(0)).unwrap();
        assert_eq!(doc["request"]["body_encoding"], "base64");
        assert_eq!(doc["request"]["parsed_body"], Value::Null);
    }
}
