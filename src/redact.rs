//! The one place that decides what is a secret in a request.
//!
//! Used by the policy input, logs, audit records, Slack cards and the web page, so a
//! credential can never reach any of them by a path that forgot to redact.

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Header names (lowercase) that carry credentials.
const SENSITIVE: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "x-amz-security-token",
    "x-goog-api-key",
    "private-token",
    "x-postmark-server-token",
    "x-postmark-account-token",
];

/// Whether a header's value must never be shown. `extra` is the upstream's
/// `inject_header`, which is a credential by definition.
pub fn is_sensitive_header(name: &str, extra: Option<&str>) -> bool {
    SENSITIVE.iter().any(|s| name.eq_ignore_ascii_case(s)) || extra.is_some_and(|e| name.eq_ignore_ascii_case(e)) || {
        let l = name.to_ascii_lowercase();
        l.contains("secret") || l.contains("password") || l.ends_with("-token") || l.ends_with("api-key")
    }
}

/// The header value as it may be shown.
pub fn header_value<'a>(name: &str, value: &'a str, extra: Option<&str>) -> &'a str {
    if is_sensitive_header(name, extra) {
        REDACTED
    } else {
        value
    }
}

/// Whether a display field (a summary key, say) names a credential by its name.
pub fn is_sensitive_field(name: &str) -> bool {
    let l = name.to_ascii_lowercase().replace('_', "-");
    is_sensitive_header(&l, None)
        || ["token", "secret", "password", "passwd", "credential", "private-key", "apikey", "api-key", "cookie"]
            .iter()
            .any(|w| l.contains(w))
}

/// Well-known credential shapes: API keys and tokens with a recognisable prefix.
const CREDENTIAL_PREFIXES: &[&str] = &[
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "rk_test_",
    "whsec_",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxs-",
    "xapp-",
    "ghp_",
    "gho_",
    "ghs_",
    "github_pat_",
    "glpat-",
    "AKIA",
    "AIza",
    "eyJ",
];

/// Whether one word of text looks like a credential.
pub fn looks_like_credential(word: &str) -> bool {
    let w = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-');
    w.len() >= 12 && CREDENTIAL_PREFIXES.iter().any(|p| w.starts_with(p))
}

/// `text` with every credential-looking word, and whatever follows an
/// `Authorization`-style scheme word (`Bearer`, `Basic`, `token`), replaced by
/// [`REDACTED`]. For free text shown to people: justifications, summary values.
pub fn mask_credentials(text: &str) -> std::borrow::Cow<'_, str> {
    let words: Vec<&str> = text.split(' ').collect();
    let schemes = ["bearer", "basic", "token"];
    let mut hide = vec![false; words.len()];
    for (i, w) in words.iter().enumerate() {
        if looks_like_credential(w) {
            hide[i] = true;
        }
        if schemes.iter().any(|s| w.eq_ignore_ascii_case(s)) && words.get(i + 1).is_some_and(|n| n.len() >= 8) {
            hide[i + 1] = true;
        }
    }
    if !hide.iter().any(|h| *h) {
        return std::borrow::Cow::Borrowed(text);
    }
    let out: Vec<&str> = words.iter().zip(&hide).map(|(w, h)| if *h { REDACTED } else { *w }).collect();
    std::borrow::Cow::Owned(out.join(" "))
}

/// A JSON document as it may be recorded or shown: the value of every member whose
/// name is a credential's ([`is_sensitive_field`]) is [`REDACTED`], and every string
/// is passed through [`mask_credentials`]. For agents' payloads and tool arguments.
pub fn mask_json(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(mask_credentials(s).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(mask_json).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let v = if is_sensitive_field(k) { Value::String(REDACTED.into()) } else { mask_json(v) };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// [`mask_json`] on JSON text; text that does not parse is masked as free text.
pub fn mask_json_text(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => serde_json::to_string(&mask_json(&v)).unwrap_or_default(),
        Err(_) => mask_credentials(text).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_sensitive() {
        for h in ["Authorization", "cookie", "X-Api-Key", "x-webhook-secret", "X-Slack-Token", "X-Custom-Api-Key"] {
            assert!(is_sensitive_header(h, None), "{h}");
        }
        assert!(is_sensitive_header("x-stripe-auth", Some("X-Stripe-Auth")));
        for h in ["content-type", "idempotency-key", "stripe-version", "accept"] {
            assert!(!is_sensitive_header(h, None), "{h}");
        }
    }

    #[test]
    fn credentials_in_text_are_masked() {
        let cases = [
            ("duplicate charge", "duplicate charge"),
            ("use sk_live_51Habcdefghijk please", "use [redacted] please"),
            ("header was Bearer abcdefghijkl", "header was Bearer [redacted]"),
            ("token xoxb-1234-5678-abcdef", "token [redacted]"),
            ("the token is short", "the token is short"),
        ];
        for (input, want) in cases {
            assert_eq!(mask_credentials(input), want, "{input}");
        }
        for k in ["api_key", "Authorization", "stripe_secret", "password", "session_token"] {
            assert!(is_sensitive_field(k), "{k}");
        }
        for k in ["amount", "customer", "charge"] {
            assert!(!is_sensitive_field(k), "{k}");
        }
    }

    #[test]
    fn json_documents_are_masked_by_member_name_and_credential_shape() {
        let doc = serde_json::json!({
            "amount": 2400,
            "api_key": "plain",
            "nested": {"Password": "hunter2", "note": "use sk_live_abcdefghijklmnop now", "list": ["ghp_abcdefghijklmnopqrst", 1]},
        });
        let m = mask_json(&doc);
        assert_eq!(m["amount"], 2400);
        assert_eq!(m["api_key"], REDACTED);
        assert_eq!(m["nested"]["Password"], REDACTED);
        assert_eq!(m["nested"]["note"], "use [redacted] now");
        assert_eq!(m["nested"]["list"], serde_json::json!([REDACTED, 1]));
        let text = mask_json_text(&doc.to_string());
        assert!(!text.contains("hunter2") && !text.contains("sk_live_") && text.contains("2400"), "{text}");
        assert_eq!(mask_json_text("not json sk_live_abcdefghijklmnop"), "not json [redacted]");
    }
}
