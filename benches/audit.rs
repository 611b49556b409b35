//! Audit writer throughput and latency: group commit against one fsync per record,
//! and the latency a synced record adds to a held request's path.
//!
//! `cargo bench --bench audit` prints a table. Under `cargo test` it runs a smoke
//! pass only. `cargo bench --bench audit -- seal` measures sealing a record alone.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use approvalplane::audit::record::{seal, seal_event, Header, GENESIS_PREV};
use approvalplane::audit::{AuditLog, Durability, Event, Subject, WriterOptions};
use approvalplane::clock::SystemClock;

fn event(i: usize) -> Event {
    Event::Shutdown { reason: format!("bench record {i} with a realistic amount of text in it"), interrupted: vec![] }
}

async fn run(
    dir: &Path,
    group_commit: bool,
    durability: Durability,
    tasks: usize,
    per_task: usize,
) -> (f64, Vec<Duration>) {
    let mut opts = WriterOptions::new(dir.to_path_buf(), "bench");
    opts.group_commit = group_commit;
    opts.checkpoint_every = u64::MAX;
    let log = AuditLog::start(opts, Arc::new(SystemClock), "sha256:bench").unwrap();
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let s = Instant::now();
                log.append(&event(t * per_task + i), durability).await.unwrap();
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    log.close().await;
    all.sort();
    ((tasks * per_task) as f64 / secs, all)
}

/// The record the allowed path writes for every request (the shape of a real one).
fn allowed_decision() -> Event {
    Event::Decision {
        subject: Subject {
            agent: "support-agent".into(),
            action: "GET /github/repos/acme/api/pulls/1".into(),
            body_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
            rule_ids: vec!["github.read".into()],
            policy_bundle: "sha256:64fe1122f96b90acf7f30c07f2ce939f810acadf2aa236d028a4eccbfe99e881".into(),
            entrance: "http".into(),
            upstream: Some("github".into()),
            target: Some("GET /github/repos/acme/api/pulls/1".into()),
        },
        request_id: "req_5ec18fa71cf799c2".into(),
        decision: "allow".into(),
        matched: "allow".into(),
        shadow: false,
        reason: "read-only GitHub request".into(),
        approval_id: None,
        error: None,
        payload_json: None,
        justification: None,
    }
}

/// Sealing one record (encoding, hashing, the line), without the file: the typed
/// encoder the writer uses, against the `serde_json::Value` reference encoding.
fn seal_cost(iters: usize) {
    let ev = allowed_decision();
    let h = Header { chain: "01a20e6a8bfb9d1925fe", seq: 999, ts: "2026-11-24T16:36:33.885Z", prev: GENESIS_PREV };
    assert_eq!(seal_event(&h, &ev), seal(&h, ev.fields()), "both encodings give the same line");
    let time = |f: &dyn Fn() -> usize| {
        let start = Instant::now();
        let mut bytes = 0;
        for _ in 0..iters {
            bytes += f();
        }
        std::hint::black_box(bytes);
        start.elapsed().as_secs_f64() * 1e9 / iters as f64
    };
    let typed = time(&|| seal_event(&h, std::hint::black_box(&ev)).0.len());
    let value = time(&|| seal(&h, std::hint::black_box(&ev).fields()).0.len());
    println!();
    println!("| sealing an allowed request's decision record | ns per record |");
    println!("|---|---|");
    println!("| typed encoder (what the writer runs) | {typed:.0} |");
    println!("| `serde_json::Value` reference | {value:.0} |");
}

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (tasks, per_task) = if full { (64, 200) } else { (4, 5) };
    // `cargo bench --bench audit -- seal`: the sealing table only.
    if std::env::args().any(|a| a == "seal") {
        seal_cost(if full { 200_000 } else { 10 });
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("| mode | durability | concurrency | records/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|");
    for (label, group, dur, conc) in [
        ("group commit", true, Durability::Synced, tasks),
        ("fsync per record", false, Durability::Synced, tasks),
        ("group commit", true, Durability::Written, tasks),
        ("group commit", true, Durability::Synced, 1),
    ] {
        let dir = tempfile::tempdir_in(".").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let n = if conc == 1 { per_task * 4 } else { per_task };
        let (rps, lat) = rt.block_on(run(dir.path(), group, dur, conc, n));
        println!(
            "| {label} | {dur:?} | {conc} | {rps:.0} | {:.2} ms | {:.2} ms |",
            pct(&lat, 0.5).as_secs_f64() * 1e3,
            pct(&lat, 0.99).as_secs_f64() * 1e3
        );
    }
    seal_cost(if full { 200_000 } else { 10 });
}
