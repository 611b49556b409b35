//! MCP: the approval server (`/mcp` and `approvalplane mcp`) and the gateway
//! (`/mcp/{name}`).
//!
//! - [`protocol`]: JSON-RPC framing, both protocol revisions, routing headers.
//! - [`tools`]: `request_approval` and `get_approval`, transport-free.
//! - [`http`]: Streamable HTTP at `/mcp`, sessions and cancellation.
//! - [`stdio`]: `approvalplane mcp`, a stdio front end of a running `serve`.
//! - [`gateway`]: `/mcp/{name}`: gated `tools/call`, everything else relayed.
//!
//! Every tool call reaches the same gate as the proxy and the HTTP API, so there
//! is one policy, one approval queue and one audit trail.

pub mod gateway;
pub mod http;
pub mod protocol;
pub mod stdio;
pub mod tools;

/// Per-process MCP state kept by the gate.
#[derive(Debug, Default)]
pub struct Hub {
    /// `/mcp` sessions (2025-11-25).
    pub sessions: http::Sessions,
    /// Gateway tool calls held for approval, for `notifications/cancelled`.
    pub held: gateway::HeldCalls,
    /// Gateway sessions with their stdio children (2025-11-25).
    pub children: gateway::ChildSessions,
}

use std::sync::Arc;

use ::http::{Request, Response};
use hyper::body::Incoming;

use crate::gate::Gate;
use crate::refusal::Refusal;
use crate::respond::Body;

/// The agent listener's `/mcp` and `/mcp/{name}`.
pub async fn handle(gate: &Arc<Gate>, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    match path.strip_prefix("/mcp/") {
        Some(name) if !name.is_empty() => {
            crate::proxy::check_path(&path)?;
            if name.contains('/') {
                return Err(Refusal::NotFound(format!("{} {path}", req.method())));
            }
            gateway::handle(gate, req, name).await
        }
        _ => http::handle(gate, req).await,
    }
}
