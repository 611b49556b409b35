//! `approvalplane mcp`: the approval server over stdio, as a front end of a
//! running `serve`.
//!
//! Reads newline-delimited JSON-RPC from stdin and writes responses and
//! progress notifications to stdout; logs go to stderr. Every tool call is an
//! HTTP call to `server.listen`'s `/v1/approvals` with one agent's token, so
//! this process binds no port and writes no audit file: the running `serve`
//! decides and records. The first message may be `initialize` (2025-11-25) or
//! any 2026-07-28 request such as `server/discover`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::api::AskBody;
use crate::config::Secret;
use crate::mcp::protocol::{self, Era, Message, RpcError};
use crate::mcp::tools::{ApprovalServer, Approvals, ToolFailure};

/// How long a call to `serve` may take beyond the wait it asked for.
const CALL_SLACK: Duration = Duration::from_secs(15);

/// Approvals asked from a running `serve` over its agent listener.
pub struct HttpApprovals {
    base: String,
    token: Option<Secret>,
    client: Client<HttpConnector, Full<Bytes>>,
    max_wait: Duration,
}

/// Where to reach `listen`: an unspecified address means this host.
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port()),
        _ => listen,
    }
}

impl HttpApprovals {
    pub fn new(listen: SocketAddr, token: Option<Secret>, max_wait: Duration) -> HttpApprovals {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_nodelay(true);
        HttpApprovals {
            base: format!("http://{}", connect_addr(listen)),
            token,
            client: Client::builder(TokioExecutor::new()).build(http),
            max_wait,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        wait: Duration,
    ) -> Result<Value, ToolFailure> {
        let mut b = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            b = b.header(http::header::AUTHORIZATION, format!("Bearer {}", t.expose()));
        }
        let bytes = body.map(|v| Bytes::from(v.to_string())).unwrap_or_default();
        if !bytes.is_empty() {
            b = b.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = b.body(Full::new(bytes)).map_err(|e| unreachable_failure(&self.base, &e.to_string()))?;
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| unreachable_failure(&self.base, &e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable_failure(&self.base, &e.to_string()))?
                .to_bytes();
            Ok::<_, ToolFailure>((status, body))
        };
        let (status, body) = tokio::time::timeout(wait + CALL_SLACK, fut)
            .await
            .map_err(|_| unreachable_failure(&self.base, "no answer in time"))??;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status == StatusCode::OK || status == StatusCode::NO_CONTENT {
            return Ok(v);
        }
        let message = v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("ApprovalPlane answered HTTP {status}; the action is not approved."));
        Err(ToolFailure { message, structured: v.is_object().then_some(v) })
    }
}

fn unreachable_failure(base: &str, detail: &str) -> ToolFailure {
    ToolFailure {
        message: format!(
            "ApprovalPlane at {base} could not be reached ({detail}). The action is NOT approved; do not take it. \
             Retry later."
        ),
        structured: None,
    }
}

#[async_trait]
impl Approvals for HttpApprovals {
    async fn request(&self, body: AskBody) -> Result<Value, ToolFailure> {
        let v = json!({
            "action": body.action,
            "payload": body.payload,
            "risk": body.risk,
            "policy_hints": body.policy_hints,
            "justification": body.justification,
            "wait": body.wait,
        });
        self.call(Method::POST, "/v1/approvals", Some(v), Duration::ZERO).await
    }

    async fn get(&self, id: &str, wait: Duration) -> Result<Value, ToolFailure> {
        if !crate::approval::Approval::looks_like_id(id) {
            return Err(ToolFailure { message: format!("approval {id} was not found."), structured: None });
        }
        let path = format!("/v1/approvals/{id}?wait={}", wait.as_secs_f64());
        self.call(Method::GET, &path, None, wait).await
    }

    async fn abandon(&self, id: &str) {
        if let Err(e) = self.call(Method::DELETE, &format!("/v1/approvals/{id}"), None, Duration::ZERO).await {
            tracing::warn!(approval.id = %id, error = %e, "could not abandon approval");
        }
    }

    fn max_wait(&self) -> Duration {
        self.max_wait
    }
}

/// Serves MCP over `input`/`output` until `input` ends.
pub async fn serve<R, W>(server: ApprovalServer, input: R, mut output: W, max_message: usize) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, mut out_rx) = mpsc::channel::<Value>(64);
    let writer = tokio::spawn(async move {
        while let Some(v) = out_rx.recv().await {
            let mut line = v.to_string().into_bytes();
            line.push(b'\n');
            if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                return;
            }
        }
    });
    let inflight: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut lines = BufReader::new(input).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > max_message {
            let e = RpcError::new(protocol::INVALID_REQUEST, format!("message larger than {max_message} bytes"));
            let _ = out_tx.send(protocol::error_message(&Value::Null, &e)).await;
            continue;
        }
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let e = RpcError::new(protocol::PARSE_ERROR, format!("parse error: {e}"));
                let _ = out_tx.send(protocol::error_message(&Value::Null, &e)).await;
                continue;
            }
        };
        let (id, method, params) = match protocol::classify(&v) {
            Ok(Message::Request { id, method, params }) => (id, method, params),
            Ok(Message::Notification { method, params }) => {
                if method == "notifications/cancelled" {
                    if let Some(key) = params.get("requestId").map(Value::to_string) {
                        if let Some(tx) = inflight.lock().ok().and_then(|mut m| m.remove(&key)) {
                            let _ = tx.send(());
                        }
                    }
                }
                continue;
            }
            Ok(Message::Response { .. }) => continue,
            Err(e) => {
                let _ = out_tx.send(protocol::error_message(&protocol::salvage_id(&v), &e)).await;
                continue;
            }
        };
        let era = if protocol::is_modern(&method, &params, None) {
            if let Err(e) = protocol::check_modern(&method, &params, None) {
                let _ = out_tx.send(protocol::error_message(&id, &e)).await;
                continue;
            }
            Era::Modern
        } else {
            Era::Handshake
        };
        let (ctx, crx) = oneshot::channel();
        if let Ok(mut m) = inflight.lock() {
            m.insert(id.to_string(), ctx);
        }
        let server = server.clone();
        let out = out_tx.clone();
        let inflight = inflight.clone();
        tasks.spawn(async move {
            let work = server.handle(&method, &params, era, Some(&out));
            let res = tokio::select! {
                r = work => Some(r),
                _ = crx => None,
            };
            if let Ok(mut m) = inflight.lock() {
                m.remove(&id.to_string());
            }
            let msg = match res {
                Some(Ok(r)) => protocol::result_message(&id, r),
                Some(Err(e)) => protocol::error_message(&id, &e),
                // Cancelled: no response is sent.
                None => return,
            };
            let _ = out.send(msg).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    // The client went away: cancel what is still running, so its approvals
    // are abandoned rather than left to be approved and acted on later.
    let pending: Vec<oneshot::Sender<()>> =
        inflight.lock().map(|mut m| m.drain().map(|(_, v)| v).collect()).unwrap_or_default();
    for tx in pending {
        let _ = tx.send(());
    }
    while tasks.join_next().await.is_some() {}
    drop(out_tx);
    let _ = writer.await;
    Ok(())
}
