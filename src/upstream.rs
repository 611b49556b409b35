//! The forwarder: the only code that talks to upstreams.
//!
//! Pooled hyper clients per upstream, one pool per agent worker thread (see
//! [`use_pool_of_worker`]), with rustls (webpki roots plus the upstream's optional
//! `ca_file`), connect and response timeouts, a cap on concurrent requests shared
//! by the pools, and credential injection. It sends a [`StoredRequest`]
//! exactly as stored: the approved bytes, never a re-encoding.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use crate::approval::StoredRequest;
use crate::config::{Secret, UpstreamConfig};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {name}: ca_file {path}: {message}")]
    CaFile { name: String, path: String, message: String },
    #[error("upstream {name}: {message}")]
    Tls { name: String, message: String },
    #[error("upstream {name}: inject value is not a valid header value")]
    InjectValue { name: String },
}

/// Why a forward failed. `Connect` means no byte of the request was sent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Failed(String),
}

impl ForwardError {
    /// Whether the upstream may have received the request.
    pub fn maybe_sent(&self) -> bool {
        !matches!(self, ForwardError::Connect(_))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ForwardError::Connect(_) => "connect_failed",
            ForwardError::Timeout(_) => "timeout",
            ForwardError::Failed(_) => "error",
        }
    }
}

pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How many connection pools an upstream keeps at most: one per agent worker
/// thread, and one for every other thread; workers beyond it share.
const MAX_POOLS: usize = 17;

thread_local! {
    /// The pool this thread's forwards use (0: threads that are not agent workers).
    static POOL: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread, agent worker `index` (from 0), forward through pools
/// of its own. A pooled connection's task runs on the runtime that opened it, so
/// a connection shared between two current-thread workers would cost a cross-thread
/// wake-up on every request and response; with one pool per worker a forward stays
/// on its worker's thread.
pub fn use_pool_of_worker(index: usize) {
    POOL.with(|p| p.set(1 + index % (MAX_POOLS - 1)));
}

pub struct Upstream {
    pub name: String,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    host: HeaderValue,
    base_path: String,
    /// Pool 0, built with the upstream (its connector is what the others copy).
    client: HttpsClient,
    connector: HttpsConnector<HttpConnector>,
    max_idle: usize,
    /// Pools 1.., one per agent worker, made on first use.
    worker_pools: Box<[OnceLock<HttpsClient>]>,
    inject: Option<(HeaderName, HeaderValue)>,
    response_timeout: Duration,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("authority", &self.authority).finish()
    }
}

/// The public web's trust roots (webpki).
pub fn webpki_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

/// A pooled client for `http://` and `https://` (rustls with `roots`, HTTP/1.1): the
/// one way this crate builds outbound clients (upstreams, notifiers, Slack).
pub fn https_client(
    roots: rustls::RootCertStore,
    connect_timeout: Duration,
    max_idle_per_host: usize,
) -> Result<HttpsClient, String> {
    Ok(client_on(https_connector(roots, connect_timeout)?, max_idle_per_host))
}

fn https_connector(
    roots: rustls::RootCertStore,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // ALPN is set by the connector builder.
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

fn client_on(connector: HttpsConnector<HttpConnector>, max_idle_per_host: usize) -> HttpsClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle_per_host)
        .retry_canceled_requests(false)
        .build(connector)
}

/// The webpki roots plus the upstream's `ca_file`.
fn roots(cfg: &UpstreamConfig) -> Result<rustls::RootCertStore, UpstreamError> {
    let mut roots = webpki_roots();
    if let Some(path) = &cfg.ca_file {
        let ca_err = |message: String| UpstreamError::CaFile {
            name: cfg.name.clone(),
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| ca_err(e.to_string()))?;
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(ca_err("holds no PEM certificate".into()));
        }
    }
    Ok(roots)
}

impl Upstream {
    pub fn build(cfg: &UpstreamConfig, inject_value: Option<&Secret>) -> Result<Upstream, UpstreamError> {
        let connector = https_connector(roots(cfg)?, cfg.connect_timeout)
            .map_err(|message| UpstreamError::Tls { name: cfg.name.clone(), message })?;
        let client = client_on(connector.clone(), cfg.max_connections);
        let parts = cfg.url.clone().into_parts();
        let scheme = parts.scheme.unwrap_or(http::uri::Scheme::HTTPS);
        let authority = parts.authority.expect("validated: upstream url has a host");
        let base_path = parts.path_and_query.map(|p| p.path().trim_end_matches('/').to_string()).unwrap_or_default();
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| UpstreamError::Tls {
            name: cfg.name.clone(),
            message: "host is not a valid header value".into(),
        })?;
        let inject = match (&cfg.inject_header, inject_value) {
            (Some(h), Some(v)) => {
                let mut hv = HeaderValue::from_str(v.expose())
                    .map_err(|_| UpstreamError::InjectValue { name: cfg.name.clone() })?;
                hv.set_sensitive(true);
                Some((h.clone(), hv))
            }
            _ => None,
        };
        Ok(Upstream {
            name: cfg.name.clone(),
            scheme,
            authority,
            host,
            base_path,
            client,
            connector,
            max_idle: cfg.max_connections,
            worker_pools: (1..MAX_POOLS).map(|_| OnceLock::new()).collect(),
            inject,
            response_timeout: cfg.response_timeout,
            permits: Arc::new(Semaphore::new(cfg.max_connections)),
        })
    }

    /// The header an injected credential goes in, if any.
    pub fn inject_header(&self) -> Option<&HeaderName> {
        self.inject.as_ref().map(|(h, _)| h)
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, ForwardError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{}", self.base_path, path_and_query))
            .build()
            .map_err(|e| ForwardError::Failed(format!("bad upstream URI: {e}")))
    }

    /// The calling thread's pool.
    fn pool(&self) -> &HttpsClient {
        match POOL.with(Cell::get) {
            0 => &self.client,
            i => self.worker_pools[i - 1].get_or_init(|| client_on(self.connector.clone(), self.max_idle)),
        }
    }

    /// Sends `req` and waits for the response headers.
    pub async fn send(&self, req: &StoredRequest) -> Result<Response<Incoming>, ForwardError> {
        let method = http::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| ForwardError::Failed(format!("bad method {:?}", req.method)))?;
        let mut b = Request::builder().method(method).uri(self.uri(&req.path_and_query)?);
        let headers = b.headers_mut().ok_or_else(|| ForwardError::Failed("request builder".into()))?;
        for (k, v) in &req.headers {
            let name =
                HeaderName::from_bytes(k.as_bytes()).map_err(|_| ForwardError::Failed(format!("bad header {k:?}")))?;
            let value =
                HeaderValue::from_str(v).map_err(|_| ForwardError::Failed(format!("bad value for header {k:?}")))?;
            headers.append(name, value);
        }
        headers.insert(HOST, self.host.clone());
        if let Some((h, v)) = &self.inject {
            headers.insert(h.clone(), v.clone());
        }
        let request = b.body(Full::new(req.body.clone())).map_err(|e| ForwardError::Failed(e.to_string()))?;
        let _permit = self.permits.acquire().await.map_err(|_| ForwardError::Connect("upstream closed".into()))?;
        match tokio::time::timeout(self.response_timeout, self.pool().request(request)).await {
            Err(_) => Err(ForwardError::Timeout(self.response_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(ForwardError::Connect(error_chain(&e))),
            Ok(Err(e)) => Err(ForwardError::Failed(error_chain(&e))),
        }
    }
}

/// An error with its causes, for logs and refusals ("tls handshake: invalid peer certificate").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        let cfg = UpstreamConfig {
            name: "u".into(),
            url: "http://127.0.0.1:9".parse().unwrap(),
            inject_header: None,
            inject_value: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            max_connections: 4,
        };
        Upstream::build(&cfg, None).unwrap()
    }

    #[test]
    fn each_agent_worker_forwards_through_a_pool_of_its_own() {
        let up = Arc::new(upstream());
        let pool_of = |worker: Option<usize>| {
            let up = up.clone();
            std::thread::spawn(move || {
                if let Some(i) = worker {
                    use_pool_of_worker(i);
                }
                up.pool() as *const HttpsClient as usize
            })
            .join()
            .unwrap()
        };
        let (other, w0, w1) = (pool_of(None), pool_of(Some(0)), pool_of(Some(1)));
        assert_ne!(other, w0);
        assert_ne!(w0, w1);
        assert_eq!(w0, pool_of(Some(0)), "a worker keeps its pool");
        assert_eq!(other, pool_of(None));
        // Workers past the bound share pools instead of growing them.
        assert_eq!(pool_of(Some(MAX_POOLS - 1)), w0);
    }
}
