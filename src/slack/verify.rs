//! Slack's request signatures (v0): HMAC-SHA256 over `v0:{timestamp}:{raw body}`
//! with the app's signing secret, sent as `X-Slack-Signature: v0=<hex>` beside
//! `X-Slack-Request-Timestamp`.
//!
//! Pure: no I/O and no clock of its own (the caller passes `now`). The replay cache
//! (a signature is accepted once) lives in the store and is applied by the caller
//! after this check passes.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a request's timestamp may be from now, either way.
pub const WINDOW_SECS: u64 = 5 * 60;

/// Why a request was refused. Each one is answered 401 and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("the timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("the timestamp is {skew_secs}s away from now (the window is {WINDOW_SECS}s)")]
    Stale { skew_secs: u64 },
    #[error("the signature is not of the form v0=<64 hex digits>")]
    Malformed,
    #[error("the signature does not match")]
    Mismatch,
}

/// The `v0=<hex>` signature of `body` sent at `timestamp`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!("v0={}", hex::encode(mac(secret, timestamp, body).finalize().into_bytes()))
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(b"v0:");
    m.update(timestamp.as_bytes());
    m.update(b":");
    m.update(body);
    m
}

/// Checks a request: the timestamp within [`WINDOW_SECS`] of `now_secs`, then the
/// signature in constant time. The body is not parsed.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: u64,
) -> Result<(), SignatureError> {
    let timestamp = timestamp.ok_or(SignatureError::MissingHeader("X-Slack-Request-Timestamp"))?.trim();
    let signature = signature.ok_or(SignatureError::MissingHeader("X-Slack-Signature"))?.trim();
    if timestamp.is_empty() || timestamp.len() > 12 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::BadTimestamp);
    }
    let ts: u64 = timestamp.parse().map_err(|_| SignatureError::BadTimestamp)?;
    let skew_secs = ts.abs_diff(now_secs);
    if skew_secs > WINDOW_SECS {
        return Err(SignatureError::Stale { skew_secs });
    }
    let hex_part = signature.strip_prefix("v0=").ok_or(SignatureError::Malformed)?;
    if hex_part.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let given = hex::decode(hex_part).map_err(|_| SignatureError::Malformed)?;
    // `verify_slice` compares in constant time.
    mac(secret, timestamp, body).verify_slice(&given).map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Slack's published example (docs: "Verifying requests from Slack").
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TIMESTAMP: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slack_published_test_vector() {
        assert_eq!(sign(SECRET.as_bytes(), TIMESTAMP, BODY.as_bytes()), SIGNATURE);
        assert_eq!(verify(SECRET.as_bytes(), Some(TIMESTAMP), Some(SIGNATURE), BODY.as_bytes(), 1531420618), Ok(()));
    }

    #[test]
    fn refusals() {
        let s = SECRET.as_bytes();
        let b = BODY.as_bytes();
        let now = 1531420618;
        type Case<'a> = (Option<&'a str>, Option<&'a str>, &'a [u8], u64, SignatureError);
        let cases: Vec<Case> = vec![
            (None, Some(SIGNATURE), b, now, SignatureError::MissingHeader("X-Slack-Request-Timestamp")),
            (Some(TIMESTAMP), None, b, now, SignatureError::MissingHeader("X-Slack-Signature")),
            (Some("x1531420618"), Some(SIGNATURE), b, now, SignatureError::BadTimestamp),
            (Some(TIMESTAMP), Some(SIGNATURE), b, now + 301, SignatureError::Stale { skew_secs: 301 }),
            (Some(TIMESTAMP), Some(SIGNATURE), b, now - 301, SignatureError::Stale { skew_secs: 301 }),
            (Some(TIMESTAMP), Some(&SIGNATURE[3..]), b, now, SignatureError::Malformed),
            (Some(TIMESTAMP), Some("v0=zz"), b, now, SignatureError::Malformed),
            (Some(TIMESTAMP), Some(SIGNATURE), b"token=changed", now, SignatureError::Mismatch),
            (
                Some(TIMESTAMP),
                Some("v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b504"),
                b,
                now,
                SignatureError::Mismatch,
            ),
        ];
        for (ts, sig, body, now, want) in cases {
            assert_eq!(verify(s, ts, sig, body, now), Err(want.clone()), "{want}");
        }
        // The edges of the window are inside it.
        assert_eq!(verify(s, Some(TIMESTAMP), Some(SIGNATURE), b, now + 300), Ok(()));
        assert_eq!(verify(s, Some(TIMESTAMP), Some(SIGNATURE), b, now - 300), Ok(()));
        // Another secret does not verify.
        assert_eq!(verify(b"other", Some(TIMESTAMP), Some(SIGNATURE), b, now), Err(SignatureError::Mismatch));
    }
}
