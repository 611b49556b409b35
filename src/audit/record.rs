//! The record format: canonical JSON (RFC 8785), hash-chained.
//!
//! A record is one JSON object per line with `v`, `chain`, `seq`, `ts`, `kind`, the
//! kind's fields, `prev` (the previous record's hash) and `hash`. The hash is
//! SHA-256 over a domain prefix and the JCS encoding of the record without `hash`;
//! the line itself is the JCS encoding of the whole record, so any re-formatting
//! (white space, key order, number spelling) shows as non-canonical.
//!
//! Pure: no I/O. Used by the writer and the verifier.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Record format version.
pub const VERSION: u64 = 1;
/// Domain separation for record hashes.
pub const HASH_DOMAIN: &[u8] = b"approvalplane.audit.record.v1\n";
/// `prev` of a chain's first record.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// JCS (RFC 8785) encoding.
pub fn canonical(v: &Value) -> String {
    // serde_jcs only fails on non-string map keys, which a serde_json::Value cannot hold.
    serde_jcs::to_string(v).unwrap_or_default()
}

/// The hash of a record given without its `hash` field.
pub fn hash_of(without_hash: &Value) -> String {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(canonical(without_hash).as_bytes());
    hex::encode(h.finalize())
}

/// The header fields every record carries.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    pub chain: &'a str,
    pub seq: u64,
    pub ts: &'a str,
    pub prev: &'a str,
}

/// Builds a sealed record from the kind's fields (which include `kind`).
/// Returns the line (without newline) and the record's hash.
pub fn seal(h: &Header<'_>, fields: Map<String, Value>) -> (String, String) {
    let mut m = fields;
    m.insert("v".into(), Value::from(VERSION));
    m.insert("chain".into(), Value::from(h.chain));
    m.insert("seq".into(), Value::from(h.seq));
    m.insert("ts".into(), Value::from(h.ts));
    m.insert("prev".into(), Value::from(h.prev));
    m.remove("hash");
    let mut v = Value::Object(m);
    let hash = hash_of(&v);
    v["hash"] = Value::from(hash.clone());
    (canonical(&v), hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sealed_lines_are_canonical_and_verify() {
        let fields = json!({"kind": "decision", "agent": "a", "z": 1, "amount_text": "2400.00"});
        let (line, hash) = seal(
            &Header { chain: "c1", seq: 0, ts: "2026-11-23T20:36:33.000Z", prev: GENESIS_PREV },
            fields.as_object().unwrap().clone(),
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(canonical(&v), line);
        let mut without = v.clone();
        without.as_object_mut().unwrap().remove("hash");
        assert_eq!(hash_of(&without), hash);
        assert!(line.starts_with("{\"agent\":\"a\""), "keys sorted: {line}");
    }
}
