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
///
/// Records hold strings, integers, booleans, nulls, arrays and objects; for those
/// JCS is compact JSON with object members sorted by their UTF-16 code units,
/// which [`write_canonical`] writes in one pass (the audit writer seals every
/// record with it, on the request path's thread budget). A value holding a
/// non-integer number goes through `serde_jcs`, whose ECMAScript number
/// formatting is the reference. A property test checks both agree.
pub fn canonical(v: &Value) -> String {
    let mut out = String::with_capacity(256);
    if write_canonical(v, &mut out).is_ok() {
        return out;
    }
    // serde_jcs only fails on non-string map keys, which a serde_json::Value cannot hold.
    serde_jcs::to_string(v).unwrap_or_default()
}

/// A number the fast path leaves to `serde_jcs`.
#[derive(Debug)]
struct NotInteger;

fn write_canonical(v: &Value, out: &mut String) -> Result<(), NotInteger> {
    use std::fmt::Write as _;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else {
                return Err(NotInteger);
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out)?;
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut members: Vec<(&String, &Value)> = m.iter().collect();
            members.sort_unstable_by(|a, b| utf16_cmp(a.0, b.0));
            out.push('{');
            for (i, (k, x)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(x, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Member order of JCS: by UTF-16 code units (byte order for ASCII).
pub(super) fn utf16_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.cmp(b)
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// A JSON string as JCS writes it: `"` and `\` escaped, control characters as
/// `\b \t \n \f \r` or `\u00xx` (lower-case hex), everything else as is.
pub(super) fn write_string(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    // Most text needs no escape: copy it in one piece.
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// The hash of a record given without its `hash` field.
pub fn hash_of(without_hash: &Value) -> String {
    hash_canonical(&canonical(without_hash))
}

fn hash_canonical(canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(canonical.as_bytes());
    crate::fingerprint::digest_hex(&h.finalize())
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
    let v = Value::Object(m);
    let without = canonical(&v);
    let hash = hash_canonical(&without);
    // The line is the same encoding with `"hash":"…"` in its sorted place among
    // the top-level members: splice it in rather than encode everything again.
    let line = match &v {
        Value::Object(m) if !without.is_empty() => {
            let after: Vec<&String> = m.keys().filter(|k| utf16_cmp(k, "hash").is_gt()).collect();
            let member = format!("\"hash\":\"{hash}\"");
            match after.iter().min_by(|a, b| utf16_cmp(a, b)) {
                // The first member after "hash": insert before it.
                Some(next) => {
                    let mut key = String::new();
                    write_string(next, &mut key);
                    let at = top_level_member_start(&without, &key);
                    match at {
                        Some(at) => format!("{}{member},{}", &without[..at], &without[at..]),
                        None => reencode(v, &hash),
                    }
                }
                None if without == "{}" => format!("{{{member}}}"),
                None => format!("{},{member}}}", &without[..without.len() - 1]),
            }
        }
        _ => reencode(v, &hash),
    };
    (line, hash)
}

/// Seals an event: [`seal`] over its fields, encoded from the typed event without
/// a `Value` tree when it can be (see [`super::typed`]); the same bytes either way.
pub fn seal_event(h: &Header<'_>, event: &super::event::Event) -> (String, String) {
    match seal_typed(h, event) {
        Ok(sealed) => sealed,
        Err(super::typed::Unsupported) => seal(h, event.fields()),
    }
}

fn seal_typed(h: &Header<'_>, event: &super::event::Event) -> Result<(String, String), super::typed::Unsupported> {
    use super::typed::{members, write_object};
    use std::fmt::Write as _;
    // Every member's value text goes into one buffer.
    let mut text = String::with_capacity(1024);
    let mut m = members(event, &mut text)?;
    // As in `seal`: the header fields win over an event field of the same name.
    m.retain(|(k, _)| !matches!(&**k, "v" | "chain" | "seq" | "ts" | "prev" | "hash"));
    for (k, v) in [("chain", h.chain), ("ts", h.ts), ("prev", h.prev)] {
        let start = text.len();
        write_string(v, &mut text);
        m.push((k.into(), start..text.len()));
    }
    for (k, n) in [("v", VERSION), ("seq", h.seq)] {
        let start = text.len();
        let _ = write!(text, "{n}");
        m.push((k.into(), start..text.len()));
    }
    let mut without = String::with_capacity(text.len() + 32 * m.len());
    // Where the first member after "hash" starts: the hash goes in there.
    let after_hash = write_object(&mut m, &text, &mut without, "hash")?;
    let hash = hash_canonical(&without);
    let mut line = String::with_capacity(without.len() + 80);
    let member = |line: &mut String| {
        line.push_str("\"hash\":\"");
        line.push_str(&hash);
        line.push('"');
    };
    if after_hash + 1 == without.len() {
        // Nothing sorts after "hash": it goes last.
        line.push_str(&without[..after_hash]);
        if after_hash > 1 {
            line.push(',');
        }
        member(&mut line);
        line.push('}');
    } else {
        // `without[..after_hash]` ends with `{` or `,`.
        line.push_str(&without[..after_hash]);
        member(&mut line);
        line.push(',');
        line.push_str(&without[after_hash..]);
    }
    Ok((line, hash))
}

fn reencode(v: Value, hash: &str) -> String {
    let mut v = v;
    v["hash"] = Value::from(hash);
    canonical(&v)
}

/// Where the top-level member whose encoded key is `key` starts in `canonical`.
fn top_level_member_start(canonical: &str, key: &str) -> Option<usize> {
    let b = canonical.as_bytes();
    let (mut depth, mut in_str, mut esc) = (0i32, false, false);
    for (i, &c) in b.iter().enumerate() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => {
                if depth == 1 && (b[i - 1] == b'{' || b[i - 1] == b',') && canonical[i..].starts_with(key) {
                    return Some(i);
                }
                in_str = true;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            _ => {}
        }
    }
    None
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

    fn reference(v: &Value) -> String {
        serde_jcs::to_string(v).unwrap()
    }

    fn arb_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            "[a-z\\u{0}-\\u{1f}\"\\\\/\\u{7f}-\\u{a0}\\u{2028}\\u{e9}\\u{1f600}]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                // serde_jcs orders astral-plane keys by code point, not by UTF-16 code
                // units as RFC 8785 says: the reference holds for keys in the BMP
                // (the RFC's own example below covers the rest).
                proptest::collection::vec(("[a-zA-Z_\\u{e9}\\u{ff61}\\u{20ac}]{0,6}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn the_fast_encoding_is_jcs(v in arb_value()) {
            proptest::prop_assert_eq!(canonical(&v), reference(&v));
        }

        #[test]
        fn sealing_splices_the_hash_where_jcs_puts_it(v in arb_value()) {
            let Value::Object(mut m) = v else { return Ok(()) };
            m.insert("kind".into(), Value::from("decision"));
            let (line, hash) = seal(&Header { chain: "c", seq: 3, ts: "t", prev: GENESIS_PREV }, m);
            let parsed: Value = serde_json::from_str(&line).unwrap();
            proptest::prop_assert_eq!(&line, &reference(&parsed));
            let mut without = parsed.clone();
            without.as_object_mut().unwrap().remove("hash");
            proptest::prop_assert_eq!(hash_of(&without), hash);
        }
    }

    fn arb_text() -> impl proptest::strategy::Strategy<Value = String> {
        "[a-z\\u{0}-\\u{1f}\"\\\\/\\u{7f}-\\u{a0}\\u{2028}\\u{e9}\\u{1f600}]{0,10}"
    }

    /// Every kind of event, with hostile text everywhere and any summary.
    fn arb_event() -> impl proptest::strategy::Strategy<Value = crate::audit::event::Event> {
        use crate::audit::event::{Event, Subject};
        use proptest::prelude::*;
        let subject = (arb_text(), arb_text(), proptest::collection::vec(arb_text(), 0..3), any::<bool>()).prop_map(
            |(agent, action, rule_ids, http)| Subject {
                agent,
                action: action.clone(),
                body_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
                rule_ids,
                policy_bundle: "sha256:abc".into(),
                entrance: if http { "http" } else { "api" }.into(),
                upstream: http.then(|| "stripe".to_string()),
                target: http.then_some(action),
            },
        );
        let summary = arb_value().prop_map(|v| match v {
            Value::Object(m) => m,
            other => [("value".to_string(), other)].into_iter().collect(),
        });
        (subject, arb_text(), proptest::option::of(arb_text()), summary, any::<u64>(), 0usize..8).prop_map(
            |(subject, t, o, summary, n, which)| match which {
                0 => Event::Decision {
                    subject,
                    request_id: t.clone(),
                    decision: "allow".into(),
                    matched: "allow".into(),
                    shadow: n % 2 == 0,
                    reason: t,
                    approval_id: o.clone(),
                    error: o.clone(),
                    payload_json: o.clone(),
                    justification: o,
                },
                1 => Event::ApprovalRequested {
                    subject,
                    approval_id: t.clone(),
                    routes: vec![t.clone(), "finance".into()],
                    risk: "high".into(),
                    risk_reason: t,
                    summary,
                    justification: o.clone(),
                    quorum: n as u32,
                    expires_at: "2026-11-24T00:00:00Z".into(),
                    escalate_at: o,
                },
                2 => Event::ApprovalDecided {
                    subject,
                    approval_id: t.clone(),
                    verdict: "approve".into(),
                    status: "approved".into(),
                    decided_by: t.clone(),
                    channel: "slack".into(),
                    reason: o,
                    approvals: vec![t],
                    quorum: 2,
                },
                3 => Event::Forwarded {
                    subject,
                    request_id: t,
                    approval_id: o,
                    status: Some(n as u16),
                    outcome: if n % 2 == 0 { "ok".into() } else { "unknown".into() },
                    error: (n % 2 == 1).then(|| "timeout".to_string()),
                    latency_ms: n,
                },
                4 => Event::GrantUsed {
                    subject,
                    request_id: t.clone(),
                    approval_id: t,
                    decided_by: o,
                    approvals: vec![],
                },
                5 => Event::Checkpoint { through_seq: n, through_hash: t, key_id: o.clone(), signature: o },
                6 => Event::Recovery { file: t.clone(), torn_bytes: n, moved_to: t, last_seq: o.map(|_| n) },
                _ => Event::Shutdown { reason: t.clone(), interrupted: vec![t; (n % 3) as usize] },
            },
        )
    }

    proptest::proptest! {
        /// The typed encoding seals to the same bytes and hash as the `Value` path.
        #[test]
        fn sealing_a_typed_event_matches_the_value_path(e in arb_event(), seq in proptest::prelude::any::<u64>()) {
            let h = Header { chain: "01a2", seq, ts: "2026-11-24T04:07:49.603Z", prev: GENESIS_PREV };
            proptest::prop_assert_eq!(seal_event(&h, &e), seal(&h, e.fields()));
        }
    }

    #[test]
    fn records_take_the_typed_path() {
        use crate::audit::event::Event;
        let h = Header { chain: "c", seq: 1, ts: "t", prev: GENESIS_PREV };
        let e = Event::Shutdown { reason: "SIGTERM".into(), interrupted: vec!["apr_1".into()] };
        let (line, _) = seal_typed(&h, &e).expect("no fallback for a plain record");
        assert!(line.starts_with("{\"chain\":\"c\",\"hash\":\""), "{line}");
        let float = Event::ApprovalRequested {
            subject: Default::default(),
            approval_id: "a".into(),
            routes: vec![],
            risk: "low".into(),
            risk_reason: String::new(),
            summary: [("amount".to_string(), serde_json::json!(1.5))].into_iter().collect(),
            justification: None,
            quorum: 1,
            expires_at: String::new(),
            escalate_at: None,
        };
        assert!(seal_typed(&h, &float).is_err(), "a float goes to the reference encoding");
        assert_eq!(seal_event(&h, &float), seal(&h, float.fields()));
    }

    /// RFC 8785 §3.2.3: members sorted by UTF-16 code units.
    #[test]
    fn the_rfc_sorting_example() {
        let v: Value = serde_json::from_str(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        let want = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
                    \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
                    \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(canonical(&v), want);
    }

    #[test]
    fn floats_fall_back_to_the_reference() {
        let v = serde_json::json!({"x": 1.5, "y": 1e21, "z": [0.1]});
        assert_eq!(canonical(&v), reference(&v));
    }
}
