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
}
