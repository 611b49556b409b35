//! A thin client of Slack's Web API: `POST {api_base}/{method}` with a bearer token,
//! JSON or form bodies, and Slack's `{"ok": ..., "error": ...}` envelope.
//!
//! It honours `429` with `Retry-After`, retries transport failures and 5xx answers
//! with exponential backoff (bounded per call by a [`Retry`] policy), and logs
//! `ok: false` answers with their error code. It never logs a token or a body.
//! What to retry *beyond* one call (a card that must eventually be posted) is the
//! caller's business: see [`super::notifier`].

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;

use crate::config::Secret;

/// Largest answer we read from Slack.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SlackError {
    /// Slack answered `ok: false`.
    #[error("slack {method}: {code}")]
    Api { method: String, code: String },
    /// 429, with the wait Slack asked for.
    #[error("slack {method}: rate limited; retry after {retry_after:?}")]
    RateLimited { method: String, retry_after: Duration },
    #[error("slack {method}: HTTP {status}")]
    Http { method: String, status: u16 },
    #[error("slack {method}: {message}")]
    Transport { method: String, message: String },
    #[error("slack {method}: no answer within {timeout:?}")]
    Timeout { method: String, timeout: Duration },
    #[error("slack {method}: unreadable answer: {message}")]
    BadResponse { method: String, message: String },
}

impl SlackError {
    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            SlackError::Api { code, .. } => matches!(
                code.as_str(),
                "ratelimited"
                    | "rate_limited"
                    | "internal_error"
                    | "fatal_error"
                    | "service_unavailable"
                    | "request_timeout"
            ),
            SlackError::RateLimited { .. }
            | SlackError::Transport { .. }
            | SlackError::Timeout { .. }
            | SlackError::BadResponse { .. } => true,
            SlackError::Http { status, .. } => *status >= 500 || *status == 408,
        }
    }

    /// Slack's error code, when Slack gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            SlackError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// How long Slack asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SlackError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// How hard one call tries.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// The first backoff; doubled after each failure.
    pub backoff: Duration,
    /// The longest single wait (backoff or `Retry-After`). A longer `Retry-After`
    /// ends the call with [`SlackError::RateLimited`].
    pub max_wait: Duration,
    /// Per-attempt time limit.
    pub timeout: Duration,
}

impl Retry {
    /// Background work (cards): a few quick attempts; the queue retries beyond.
    pub const BACKGROUND: Retry = Retry {
        attempts: 3,
        backoff: Duration::from_millis(200),
        max_wait: Duration::from_secs(30),
        timeout: Duration::from_secs(10),
    };
    /// Replies to a click (ephemeral messages, membership checks).
    pub const INTERACTIVE: Retry = Retry {
        attempts: 2,
        backoff: Duration::from_millis(100),
        max_wait: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
    };
    /// `views.open`: the `trigger_id` lives 3 seconds, so one short attempt.
    pub const TRIGGER: Retry = Retry {
        attempts: 2,
        backoff: Duration::from_millis(50),
        max_wait: Duration::from_millis(500),
        timeout: Duration::from_millis(2500),
    };
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Args<'a> {
    Json(&'a Value),
    Form(&'a [(&'a str, &'a str)]),
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The Web API client. Cheap to clone.
#[derive(Clone)]
pub struct SlackApi {
    base: String,
    client: HttpsClient,
}

impl std::fmt::Debug for SlackApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackApi").field("base", &self.base).finish()
    }
}

impl SlackApi {
    /// `api_base` such as `https://slack.com/api` (no trailing slash).
    pub fn new(api_base: &str) -> Result<SlackApi, String> {
        let client = crate::upstream::https_client(crate::upstream::webpki_roots(), Duration::from_secs(5), 8)?;
        Ok(SlackApi { base: api_base.trim_end_matches('/').to_string(), client })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Calls `method`, retrying as `retry` allows. Returns Slack's answer when it is
    /// `ok: true`.
    pub async fn call(&self, method: &str, token: &Secret, args: Args<'_>, retry: Retry) -> Result<Value, SlackError> {
        let mut backoff = retry.backoff;
        let mut attempt = 1;
        loop {
            let err = match self.once(method, token, &args, retry.timeout).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let wait = match &err {
                SlackError::RateLimited { retry_after, .. } => *retry_after,
                _ => backoff,
            };
            match &err {
                SlackError::Api { code, .. } => {
                    tracing::warn!(slack.method = method, slack.error = %code, attempt, "slack api call failed")
                }
                other => {
                    tracing::warn!(slack.method = method, error = %other, attempt, "slack api call failed")
                }
            }
            if !err.retryable() || attempt >= retry.attempts.max(1) || wait > retry.max_wait {
                return Err(err);
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(retry.max_wait);
            attempt += 1;
        }
    }

    async fn once(
        &self,
        method: &str,
        token: &Secret,
        args: &Args<'_>,
        timeout: Duration,
    ) -> Result<Value, SlackError> {
        let (ctype, body) = match args {
            Args::Json(v) => ("application/json; charset=utf-8", serde_json::to_vec(v).unwrap_or_default()),
            Args::Form(pairs) => (
                "application/x-www-form-urlencoded",
                form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs.iter()).finish().into_bytes(),
            ),
        };
        let transport = |message: String| SlackError::Transport { method: method.to_string(), message };
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| transport("the token is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/{method}", self.base))
            .header(CONTENT_TYPE, ctype)
            .header(AUTHORIZATION, auth)
            .header(http::header::USER_AGENT, concat!("approvalplane/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport(e.to_string()))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| transport(crate::upstream::error_chain(&e)))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, SlackError>((status, retry_after, bytes))
        };
        let (status, retry_after, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| SlackError::Timeout { method: method.to_string(), timeout })??;
        if status.as_u16() == 429 {
            return Err(SlackError::RateLimited {
                method: method.to_string(),
                retry_after: Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 3600)),
            });
        }
        if !status.is_success() {
            return Err(SlackError::Http { method: method.to_string(), status: status.as_u16() });
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| SlackError::BadResponse { method: method.to_string(), message: e.to_string() })?;
        match v.get("ok").and_then(Value::as_bool) {
            Some(true) => Ok(v),
            Some(false) => Err(SlackError::Api {
                method: method.to_string(),
                code: v.get("error").and_then(Value::as_str).unwrap_or("unknown_error").to_string(),
            }),
            None => Err(SlackError::BadResponse { method: method.to_string(), message: "no \"ok\" field".into() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors() {
        let m = || "chat.postMessage".to_string();
        assert!(SlackError::RateLimited { method: m(), retry_after: Duration::from_secs(1) }.retryable());
        assert!(SlackError::Http { method: m(), status: 503 }.retryable());
        assert!(!SlackError::Http { method: m(), status: 404 }.retryable());
        assert!(!SlackError::Api { method: m(), code: "channel_not_found".into() }.retryable());
        assert!(SlackError::Api { method: m(), code: "internal_error".into() }.retryable());
        assert_eq!(SlackError::Api { method: m(), code: "invalid_auth".into() }.code(), Some("invalid_auth"));
    }
}
