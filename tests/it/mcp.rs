//! MCP: the approval server at `/mcp` and the gateway at `/mcp/{name}`. Bad
//! input changes nothing; a cancelled call abandons its approval.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const RULES: &str = r#"package approvalplane

approval contains {"id": "api.deploy", "reason": "deploys need a person", "route": "eng-oncall"} if {
    input.kind == "api"
    input.action == "deploy"
}

approval contains {"id": "mcp.danger", "reason": "dangerous tool", "route": "eng-oncall"} if {
    input.kind == "mcp"
    input.mcp.tool == "danger"
}

allow contains {"id": "mcp.safe", "reason": "safe tool"} if {
    input.kind == "mcp"
    input.mcp.tool == "safe"
}
"#;

const MODERN: &str = "2026-07-28";

/// A fake Streamable-HTTP MCP server: answers every request with a tool result.
fn mcp_responder() -> Responder {
    Arc::new(|r: &Received| {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        match v.get("id") {
            Some(id) => json_response(
                200,
                &json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "ran"}], "isError": false}}),
            ),
            None => json_response(202, &json!({})),
        }
    })
}

struct Setup {
    app: TestApp,
    mcp_upstream: FakeUpstream,
    _stripe: FakeUpstream,
}

async fn setup() -> Setup {
    let stripe = FakeUpstream::start(None).await;
    let mcp_upstream = FakeUpstream::start_with(None, mcp_responder()).await;
    let mut o = Options::new(&stripe);
    o.rules = vec![("mcp.rego", RULES.to_string())];
    o.server_toml = "hold_timeout = \"10s\"\nmax_body_bytes = 4096\n".into();
    o.extra_toml = format!("\n[[mcp_server]]\nname = \"fake\"\nurl = \"http://{}/mcp\"\n", mcp_upstream.addr);
    let app = TestApp::start(o).await;
    Setup { app, mcp_upstream, _stripe: stripe }
}

fn meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}})
}

fn tool_call(id: u64, name: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args, "_meta": meta()}})
}

async fn post_modern(url: &str, v: &Value, token: &str, mcp_name: Option<&str>, accept: &str) -> Reply {
    let auth = format!("Bearer {token}");
    let method = v["method"].as_str().unwrap_or("").to_string();
    let mut h: Vec<(&str, &str)> = vec![
        ("authorization", &auth),
        ("content-type", "application/json"),
        ("accept", accept),
        ("mcp-protocol-version", MODERN),
        ("mcp-method", &method),
    ];
    if let Some(n) = mcp_name {
        h.push(("mcp-name", n));
    }
    call("POST", url, &h, &v.to_string()).await
}

const JSON_ONLY: &str = "application/json";

#[tokio::test]
async fn malformed_json_rpc_gets_an_error_and_changes_nothing() {
    let s = setup().await;
    for path in ["/mcp", "/mcp/fake"] {
        let url = format!("{}{path}", s.app.agent);
        let auth = format!("Bearer {AGENT_TOKEN}");
        for body in [
            "{not json",
            "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]",
            "{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"x\"}",
            "42",
            // A duplicate key: the policy and the server could read different values.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","arguments":{"amount":5000,"amount":5}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
        ] {
            let r = call("POST", &url, &[("authorization", &auth), ("content-type", "application/json")], body).await;
            assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
            let code = r.json()["error"]["code"].as_i64().unwrap();
            assert!(code == -32700 || code == -32600, "{path} {body}: {code}");
        }
    }
    assert_eq!(s.mcp_upstream.count(), 0);
    assert!(s.app.pending().await.is_empty());
}

#[tokio::test]
async fn unknown_tool_is_a_json_rpc_error() {
    let s = setup().await;
    let url = format!("{}/mcp", s.app.agent);
    let r = post_modern(&url, &tool_call(1, "rm_rf", json!({})), AGENT_TOKEN, Some("rm_rf"), JSON_ONLY).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], -32602);
    let r = post_modern(
        &url,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "nope/nope", "params": {"_meta": meta()}}),
        AGENT_TOKEN,
        None,
        JSON_ONLY,
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], -32601);
    assert!(s.app.pending().await.is_empty());
}

#[tokio::test]
async fn oversize_messages_are_refused_before_anything_happens() {
    let s = setup().await;
    let big = "x".repeat(8192);
    for path in ["/mcp", "/mcp/fake"] {
        let url = format!("{}{path}", s.app.agent);
        let r =
            post_modern(&url, &tool_call(1, "safe", json!({"blob": big})), AGENT_TOKEN, Some("safe"), JSON_ONLY).await;
        assert_eq!(r.status, 413, "{path}");
    }
    assert_eq!(s.mcp_upstream.count(), 0);
}

#[tokio::test]
async fn wrong_agent_token_is_refused_and_nothing_changes() {
    let s = setup().await;
    for path in ["/mcp", "/mcp/fake"] {
        let url = format!("{}{path}", s.app.agent);
        let name = if path == "/mcp" { "request_approval" } else { "danger" };
        let r =
            post_modern(&url, &tool_call(1, name, json!({"action": "deploy"})), "wrong-token", Some(name), JSON_ONLY)
                .await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.error_type(), "agent_unauthorized");
    }
    assert_eq!(s.mcp_upstream.count(), 0);
    assert!(s.app.pending().await.is_empty());
    let kinds: Vec<String> = s.app.records().iter().map(|r| r["kind"].as_str().unwrap_or("").to_string()).collect();
    assert!(!kinds.iter().any(|k| k == "decision"), "{kinds:?}");
}

#[tokio::test]
async fn mcp_name_header_must_match_the_tool() {
    let s = setup().await;
    let url = format!("{}/mcp/fake", s.app.agent);
    let r = post_modern(&url, &tool_call(1, "danger", json!({})), AGENT_TOKEN, Some("safe"), JSON_ONLY).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], -32020);
    // The same in the 2025-11-25 shape (no envelope).
    let auth = format!("Bearer {AGENT_TOKEN}");
    let v = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "danger", "arguments": {}}});
    let r = call(
        "POST",
        &url,
        &[("authorization", &auth), ("content-type", "application/json"), ("mcp-name", "safe")],
        &v.to_string(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(s.mcp_upstream.count(), 0);
    assert!(s.app.pending().await.is_empty());
    // Matching: an allowed tool goes through unchanged.
    let r = post_modern(&url, &tool_call(3, "safe", json!({"a": 1})), AGENT_TOKEN, Some("safe"), JSON_ONLY).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"]["content"][0]["text"], "ran");
    let got = s.mcp_upstream.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers.get("mcp-name").unwrap(), "safe");
    assert_eq!(got[0].headers.get("mcp-protocol-version").unwrap(), MODERN);
    assert!(got[0].headers.get("authorization").is_none(), "the agent's token is never forwarded");
}

/// Waits until carol (eng-oncall) sees exactly one approval with `status`.
async fn wait_listed(app: &TestApp, status: &str) -> String {
    for _ in 0..200 {
        let r = call(
            "GET",
            &format!("{}/v1/admin/approvals?status={status}", app.control),
            &[("authorization", &format!("Bearer {CAROL}"))],
            "",
        )
        .await;
        if let Some(a) = r.json()["approvals"].as_array().and_then(|a| a.first()) {
            return a["id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("carol never saw a {status} approval");
}

async fn status_of(app: &TestApp, id: &str) -> String {
    let r = call(
        "GET",
        &format!("{}/v1/admin/approvals/{id}", app.control),
        &[("authorization", &format!("Bearer {CAROL}"))],
        "",
    )
    .await;
    r.json()["status"].as_str().unwrap_or("").to_string()
}

async fn wait_status(app: &TestApp, id: &str, want: &str) {
    for _ in 0..200 {
        if status_of(app, id).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("approval {id} never became {want}: {}", status_of(app, id).await);
}

/// Sends a request on a raw connection and reads the response head; dropping
/// the returned stream hangs up.
async fn open_stream(base: &str, path: &str, headers: &[(&str, &str)], body: &str) -> tokio::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    s
}

#[tokio::test]
async fn closing_the_stream_abandons_request_approval_2026() {
    let s = setup().await;
    let v = tool_call(7, "request_approval", json!({"action": "deploy", "payload": {"v": 1}}));
    let auth = format!("Bearer {AGENT_TOKEN}");
    let h = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", MODERN),
        ("mcp-method", "tools/call"),
        ("mcp-name", "request_approval"),
    ];
    let stream = open_stream(&s.app.agent, "/mcp", &h, &v.to_string()).await;
    let id = wait_listed(&s.app, "pending").await;
    drop(stream);
    wait_status(&s.app, &id, "abandoned").await;
    // Abandoned approvals cannot be approved afterwards.
    let r = s.app.decide(CAROL, &id, "approve", None).await;
    assert_eq!(r.status, 409, "{}", r.text());
}

#[tokio::test]
async fn notifications_cancelled_abandons_a_held_gateway_call_which_never_runs() {
    let s = setup().await;
    let url = format!("{}/mcp/fake", s.app.agent);
    let auth = format!("Bearer {AGENT_TOKEN}");
    let call_v = json!({"jsonrpc": "2.0", "id": 41, "method": "tools/call", "params": {"name": "danger", "arguments": {"x": 1}}});
    let held = {
        let url = url.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            call(
                "POST",
                &url,
                &[("authorization", &auth), ("content-type", "application/json"), ("accept", JSON_ONLY)],
                &call_v.to_string(),
            )
            .await
        })
    };
    let id = wait_listed(&s.app, "pending").await;
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 41, "reason": "user stopped"}});
    let r = call("POST", &url, &[("authorization", &auth), ("content-type", "application/json")], &cancel.to_string())
        .await;
    assert!(r.status == 202 || r.status == 200, "{}", r.status);
    wait_status(&s.app, &id, "abandoned").await;
    let r = tokio::time::timeout(Duration::from_secs(5), held).await.unwrap().unwrap();
    assert_eq!(r.status, 202);
    let r = s.app.decide(CAROL, &id, "approve", None).await;
    assert_eq!(r.status, 409);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        s.mcp_upstream.received().iter().all(|r| !String::from_utf8_lossy(&r.body).contains("tools/call")),
        "a cancelled call never reaches the server"
    );
    let rec = s.app.records();
    assert!(rec.iter().any(|r| r["kind"] == "approval_ended" && r["status"] == "abandoned" && r["entrance"] == "mcp"));
}

#[tokio::test]
async fn held_gateway_call_still_pending_is_an_actionable_tool_error() {
    let s = setup().await;
    let url = format!("{}/mcp/fake", s.app.agent);
    let auth = format!("Bearer {AGENT_TOKEN}");
    let v = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "danger", "arguments": {}}});
    let r = call(
        "POST",
        &url,
        &[("authorization", &auth), ("content-type", "application/json"), ("prefer", "wait=0")],
        &v.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let res = &r.json()["result"];
    assert_eq!(res["isError"], true);
    let text = res["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("still pending") && text.contains("retry"), "{text}");
    assert_eq!(s.mcp_upstream.count(), 0);
}
