//! Integration tests: the real server in-process, driven over sockets.

mod harness;

mod admin;
mod audit_cli;
mod cli;
mod fake_slack;
mod hold;
mod proxy;
mod slack;
mod timers;
mod tls;
