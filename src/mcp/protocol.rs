//! JSON-RPC 2.0 framing and the MCP protocol revisions we speak.
//!
//! Owns the wire vocabulary shared by every MCP entrance: message classification,
//! error codes, the two protocol eras (the 2025-11-25 handshake era and the
//! stateless 2026-07-28 era with its per-request `_meta` envelope), and the
//! routing-header checks. It does no I/O.

use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Revisions served with the `initialize` handshake, newest first.
pub const HANDSHAKE_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// The stateless revision (`server/discover`, per-request `_meta`).
pub const MODERN_VERSION: &str = "2026-07-28";

pub const PROTOCOL_VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";
pub const CLIENT_CAPABILITIES_META: &str = "io.modelcontextprotocol/clientCapabilities";
pub const SERVER_INFO_META: &str = "io.modelcontextprotocol/serverInfo";

pub const HEADER_PROTOCOL_VERSION: &str = "mcp-protocol-version";
pub const HEADER_METHOD: &str = "mcp-method";
pub const HEADER_NAME: &str = "mcp-name";
pub const HEADER_SESSION: &str = "mcp-session-id";

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
pub const HEADER_MISMATCH: i64 = -32020;
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("json-rpc error {code}: {message}")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into(), data: None }
    }

    pub fn with_data(mut self, data: Value) -> RpcError {
        self.data = Some(data);
        self
    }

    pub fn to_json(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        e
    }

    /// The HTTP status the 2026-07-28 transport sends with this error.
    pub fn http_status(&self) -> http::StatusCode {
        match self.code {
            PARSE_ERROR | INVALID_REQUEST | INVALID_PARAMS | HEADER_MISMATCH | UNSUPPORTED_PROTOCOL_VERSION => {
                http::StatusCode::BAD_REQUEST
            }
            METHOD_NOT_FOUND => http::StatusCode::NOT_FOUND,
            _ => http::StatusCode::OK,
        }
    }
}

/// One inbound JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
    /// A response (result or error) to a request the other side received.
    Response {
        id: Value,
    },
}

/// Classifies a parsed JSON value. Batches are refused: no revision we speak
/// has them.
pub fn classify(v: &Value) -> Result<Message, RpcError> {
    let Some(o) = v.as_object() else {
        let what = if v.is_array() { "batches are not supported" } else { "a message must be a JSON object" };
        return Err(RpcError::new(INVALID_REQUEST, what));
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(RpcError::new(INVALID_REQUEST, "jsonrpc must be \"2.0\""));
    }
    let id = o.get("id");
    if let Some(id) = id {
        if !(id.is_string() || id.is_i64() || id.is_u64()) {
            return Err(RpcError::new(INVALID_REQUEST, "id must be a string or an integer"));
        }
    }
    match (o.get("method"), id) {
        (Some(Value::String(m)), id) => {
            let params = o.get("params").cloned().unwrap_or(Value::Null);
            if !(params.is_null() || params.is_object()) {
                return Err(RpcError::new(INVALID_REQUEST, "params must be an object"));
            }
            Ok(match id {
                Some(id) => Message::Request { id: id.clone(), method: m.clone(), params },
                None => Message::Notification { method: m.clone(), params },
            })
        }
        (Some(_), _) => Err(RpcError::new(INVALID_REQUEST, "method must be a string")),
        (None, Some(id)) if o.contains_key("result") || o.contains_key("error") => {
            Ok(Message::Response { id: id.clone() })
        }
        (None, _) => Err(RpcError::new(INVALID_REQUEST, "not a request, notification or response")),
    }
}

/// The request id of a message that failed classification, when it has one.
pub fn salvage_id(v: &Value) -> Value {
    match v.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    }
}

pub fn result_message(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

pub fn error_message(id: &Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()})
}

pub fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

/// Which protocol era a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// 2025-11-25 and earlier: `initialize`, sessions.
    Handshake,
    /// 2026-07-28: stateless, every request carries its envelope.
    Modern,
}

/// `params._meta`, when it is an object.
pub fn meta(params: &Value) -> Option<&Map<String, Value>> {
    params.get("_meta").and_then(Value::as_object)
}

/// Whether a request uses the 2026-07-28 envelope (or is its discovery probe).
pub fn is_modern(method: &str, params: &Value, header_version: Option<&str>) -> bool {
    method == "server/discover"
        || header_version == Some(MODERN_VERSION)
        || meta(params).is_some_and(|m| m.contains_key(PROTOCOL_VERSION_META))
}

/// The routing headers of one HTTP request, names lowercase.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoutingHeaders<'a> {
    pub protocol_version: Option<&'a str>,
    pub method: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// The body field a name-bearing method mirrors into `Mcp-Name`.
pub fn name_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    }
}

/// Checks a 2026-07-28 request: the envelope, then (over HTTP) the routing
/// headers, then the version.
pub fn check_modern(method: &str, params: &Value, headers: Option<RoutingHeaders<'_>>) -> Result<(), RpcError> {
    let Some(m) = meta(params) else {
        return Err(RpcError::new(
            INVALID_PARAMS,
            format!(
                "params._meta must be an object carrying {PROTOCOL_VERSION_META:?} and {CLIENT_CAPABILITIES_META:?}"
            ),
        ));
    };
    let missing: Vec<&str> =
        [PROTOCOL_VERSION_META, CLIENT_CAPABILITIES_META].into_iter().filter(|k| !m.contains_key(*k)).collect();
    if !missing.is_empty() {
        return Err(RpcError::new(
            INVALID_PARAMS,
            format!("params._meta is missing the required envelope key(s): {}", missing.join(", ")),
        ));
    }
    let version = &m[PROTOCOL_VERSION_META];
    if let Some(h) = headers {
        if h.protocol_version.is_none() || h.protocol_version != version.as_str() {
            return Err(RpcError::new(
                HEADER_MISMATCH,
                "MCP-Protocol-Version header does not match the request envelope's protocol version",
            ));
        }
        if h.method != Some(method) {
            return Err(RpcError::new(HEADER_MISMATCH, "Mcp-Method header does not match the request body's method"));
        }
        check_name_header(method, params, h.name)?;
    }
    match version.as_str() {
        Some(MODERN_VERSION) => Ok(()),
        Some(v) => Err(unsupported_version(v)),
        None => Err(RpcError::new(INVALID_PARAMS, "the protocol version in params._meta must be a string")),
    }
}

/// `Mcp-Name` must equal the body's name (or uri) when both are present.
pub fn check_name_header(method: &str, params: &Value, header: Option<&str>) -> Result<(), RpcError> {
    let Some(field) = name_field(method) else { return Ok(()) };
    let Some(body) = params.get(field) else { return Ok(()) };
    if header.is_none() {
        return Ok(());
    }
    if header.and_then(decode_header_value).as_deref() != body.as_str() {
        return Err(RpcError::new(
            HEADER_MISMATCH,
            format!("Mcp-Name header does not match the request body's {field:?} parameter"),
        ));
    }
    Ok(())
}

pub fn unsupported_version(requested: &str) -> RpcError {
    RpcError::new(UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version")
        .with_data(json!({"supported": [MODERN_VERSION], "requested": requested}))
}

/// Decodes a header value, including the `=?base64?...?=` form for non-ASCII.
pub fn decode_header_value(v: &str) -> Option<String> {
    match v.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) {
        None => Some(v.to_string()),
        Some(payload) => {
            let raw = base64::engine::general_purpose::STANDARD.decode(payload).ok()?;
            String::from_utf8(raw).ok()
        }
    }
}

/// The handshake version to answer an `initialize` with.
pub fn negotiate(requested: Option<&str>) -> &'static str {
    HANDSHAKE_VERSIONS.iter().find(|v| Some(**v) == requested).copied().unwrap_or(HANDSHAKE_VERSIONS[0])
}

/// The `progressToken` a request carries, if any.
pub fn progress_token(params: &Value) -> Option<Value> {
    meta(params).and_then(|m| m.get("progressToken")).filter(|t| t.is_string() || t.is_number()).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let cases = [
            (json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}), true),
            (json!({"jsonrpc": "2.0", "method": "notifications/initialized"}), true),
            (json!({"jsonrpc": "2.0", "id": "a", "result": {}}), true),
            (json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]), false),
            (json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}), false),
            (json!({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}), false),
            (json!({"jsonrpc": "2.0", "id": 1, "method": 3}), false),
            (json!({"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1]}), false),
            (json!("hello"), false),
        ];
        for (v, ok) in cases {
            assert_eq!(classify(&v).is_ok(), ok, "{v}");
        }
    }

    #[test]
    fn modern_ladder() {
        let params =
            json!({"name": "t", "_meta": {PROTOCOL_VERSION_META: MODERN_VERSION, CLIENT_CAPABILITIES_META: {}}});
        let h = RoutingHeaders { protocol_version: Some(MODERN_VERSION), method: Some("tools/call"), name: Some("t") };
        assert!(check_modern("tools/call", &params, Some(h)).is_ok());
        let bad_name = RoutingHeaders { name: Some("other"), ..h };
        assert_eq!(check_modern("tools/call", &params, Some(bad_name)).unwrap_err().code, HEADER_MISMATCH);
        let bad_method = RoutingHeaders { method: Some("tools/list"), ..h };
        assert_eq!(check_modern("tools/call", &params, Some(bad_method)).unwrap_err().code, HEADER_MISMATCH);
        assert_eq!(check_modern("tools/call", &json!({}), None).unwrap_err().code, INVALID_PARAMS);
        let old = json!({"_meta": {PROTOCOL_VERSION_META: "2027-01-01", CLIENT_CAPABILITIES_META: {}}});
        assert_eq!(check_modern("tools/list", &old, None).unwrap_err().code, UNSUPPORTED_PROTOCOL_VERSION);
        let b64 = format!("=?base64?{}?=", base64::engine::general_purpose::STANDARD.encode("wöw"));
        assert_eq!(decode_header_value(&b64).as_deref(), Some("wöw"));
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(Some("2025-06-18")), "2025-06-18");
        assert_eq!(negotiate(Some("2026-07-28")), "2025-11-25");
        assert_eq!(negotiate(None), "2025-11-25");
    }
}
