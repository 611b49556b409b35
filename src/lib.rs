//! ApprovalPlane: a policy-gated reverse proxy that holds risky agent actions for a
//! person to approve, and records every decision in a hash-chained audit log.
//!
//! # Layout, in reading order
//! - [`cli`]: the command line; the only place that reads the environment;
//!   [`demo`]: the self-contained quick start.
//! - [`config`]: the TOML file, strictly parsed and validated.
//! - [`app`]: assembly, and serving both listeners.
//! - [`proxy`]: the agent-facing listener (proxy routes); [`api`]: `request_approval`;
//!   [`mcp`]: the MCP server and the MCP gateway.
//! - [`control`]: the control listener (admin API, health, metrics);
//!   [`ui`]: the approver web page on it.
//! - [`gate`]: classify → decide → hold → forward or refuse → record.
//! - [`reload`]: safe reload on SIGHUP and rules changes.
//! - [`policy`]: Rego rules (regorus), the input document, the combiner.
//! - [`store`]: approvals and grants (memory; Redis for replicas).
//! - [`upstream`]: the forwarder, the only code that talks to upstreams.
//! - [`audit`]: the hash-chained log, its writer and its verifier.
//! - [`notify`]: who hears about approvals (log, webhooks, phone pushes);
//!   [`slack`]: cards, decisions from Slack, Socket Mode; [`ui`]: the approver web page.
//! - Small pieces: [`approval`], [`fingerprint`], [`refusal`], [`respond`],
//!   [`redact`], [`metrics`], [`clock`], [`explain`].
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod approval;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod explain;
pub mod fingerprint;
pub mod gate;
pub mod mcp;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod proxy;
pub mod redact;
pub mod refusal;
pub mod reload;
pub mod respond;
pub mod slack;
pub mod store;
pub mod ui;
pub mod upstream;
