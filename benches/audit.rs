//! Audit writer throughput and latency: group commit against one fsync per record,
//! and the latency a synced record adds to a held request's path.
//!
//! `cargo bench --bench audit` prints a table. Under `cargo test` it runs a smoke
//! pass only.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use approvalplane::audit::{AuditLog, Durability, Event, WriterOptions};
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
                log.append(event(t * per_task + i), durability).await.unwrap();
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

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (tasks, per_task) = if full { (64, 200) } else { (4, 5) };
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
}
