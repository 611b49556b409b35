//! Integration tests: the real server in-process, driven over sockets.

mod harness;

mod admin;
mod audit_cli;
mod audit_tamper;
mod cli;
mod crash;
mod hold;
mod proxy;
mod timers;
mod tls;
