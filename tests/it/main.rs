//! Integration tests: the real server in-process, driven over sockets.

mod harness;

mod admin;
mod audit_cli;
mod audit_tamper;
mod cli;
mod crash;
mod explain;
mod hold;
mod mcp;
mod proxy;
mod rules;
mod timers;
mod tls;
