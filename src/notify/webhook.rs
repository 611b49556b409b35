//! The generic webhook notifier: one signed JSON POST per change of an approval,
//! for each route that has `webhook_url_*` (and `webhook_secret_*`: without one, the
//! POST is unsigned, and `config check` and `serve` warn). It reaches any pager or
//! push service that can take a webhook.
//!
//! The request:
//! - body: `{"type": "approval.<change>", "delivery", "route", "created_at",
//!   "url", "approval": <the approval object of INTERFACE.md §4>}`;
//! - `X-ApprovalPlane-Timestamp`: Unix seconds of this attempt;
//! - `X-ApprovalPlane-Signature`: `v1=` and the hex HMAC-SHA256, keyed with the
//!   route's webhook secret, of `<timestamp>.<body>` (see [`signature`]);
//! - `X-ApprovalPlane-Delivery`: the same id on every retry of one notification, so
//!   a receiver can drop duplicates;
//! - `X-ApprovalPlane-Event`: the `type`.
//!
//! A receiver recomputes the signature over the raw body, compares in constant
//! time, and refuses timestamps more than five minutes away from its clock. The
//! body never carries a sign-in link: a webhook is a shared channel.

use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{HeaderName, HeaderValue};
use rand::RngCore;
use serde_json::json;
use sha2::Sha256;

use super::deliver::{Job, Outbox, PerAttempt, Target};
use super::{Change, Notifier};
use crate::approval::Approval;
use crate::clock::Clock;
use crate::config::Secret;
use crate::reload::LiveSecrets;

pub const TIMESTAMP_HEADER: &str = "x-approvalplane-timestamp";
pub const SIGNATURE_HEADER: &str = "x-approvalplane-signature";
pub const DELIVERY_HEADER: &str = "x-approvalplane-delivery";
pub const EVENT_HEADER: &str = "x-approvalplane-event";

/// `v1=` and the hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("hmac takes any key length"));
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    format!("v1={}", hex::encode(m.finalize().into_bytes()))
}

pub struct WebhookNotifier {
    route: String,
    /// The route's URL and secret, read at each notification (a reload may rotate them).
    secrets: LiveSecrets,
    public_url: String,
    outbox: Outbox,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookNotifier").field("route", &self.route).finish_non_exhaustive()
    }
}

impl WebhookNotifier {
    /// The webhook of `route`: its `webhook_url_*` and `webhook_secret_*` are read
    /// from `secrets` when a change is published.
    pub fn new(
        route: &str,
        secrets: LiveSecrets,
        public_url: &str,
        outbox: Outbox,
        clock: Arc<dyn Clock>,
    ) -> WebhookNotifier {
        WebhookNotifier {
            route: route.to_string(),
            secrets,
            public_url: public_url.trim_end_matches('/').to_string(),
            outbox,
            clock,
        }
    }

    /// Where to post and what to sign with, as the current config says.
    /// `None` for the secret: the route names none, and its webhooks go unsigned.
    fn endpoint(&self) -> Option<(Target, Option<Secret>)> {
        // One read, so the URL and the secret come from the same reload.
        let current = self.secrets.read(|c, s| {
            let r = c.routes.get(&self.route)?;
            let secret = match &r.webhook_secret {
                // Named but not set: never fall back to unsigned.
                Some(sr) => Some(s.get(sr)?.clone()),
                None => None,
            };
            Some((s.get(r.webhook_url.as_ref()?)?.clone(), secret))
        });
        let Some((url, secret)) = current else {
            tracing::debug!(route = %self.route, "webhook no longer configured; not sent");
            return None;
        };
        match Target::parse(&format!("routes.{}.webhook_url", self.route), url.expose()) {
            Ok(t) => Some((t, secret)),
            Err(e) => {
                tracing::warn!(route = %self.route, error = %e, "webhook not sent");
                None
            }
        }
    }
}

impl Notifier for WebhookNotifier {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn publish(&self, change: Change, a: &Approval) {
        if !a.deciding_routes().any(|r| r == &self.route) {
            return;
        }
        let Some((target, secret)) = self.endpoint() else { return };
        let mut id = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut id);
        let delivery = format!("dlv_{}", hex::encode(id));
        let kind = format!("approval.{}", change.as_str());
        let body = json!({
            "type": kind,
            "delivery": delivery,
            "route": self.route,
            "created_at": self.clock.now(),
            "url": format!("{}/ui/approvals/{}", self.public_url, a.id),
            "approval": a.to_json(),
        });
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let mut headers = vec![];
        for (k, v) in [(DELIVERY_HEADER, delivery.as_str()), (EVENT_HEADER, kind.as_str())] {
            if let Ok(v) = HeaderValue::from_str(v) {
                headers.push((HeaderName::from_static(k), v));
            }
        }
        let sign: PerAttempt = Arc::new(move |ts: u64, body: &[u8]| {
            let mut out = vec![(HeaderName::from_static(TIMESTAMP_HEADER), HeaderValue::from(ts))];
            if let Some(secret) = &secret {
                let sig = signature(secret.expose().as_bytes(), ts, body);
                if let Ok(v) = HeaderValue::from_str(&sig) {
                    out.push((HeaderName::from_static(SIGNATURE_HEADER), v));
                }
            }
            out
        });
        self.outbox.send(Job {
            target,
            body,
            content_type: "application/json",
            headers,
            per_attempt: Some(sign),
            to: format!("route {}", self.route),
            approval_id: a.id.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            signature(b"whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        assert_ne!(signature(b"k", 1, b"x"), signature(b"k", 2, b"x"));
    }
}
