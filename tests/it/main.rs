//! Integration tests: the real server in-process, driven over sockets.

mod harness;

mod admin;
mod audit_cli;
mod cli;
mod hold;
mod notify_webhook;
mod proxy;
mod timers;
mod tls;
mod ui;
