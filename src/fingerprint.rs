//! The fingerprint of an action: what makes two requests "the same" (INTERFACE.md §3).
//!
//! For proxied requests: agent, upstream, method, path, query, body bytes, and every
//! forwarded header except the volatile set. The Stripe SDK sends a fresh
//! `Idempotency-Key` on every call, so it never separates two identical refunds.

use sha2::{Digest, Sha256};

/// Headers that never separate two requests (lowercase).
pub const VOLATILE_HEADERS: &[&str] =
    &["idempotency-key", "user-agent", "x-stripe-client-user-agent", "traceparent", "tracestate", "date"];

pub fn is_volatile(name: &str) -> bool {
    VOLATILE_HEADERS.iter().any(|v| name.eq_ignore_ascii_case(v))
}

/// Lowercase hex of a digest. It runs for every record and request, so it fills a
/// sized `String` instead of collecting char by char as `hex::encode` does.
pub fn digest_hex(d: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(d.len() * 2);
    for &b in d {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

struct Fp(Sha256);

impl Fp {
    fn new(domain: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"approvalplane.fingerprint.");
        h.update(domain.as_bytes());
        h.update(b"\n");
        Fp(h)
    }

    /// Length-prefixed, so fields cannot run into each other.
    fn field(&mut self, b: &[u8]) -> &mut Self {
        self.0.update((b.len() as u64).to_be_bytes());
        self.0.update(b);
        self
    }

    fn finish(self) -> String {
        digest_hex(&self.0.finalize())
    }
}

/// The fingerprint of a proxied request. `headers` are the forwardable headers
/// with lowercase names; their order among equal names is kept.
pub fn http(
    agent: &str,
    upstream: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> String {
    let mut fp = Fp::new("http");
    fp.field(agent.as_bytes()).field(upstream.as_bytes()).field(method.as_bytes()).field(path_and_query.as_bytes());
    let mut hs: Vec<(&str, &str)> =
        headers.iter().filter(|(k, _)| !is_volatile(k)).map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Stable sort by name keeps the relative order of repeated headers.
    hs.sort_by(|a, b| a.0.cmp(b.0));
    fp.field(&(hs.len() as u64).to_be_bytes());
    for (k, v) in hs {
        fp.field(k.as_bytes()).field(v.as_bytes());
    }
    fp.field(body);
    fp.finish()
}

/// The fingerprint of a `request_approval` call: agent, action and canonical
/// payload. An `Idempotency-Key` never separates two calls (INTERFACE.md §3); it
/// is remembered on its own ([`idempotency_key`]) to refuse its reuse with other bytes.
pub fn api(agent: &str, action: &str, canonical_payload: &str) -> String {
    let mut fp = Fp::new("api");
    fp.field(agent.as_bytes()).field(action.as_bytes()).field(canonical_payload.as_bytes());
    fp.finish()
}

/// Where an `Idempotency-Key` is remembered within its scope (the agent, and the
/// upstream for proxied requests): a digest, so neither the key's text nor its
/// length reaches the store.
pub fn idempotency_key(scope: &str, idempotency_key: &str) -> String {
    let mut fp = Fp::new("idempotency-key");
    fp.field(scope.as_bytes()).field(idempotency_key.as_bytes());
    fp.finish()
}

/// The fingerprint of a gated MCP tool call.
pub fn mcp(agent: &str, server: &str, tool: &str, canonical_arguments: &str) -> String {
    let mut fp = Fp::new("mcp");
    fp.field(agent.as_bytes()).field(server.as_bytes()).field(tool.as_bytes()).field(canonical_arguments.as_bytes());
    fp.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_is_lowercase_hex() {
        let d = Sha256::digest(b"abc");
        assert_eq!(digest_hex(&d), hex::encode(d));
        assert_eq!(digest_hex(&[0x00, 0x0f, 0xf0, 0xff]), "000ff0ff");
    }

    fn h(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn volatile_headers_do_not_separate() {
        let a = http(
            "ag",
            "stripe",
            "POST",
            "/v1/refunds",
            &h(&[("idempotency-key", "k1"), ("user-agent", "x/1")]),
            b"amount=1",
        );
        let b = http("ag", "stripe", "POST", "/v1/refunds", &h(&[("idempotency-key", "k2")]), b"amount=1");
        assert_eq!(a, b);
    }

    #[test]
    fn meaningful_differences_separate() {
        let base = http("ag", "stripe", "POST", "/v1/refunds", &h(&[("stripe-account", "acct_1")]), b"amount=1");
        let variants = [
            http("other", "stripe", "POST", "/v1/refunds", &h(&[("stripe-account", "acct_1")]), b"amount=1"),
            http("ag", "github", "POST", "/v1/refunds", &h(&[("stripe-account", "acct_1")]), b"amount=1"),
            http("ag", "stripe", "PUT", "/v1/refunds", &h(&[("stripe-account", "acct_1")]), b"amount=1"),
            http("ag", "stripe", "POST", "/v1/refunds?x=1", &h(&[("stripe-account", "acct_1")]), b"amount=1"),
            http("ag", "stripe", "POST", "/v1/refunds", &h(&[("stripe-account", "acct_2")]), b"amount=1"),
            http("ag", "stripe", "POST", "/v1/refunds", &h(&[]), b"amount=1"),
            http("ag", "stripe", "POST", "/v1/refunds", &h(&[("stripe-account", "acct_1")]), b"amount=2"),
            // Field boundaries matter.
            http("ag", "stripe", "POST", "/v1/refunds", &h(&[("stripe-accoun", "tacct_1")]), b"amount=1"),
        ];
        for v in variants {
            assert_ne!(base, v);
        }
    }

    #[test]
    fn header_order_between_names_does_not_matter() {
        let a = http("a", "u", "GET", "/", &h(&[("x-a", "1"), ("x-b", "2")]), b"");
        let b = http("a", "u", "GET", "/", &h(&[("x-b", "2"), ("x-a", "1")]), b"");
        assert_eq!(a, b);
    }
}
