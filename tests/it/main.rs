//! Integration tests: the real server in-process, driven over sockets.

mod harness;

mod admin;
mod audit_cli;
mod audit_tamper;
mod cli;
mod crash;
mod explain;
mod fake_slack;
mod fuzz_corpus;
mod hold;
mod hostile;
mod mcp;
mod notify_webhook;
mod policy_engines;
mod proxy;
mod rules;
mod secret_reload;
mod slack;
mod timers;
mod tls;
mod ui;
