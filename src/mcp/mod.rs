//! MCP: the approval server (`/mcp` and `approvalplane mcp`) and the gateway
//! (`/mcp/{name}`).
//!
//! - [`protocol`]: JSON-RPC framing, both protocol revisions, routing headers.
//! - [`tools`]: `request_approval` and `get_approval`, transport-free.
//! - [`http`]: Streamable HTTP at `/mcp`, sessions and cancellation.
//! - [`stdio`]: `approvalplane mcp`, a stdio front end of a running `serve`.
//!
//! Every tool call reaches the same gate as the proxy and the HTTP API, so there
//! is one policy, one approval queue and one audit trail.

pub mod http;
pub mod protocol;
pub mod stdio;
pub mod tools;

/// Per-process MCP state kept by the gate.
#[derive(Debug, Default)]
pub struct Hub {
    /// `/mcp` sessions (2025-11-25).
    pub sessions: http::Sessions,
}

use std::sync::Arc;

use ::http::{Request, Response};
use hyper::body::Incoming;

use crate::gate::Gate;
use crate::refusal::Refusal;
use crate::respond::Body;

/// The agent listener's `/mcp` and `/mcp/{name}`.
pub async fn handle(gate: &Arc<Gate>, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
    http::handle(gate, req).await
}
