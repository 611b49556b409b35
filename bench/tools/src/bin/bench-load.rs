//! The benchmark load client.
//!
//! - `rate`: open-loop load at a constant offered rate over keep-alive
//!   connections. Request `i` is due at `start + i / rate`; when every
//!   connection is still busy at that time, its latency counts from when it was
//!   due (no coordinated omission). Prints one `RATE` line.
//! - `hold`: opens N concurrently held requests on N connections, measures the
//!   proxy's RSS, releases them all with bulk decisions, and does it twice
//!   (fill, release, refill, release). Prints `HOLD_*` lines.
//! - `decide`: one held request at a time; times each single decision to the
//!   upstream's receipt of the forwarded request. Prints `DECIDE_*` lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use approvalplane_bench_tools::{connect, now_ns, quantile, send, split_url};
use bytes::Bytes;

struct Args(Vec<String>);

impl Args {
    fn get(&self, name: &str) -> Option<String> {
        self.0.iter().position(|a| a == name).and_then(|i| self.0.get(i + 1)).cloned()
    }
    fn req(&self, name: &str) -> String {
        self.get(name).unwrap_or_else(|| panic!("{name} is required"))
    }
    fn num(&self, name: &str, default: f64) -> f64 {
        self.get(name).map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number"))).unwrap_or(default)
    }
    fn all(&self, name: &str) -> Vec<String> {
        self.0.windows(2).filter(|w| w[0] == name).map(|w| w[1].clone()).collect()
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cmd = argv.first().cloned().unwrap_or_default();
    let args = Args(argv);
    let threads = args.num("--threads", 1.0) as usize;
    let rt = approvalplane_bench_tools::runtime(threads);
    rt.block_on(async move {
        match cmd.as_str() {
            "rate" => rate(&args).await,
            "hold" => hold(&args).await,
            "decide" => decide(&args).await,
            _ => {
                eprintln!("usage: bench-load rate|hold|decide ...");
                std::process::exit(2);
            }
        }
    });
}

fn headers(args: &Args) -> Vec<(String, String)> {
    args.all("--header")
        .iter()
        .map(|h| {
            let (k, v) = h.split_once(':').expect("--header NAME:VALUE");
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// `rate --url URL --rate R --duration S [--connections C] [--header K:V]...`
async fn rate(args: &Args) {
    let (authority, path) = split_url(&args.req("--url"));
    let rate = args.num("--rate", 1000.0);
    let duration = Duration::from_secs_f64(args.num("--duration", 5.0));
    let conns = args.num("--connections", 64.0) as usize;
    let method = args.get("--method").unwrap_or_else(|| "GET".into());
    let hdrs = Arc::new(headers(args));
    // --rate 0: closed loop, every connection sends its next request as soon as
    // the previous one is answered (the generator's own maximum).
    let closed = rate <= 0.0;
    let total = if closed { u64::MAX / 2 } else { (rate * duration.as_secs_f64()) as u64 };
    let period_ns = if closed { 0.0 } else { 1e9 / rate };
    // Give the connections a moment to open before the clock starts.
    let mut senders = Vec::new();
    for _ in 0..conns {
        senders.push(connect(&authority).await.expect("connect"));
    }
    let start = Instant::now() + Duration::from_millis(50);
    let hard_stop = start + duration + Duration::from_secs(2);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for mut tx in senders {
        let (next, hdrs, authority, path, method) =
            (next.clone(), hdrs.clone(), authority.clone(), path.clone(), method.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(if closed { 1 << 16 } else { (total as usize / conns) * 2 + 16 });
            let (mut errors, mut non2xx) = (0u64, 0u64);
            let mut last_done = start;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = start + Duration::from_nanos((i as f64 * period_ns) as u64);
                let now = Instant::now();
                if now > hard_stop || (closed && now > start + duration) {
                    break;
                }
                // On time (the connection was free before the request was due):
                // count from the actual send, so timer granularity is not
                // charged to the server. Late: count from when it was due.
                let from = if now < due {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else if closed {
                    now
                } else {
                    due
                };
                match send(&mut tx, &method, &authority, &path, &hdrs, Bytes::new()).await {
                    Ok((s, _)) => {
                        if !(200..300).contains(&s) {
                            non2xx += 1;
                        }
                        last_done = Instant::now();
                        lat.push(last_done.duration_since(from).as_nanos() as u64);
                    }
                    Err(_) => {
                        errors += 1;
                        match connect(&authority).await {
                            Ok(t) => tx = t,
                            Err(_) => break,
                        }
                    }
                }
            }
            (lat, errors, non2xx, last_done)
        }));
    }
    let mut lat = Vec::with_capacity(if closed { 1 << 20 } else { total as usize });
    let (mut errors, mut non2xx) = (0, 0);
    let mut end = start;
    for t in tasks {
        let (l, e, n, d) = t.await.expect("task");
        lat.extend(l);
        errors += e;
        non2xx += n;
        end = end.max(d);
    }
    lat.sort_unstable();
    let done = lat.len() as u64;
    let elapsed = end.duration_since(start).as_secs_f64().max(duration.as_secs_f64());
    let total = if closed { done } else { total };
    let us = |q| quantile(&lat, q) as f64 / 1000.0;
    println!(
        "RATE offered={rate:.0} achieved={:.0} p50_us={:.0} p99_us={:.0} p999_us={:.0} max_us={:.0} done={done} unsent={} errors={errors} non2xx={non2xx}",
        done as f64 / elapsed,
        us(0.5),
        us(0.99),
        us(0.999),
        us(1.0),
        total.saturating_sub(done + errors),
    );
}

fn rss_kib(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Every `{"id":"..."` in an admin API answer: the approval ids.
fn approval_ids(body: &str) -> Vec<String> {
    body.match_indices("{\"id\":\"")
        .filter_map(|(i, m)| {
            let rest = &body[i + m.len()..];
            rest.find('"').map(|e| rest[..e].to_string())
        })
        .collect()
}

fn next_cursor(body: &str) -> Option<String> {
    let i = body.find("\"next\":\"")? + "\"next\":\"".len();
    let rest = &body[i..];
    rest.find('"').map(|e| rest[..e].to_string())
}

struct Control {
    authority: String,
    auth: Vec<(String, String)>,
}

impl Control {
    async fn call(&self, method: &str, path: &str, body: String) -> (u16, String) {
        let mut tx = connect(&self.authority).await.expect("connect control");
        let mut h = self.auth.clone();
        h.push(("content-type".into(), "application/json".into()));
        let (s, b) = send(&mut tx, method, &self.authority, path, &h, Bytes::from(body)).await.expect("control call");
        (s, String::from_utf8_lossy(&b).into_owned())
    }

    async fn pending_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let q = match &after {
                Some(a) => format!("/v1/admin/approvals?status=pending&limit=1000&after={a}"),
                None => "/v1/admin/approvals?status=pending&limit=1000".to_string(),
            };
            let (s, b) = self.call("GET", &q, String::new()).await;
            assert_eq!(s, 200, "list pending: {b}");
            ids.extend(approval_ids(&b));
            match next_cursor(&b) {
                Some(n) => after = Some(n),
                None => return ids,
            }
        }
    }

    /// The `approvalplane_pending_approvals` gauge summed over routes.
    async fn pending_gauge(&self) -> u64 {
        let (_, b) = self.call("GET", "/metrics", String::new()).await;
        b.lines()
            .filter(|l| l.starts_with("approvalplane_pending_approvals{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// `hold --proxy ADDR --control ADDR --upstream ADDR --token T --pid PID --count N [--distinct D]`
async fn hold(args: &Args) {
    let proxy = args.req("--proxy");
    let upstream = args.req("--upstream");
    let pid = args.req("--pid");
    let count = args.num("--count", 10000.0) as usize;
    let distinct = (args.num("--distinct", count as f64) as usize).clamp(1, count);
    let bulk = args.num("--bulk", 10000.0) as usize;
    let ctl = Arc::new(Control {
        authority: args.req("--control"),
        auth: vec![("authorization".into(), format!("Bearer {}", args.req("--token")))],
    });
    let idle = rss_kib(&pid);
    println!("HOLD_IDLE_RSS_KIB {idle}");
    for round in 1..=2 {
        let (_, _) = up_call(&upstream, "/__bench/reset").await;
        // Fill: connections opened a few hundred at a time (the listen backlog).
        let gate = Arc::new(tokio::sync::Semaphore::new(256));
        let fill_start = Instant::now();
        let mut held = Vec::with_capacity(count);
        for i in 0..count {
            let (proxy, gate) = (proxy.clone(), gate.clone());
            let k = i % distinct;
            held.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.unwrap();
                let mut tx = match connect(&proxy).await {
                    Ok(t) => t,
                    Err(_) => return (0u16, 0u64),
                };
                drop(permit);
                let body = format!("{{\"round\":{round},\"n\":{k},\"note\":\"held request {k} of round {round}\"}}");
                let h = vec![("content-type".to_string(), "application/json".to_string())];
                let path = format!("/up/v1/held/{round}/{k}");
                match send(&mut tx, "POST", &proxy, &path, &h, Bytes::from(body)).await {
                    Ok((s, _)) => (s, now_ns()),
                    Err(_) => (1, now_ns()),
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let n = ctl.pending_gauge().await;
            if n as usize >= distinct {
                break;
            }
            if Instant::now() > deadline {
                println!("HOLD_ERROR round {round}: only {n} of {distinct} approvals pending after 180 s");
                std::process::exit(1);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("HOLD_FILL_SECONDS_{round} {:.2}", fill_start.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let full = rss_kib(&pid);
        println!("HOLD_FULL_RSS_KIB_{round} {full}");
        let ids = ctl.pending_ids().await;
        assert_eq!(ids.len(), distinct, "pending ids");
        // Release: every id, in bulk decisions of at most `bulk` ids, sent at once.
        let t0 = now_ns();
        let mut calls = Vec::new();
        for chunk in ids.chunks(bulk) {
            let ctl = ctl.clone();
            let list: Vec<String> = chunk.iter().map(|id| format!("\"{id}\"")).collect();
            let body = format!("{{\"ids\":[{}],\"decision\":\"approve\",\"reason\":\"bench\"}}", list.join(","));
            calls.push(tokio::spawn(async move {
                let (s, _) = ctl.call("POST", "/v1/admin/approvals/decision", body).await;
                (s, now_ns())
            }));
        }
        let mut decided_ns = 0;
        for c in calls {
            let (s, t) = c.await.unwrap();
            assert_eq!(s, 200, "bulk decision");
            decided_ns = decided_ns.max(t);
        }
        let (mut last_resp, mut ok, mut other) = (0u64, 0usize, 0usize);
        for h in held {
            let (s, t) = h.await.unwrap();
            last_resp = last_resp.max(t);
            if s == 200 {
                ok += 1;
            } else {
                other += 1;
            }
        }
        let (_, stats) = up_call(&upstream, "/__bench/stats").await;
        let mut it = stats.split_whitespace();
        let received: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let last_up: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let ms = |t: u64| t.saturating_sub(t0) as f64 / 1e6;
        println!("HOLD_BULK_CALLS_{round} {}", ids.len().div_ceil(bulk));
        println!("HOLD_DECIDED_MS_{round} {:.1}", ms(decided_ns));
        println!("HOLD_LAST_UPSTREAM_MS_{round} {:.1}", ms(last_up));
        println!("HOLD_LAST_RESPONSE_MS_{round} {:.1}", ms(last_resp));
        println!("HOLD_UPSTREAM_RECEIVED_{round} {received}");
        println!("HOLD_RESPONSES_{round} ok={ok} other={other}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("HOLD_AFTER_RELEASE_RSS_KIB_{round} {}", rss_kib(&pid));
    }
}

async fn up_call(upstream: &str, path: &str) -> (u16, String) {
    let mut tx = connect(upstream).await.expect("connect upstream");
    let (s, b) = send(&mut tx, "GET", upstream, path, &[], Bytes::new()).await.expect("upstream call");
    (s, String::from_utf8_lossy(&b).into_owned())
}

/// `decide --proxy ADDR --control ADDR --upstream ADDR --token T [--n 200]`
async fn decide(args: &Args) {
    let proxy = args.req("--proxy");
    let upstream = args.req("--upstream");
    let n = args.num("--n", 200.0) as usize;
    let ctl = Control {
        authority: args.req("--control"),
        auth: vec![("authorization".into(), format!("Bearer {}", args.req("--token")))],
    };
    let tag = now_ns();
    up_call(&upstream, "/__bench/times").await;
    let mut t_decide = Vec::with_capacity(n);
    let mut to_client = Vec::with_capacity(n);
    let mut call = Vec::with_capacity(n);
    for i in 0..n {
        let proxy2 = proxy.clone();
        let id = format!("d{tag}-{i}");
        let id2 = id.clone();
        let held = tokio::spawn(async move {
            let mut tx = connect(&proxy2).await.expect("connect proxy");
            let h = vec![("content-type".to_string(), "application/json".to_string()), ("x-bench-id".to_string(), id2)];
            let body = format!("{{\"decision_bench\":{i},\"tag\":{tag}}}");
            let r = send(&mut tx, "POST", &proxy2, &format!("/up/v1/decide/{i}"), &h, Bytes::from(body)).await;
            (r.map(|(s, _)| s).unwrap_or(0), now_ns())
        });
        let approval = loop {
            let ids = ctl.pending_ids().await;
            if let Some(a) = ids.into_iter().next() {
                break a;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let t0 = now_ns();
        let (s, b) = ctl
            .call("POST", &format!("/v1/admin/approvals/{approval}/decision"), "{\"decision\":\"approve\"}".into())
            .await;
        assert_eq!(s, 200, "decision: {b}");
        call.push(now_ns() - t0);
        let (status, t_resp) = held.await.unwrap();
        assert_eq!(status, 200, "held request answered {status}");
        t_decide.push((id, t0));
        to_client.push(t_resp - t0);
    }
    let (_, times) = up_call(&upstream, "/__bench/times").await;
    let arrivals: std::collections::HashMap<&str, u64> = times
        .lines()
        .filter_map(|l| {
            let (id, t) = l.split_once(' ')?;
            Some((id, t.parse().ok()?))
        })
        .collect();
    let mut to_upstream: Vec<u64> =
        t_decide.iter().filter_map(|(id, t0)| arrivals.get(id.as_str()).map(|t| t.saturating_sub(*t0))).collect();
    to_upstream.sort_unstable();
    to_client.sort_unstable();
    call.sort_unstable();
    let ms = |v: &[u64], q| quantile(v, q) as f64 / 1e6;
    println!("DECIDE_N {}", to_upstream.len());
    println!(
        "DECIDE_UPSTREAM_MS p50={:.2} p99={:.2} max={:.2}",
        ms(&to_upstream, 0.5),
        ms(&to_upstream, 0.99),
        ms(&to_upstream, 1.0)
    );
    println!(
        "DECIDE_CLIENT_MS p50={:.2} p99={:.2} max={:.2}",
        ms(&to_client, 0.5),
        ms(&to_client, 0.99),
        ms(&to_client, 1.0)
    );
    println!("DECIDE_CALL_MS p50={:.2} p99={:.2} max={:.2}", ms(&call, 0.5), ms(&call, 0.99), ms(&call, 1.0));
}
