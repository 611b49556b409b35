//! The benchmark upstream: a tiny hyper HTTP/1.1 server answering every request
//! with 200 and a fixed JSON body.
//!
//! It also records, for the held-request scenarios, how many requests arrived,
//! when the last one arrived, and the arrival time of every request carrying an
//! `x-bench-id` header (wall clock, nanoseconds), served at `/__bench/stats` and
//! `/__bench/times` (which also clears the list).
//!
//! Usage: bench-upstream --listen 127.0.0.1:PORT [--threads N]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use approvalplane_bench_tools::now_ns;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const BODY: &[u8] =
    br#"{"id":"ch_3Pbench","object":"charge","amount":2000,"currency":"usd","status":"succeeded","livemode":false}"#;

#[derive(Default)]
struct Stats {
    count: AtomicU64,
    last_ns: AtomicU64,
    times: Mutex<Vec<(String, u64)>>,
}

async fn handle(stats: Arc<Stats>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let t = now_ns();
    let path = req.uri().path();
    if let Some(cmd) = path.strip_prefix("/__bench/") {
        let body = match cmd {
            "stats" => format!("{} {}\n", stats.count.load(Ordering::SeqCst), stats.last_ns.load(Ordering::SeqCst)),
            "times" => {
                let v = std::mem::take(&mut *stats.times.lock().unwrap());
                v.iter().map(|(id, t)| format!("{id} {t}\n")).collect()
            }
            "reset" => {
                stats.count.store(0, Ordering::SeqCst);
                stats.last_ns.store(0, Ordering::SeqCst);
                stats.times.lock().unwrap().clear();
                "ok\n".into()
            }
            _ => "unknown\n".into(),
        };
        return Ok(Response::new(Full::new(Bytes::from(body))));
    }
    if let Some(id) = req.headers().get("x-bench-id").and_then(|v| v.to_str().ok()) {
        stats.times.lock().unwrap().push((id.to_string(), t));
    }
    stats.count.fetch_add(1, Ordering::Relaxed);
    stats.last_ns.fetch_max(t, Ordering::Relaxed);
    // Read the request body to the end before answering.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    resp.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    Ok(resp)
}

fn main() {
    let mut listen = "127.0.0.1:0".to_string();
    let mut threads = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "--threads" => threads = args.next().and_then(|v| v.parse().ok()).expect("--threads N"),
            o => panic!("unknown argument {o}"),
        }
    }
    let rt = approvalplane_bench_tools::runtime(threads);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        println!("listening {}", listener.local_addr().unwrap());
        let stats = Arc::new(Stats::default());
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let stats = stats.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(stats.clone(), req));
                let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
}
