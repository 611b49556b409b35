//! Shared pieces of the benchmark tools: a keep-alive HTTP/1.1 client
//! connection, wall-clock timestamps comparable across processes, and
//! percentiles.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME): the one clock the load
/// client and the upstream share, so their timestamps can be subtracted.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A current-thread runtime for one thread, a multi-threaded one for more.
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .expect("runtime")
}

pub type Sender = SendRequest<Full<Bytes>>;

/// Opens one HTTP/1.1 keep-alive connection to `addr`.
pub async fn connect(addr: &str) -> std::io::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (tx, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(tx)
}

/// One request/response on `tx`; returns the status and the body.
pub async fn send(
    tx: &mut Sender,
    method: &str,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
    body: Bytes,
) -> Result<(u16, Bytes), String> {
    let mut b = hyper::Request::builder().method(method).uri(path).header("host", authority);
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
    tx.ready().await.map_err(|e| e.to_string())?;
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

/// The `q`-quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Parses `"host:port/path"` style `--url http://host:port/path` into (authority, path).
pub fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}
