//! The "no policy" baseline: a plain hyper reverse proxy that buffers the request
//! body and forwards it with a pooled hyper-util client, as the spike did.
//! It shows what the HTTP stack alone costs on the machine, so the proxy's own
//! work (policy, audit, bookkeeping) can be told apart from hyper's and the kernel's.
//!
//! Usage: bench-plainproxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT [--threads N]
//! `--threads 1` runs one current-thread runtime; N > 1 one multi-threaded runtime.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Upstream = Client<HttpConnector, Full<Bytes>>;

async fn handle(
    client: Arc<Upstream>,
    base: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let uri = format!("http://{base}{}", parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    let mut out = Request::builder().method(parts.method).uri(uri);
    for (k, v) in &parts.headers {
        if k != hyper::header::HOST && k != hyper::header::CONNECTION {
            out = out.header(k, v);
        }
    }
    let Ok(out) = out.body(Full::new(body)) else {
        return Ok(Response::builder().status(400).body(Full::new(Bytes::new())).unwrap());
    };
    match client.request(out).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            Ok(Response::from_parts(parts, Full::new(body)))
        }
        Err(_) => Ok(Response::builder().status(502).body(Full::new(Bytes::new())).unwrap()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let listen = arg("--listen").expect("--listen ADDR");
    let upstream: Arc<str> = arg("--upstream").expect("--upstream HOST:PORT").into();
    let threads: usize = arg("--threads").and_then(|t| t.parse().ok()).unwrap_or(1);
    let rt = approvalplane_bench_tools::runtime(threads);
    rt.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Arc::new(Client::builder(TokioExecutor::new()).pool_max_idle_per_host(512).build(connector));
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(client.clone(), upstream.clone(), req));
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
}
