//! Delivery of notifications over HTTP: a bounded queue per notifier, a few
//! deliveries at a time, retries with exponential backoff and jitter.
//!
//! [`Outbox::send`] never waits: a full queue drops the notification, counts it in
//! `approvalplane_notifier_errors` and logs it. A delivery that still fails after
//! its last attempt is counted and logged the same way. Approvals stay visible on
//! the web page and through the admin API whatever happens here.
//!
//! Notifications queued in memory are lost when the process stops.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use rand::Rng;
use tokio::sync::{mpsc, Semaphore};

use crate::clock::Clock;
use crate::metrics::Metrics;

/// Why a notifier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{key}: {message}")]
    BadUrl { key: String, message: String },
    #[error("notification client: {0}")]
    Tls(String),
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The wait after the first failure; doubled after each further one.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Per-attempt limit on the whole exchange.
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 6,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Retry {
    /// The wait before attempt `n + 1` (n ≥ 1): exponential, with up to 25% jitter.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self.first_backoff.saturating_mul(1u32 << (n.saturating_sub(1)).min(16)).min(self.max_backoff);
        let jitter = rand::thread_rng().gen_range(0.0..0.25);
        base + base.mul_f64(jitter)
    }
}

/// A parsed destination: the URI to post to, its Host, and Basic credentials
/// taken from the URL's userinfo (`https://user:pass@host/...`).
#[derive(Clone)]
pub struct Target {
    pub uri: Uri,
    host: HeaderValue,
    basic: Option<HeaderValue>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may itself be a secret (an ntfy topic, a webhook token): log the host only.
        f.debug_struct("Target").field("host", &self.host).finish_non_exhaustive()
    }
}

impl Target {
    /// Parses an `http://` or `https://` URL. `key` names the config key in errors.
    pub fn parse(key: &str, url: &str) -> Result<Target, NotifyError> {
        let bad = |message: &str| NotifyError::BadUrl { key: key.to_string(), message: message.to_string() };
        let uri: Uri = url.trim().parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri.scheme_str().ok_or_else(|| bad("needs http:// or https://"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("needs http:// or https://"));
        }
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?.as_str();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if hostport.is_empty() {
            return Err(bad("has no host"));
        }
        let basic = match userinfo {
            Some(u) => {
                use base64::Engine as _;
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                let creds = format!(
                    "{}:{}",
                    pct_decode(user).ok_or_else(|| bad("bad credentials"))?,
                    pct_decode(pass).ok_or_else(|| bad("bad credentials"))?
                );
                let mut v = HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(creds)
                ))
                .map_err(|_| bad("bad credentials"))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let clean: Uri = format!("{scheme}://{hostport}{pq}").parse().map_err(|_| bad("not a URL"))?;
        let host = HeaderValue::from_str(hostport).map_err(|_| bad("bad host"))?;
        Ok(Target { uri: clean, host, basic })
    }

    /// The same server with another path (ntfy's JSON publishing goes to the root).
    pub fn with_path(&self, path: &str) -> Result<Target, NotifyError> {
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = Some(
            path.parse()
                .map_err(|_| NotifyError::BadUrl { key: "url".into(), message: format!("bad path {path:?}") })?,
        );
        let uri =
            Uri::from_parts(parts).map_err(|e| NotifyError::BadUrl { key: "url".into(), message: e.to_string() })?;
        Ok(Target { uri, host: self.host.clone(), basic: self.basic.clone() })
    }
}

/// Percent-decoding of URL userinfo (`+` stays a plus).
fn pct_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The HTTP client every notifier shares (webpki roots, HTTP/1.1, pooled).
#[derive(Clone)]
pub struct Poster {
    client: HttpsClient,
}

impl std::fmt::Debug for Poster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Poster")
    }
}

impl Poster {
    pub fn new() -> Result<Poster, NotifyError> {
        let client = crate::upstream::https_client(crate::upstream::webpki_roots(), Duration::from_secs(5), 4)
            .map_err(NotifyError::Tls)?;
        Ok(Poster { client })
    }
}

/// Headers that are computed for each attempt (a signature over a fresh timestamp).
pub type PerAttempt = Arc<dyn Fn(u64, &[u8]) -> Vec<(HeaderName, HeaderValue)> + Send + Sync>;

/// One notification to deliver.
pub struct Job {
    pub target: Target,
    pub body: Bytes,
    pub content_type: &'static str,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Called with the attempt's Unix time (seconds) and the body.
    pub per_attempt: Option<PerAttempt>,
    /// For logs: the route or approver it is for, and the approval.
    pub to: String,
    pub approval_id: String,
}

/// What one attempt came to.
enum Attempt {
    Delivered(u16),
    /// Worth retrying: a network error, a timeout, 408, 425, 429 or 5xx.
    Retry(String),
    /// Not worth retrying: another 4xx.
    GiveUp(String),
}

struct Ctx {
    name: &'static str,
    poster: Poster,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    retry: Retry,
}

impl Ctx {
    async fn attempt(&self, job: &Job) -> Attempt {
        let mut b = Request::builder().method(http::Method::POST).uri(job.target.uri.clone());
        let Some(h) = b.headers_mut() else { return Attempt::GiveUp("request builder".into()) };
        h.insert(HOST, job.target.host.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static(job.content_type));
        h.insert(USER_AGENT, HeaderValue::from_static(concat!("approvalplane/", env!("CARGO_PKG_VERSION"))));
        if let Some(v) = &job.target.basic {
            h.insert(AUTHORIZATION, v.clone());
        }
        for (k, v) in &job.headers {
            h.insert(k.clone(), v.clone());
        }
        if let Some(f) = &job.per_attempt {
            for (k, v) in f(self.clock.now().0 / 1000, &job.body) {
                h.insert(k, v);
            }
        }
        let req = match b.body(Full::new(job.body.clone())) {
            Ok(r) => r,
            Err(e) => return Attempt::GiveUp(e.to_string()),
        };
        let exchange = async {
            let resp = self.client_request(req).await?;
            let status = resp.status();
            // Drain the (small) body so the connection can be reused.
            let _ = resp.into_body().collect().await;
            Ok::<_, String>(status)
        };
        match tokio::time::timeout(self.retry.timeout, exchange).await {
            Err(_) => Attempt::Retry(format!("no answer within {:?}", self.retry.timeout)),
            Ok(Err(e)) => Attempt::Retry(e),
            Ok(Ok(s)) if s.is_success() => Attempt::Delivered(s.as_u16()),
            Ok(Ok(s)) if s.is_server_error() || matches!(s.as_u16(), 408 | 425 | 429) => {
                Attempt::Retry(format!("status {}", s.as_u16()))
            }
            Ok(Ok(s)) => Attempt::GiveUp(format!("status {}", s.as_u16())),
        }
    }

    async fn client_request(&self, req: Request<Full<Bytes>>) -> Result<http::Response<hyper::body::Incoming>, String> {
        self.poster.client.request(req).await.map_err(|e| crate::upstream::error_chain(&e))
    }

    async fn deliver(&self, job: Job) {
        let mut last = String::new();
        for n in 1..=self.retry.attempts.max(1) {
            match self.attempt(&job).await {
                Attempt::Delivered(status) => {
                    tracing::debug!(notifier = self.name, to = %job.to, approval.id = %job.approval_id, status, attempt = n, "notification delivered");
                    return;
                }
                Attempt::GiveUp(e) => {
                    last = e;
                    break;
                }
                Attempt::Retry(e) => {
                    tracing::info!(notifier = self.name, to = %job.to, approval.id = %job.approval_id, attempt = n, error = %e, "notification failed; will retry");
                    last = e;
                    if n < self.retry.attempts {
                        tokio::time::sleep(self.retry.backoff(n)).await;
                    }
                }
            }
        }
        self.metrics.notifier_errors.get_or_create(&vec![("notifier", self.name.to_string())]).inc();
        tracing::warn!(notifier = self.name, to = %job.to, approval.id = %job.approval_id, error = %last, "notification not delivered");
    }
}

/// The queue of one notifier, with its worker.
pub struct Outbox {
    name: &'static str,
    tx: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("name", &self.name).finish()
    }
}

/// Notifications waiting per notifier before new ones are dropped.
const QUEUE: usize = 1024;
/// Deliveries in flight per notifier.
const IN_FLIGHT: usize = 8;

impl Outbox {
    /// Starts the worker; needs a tokio runtime.
    pub fn start(
        name: &'static str,
        poster: Poster,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        retry: Retry,
    ) -> Outbox {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let ctx = Arc::new(Ctx { name, poster, metrics: metrics.clone(), clock, retry });
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    ctx.deliver(job).await;
                    drop(permit);
                });
            }
        });
        Outbox { name, tx, metrics }
    }

    /// Queues `job` without waiting.
    pub fn send(&self, job: Job) {
        if let Err(e) = self.tx.try_send(job) {
            let (why, job) = match e {
                mpsc::error::TrySendError::Full(j) => ("queue full", j),
                mpsc::error::TrySendError::Closed(j) => ("worker stopped", j),
            };
            self.metrics.notifier_errors.get_or_create(&vec![("notifier", self.name.to_string())]).inc();
            tracing::warn!(notifier = self.name, to = %job.to, approval.id = %job.approval_id, error = why, "notification dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_credentials_out_of_the_url() {
        let t = Target::parse("k", "https://user:p%40ss@ntfy.example.com/topic").expect("parses");
        assert_eq!(t.uri.to_string(), "https://ntfy.example.com/topic");
        assert_eq!(t.host, "ntfy.example.com");
        use base64::Engine as _;
        let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("user:p@ss"));
        assert_eq!(t.basic.as_ref().map(|v| v.to_str().unwrap_or("")), Some(want.as_str()));
        assert!(Target::parse("k", "ftp://x/y").is_err());
        assert!(Target::parse("k", "not a url").is_err());
        let root = t.with_path("/").expect("root");
        assert_eq!(root.uri.to_string(), "https://ntfy.example.com/");
        assert!(format!("{t:?}").contains("ntfy.example.com") && !format!("{t:?}").contains("topic"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = Retry {
            attempts: 5,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            timeout: Duration::from_secs(1),
        };
        let b1 = r.backoff(1);
        let b2 = r.backoff(2);
        let b4 = r.backoff(4);
        assert!(b1 >= Duration::from_millis(100) && b1 < Duration::from_millis(126), "{b1:?}");
        assert!(b2 >= Duration::from_millis(200) && b2 < Duration::from_millis(251), "{b2:?}");
        assert!(b4 >= Duration::from_millis(350) && b4 < Duration::from_millis(438), "{b4:?}");
    }
}
