#![no_main]
//! MCP JSON-RPC message parsing and the protocol-revision checks.
use libfuzzer_sys::fuzz_target;

#[path = "../entry.rs"]
mod entry;

fuzz_target!(|data: &[u8]| entry::mcp_jsonrpc(data));
