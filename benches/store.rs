//! The approval store: operations per second (create, decide, consume) and the
//! decision-to-grant latency, memory against a real Redis measured in the same run.
//!
//! `cargo bench --bench store` (starts its own `redis-server` on a free port).
//! Under `cargo test` it runs a smoke version with a few operations.
//!
//! Decision to grant: a vote lands through one store handle (replica B) while a
//! waiter is registered on another (replica A); the time runs until A has been
//! woken, re-read the approval and claimed its grant. That is the store's share of
//! the decision-to-forward path; `bench/run` measures the whole path end to end.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use approvalplane::approval::{Approval, Channel, Entrance, Risk, Status, StoredRequest, Verdict};
use approvalplane::clock::Timestamp;
use approvalplane::store::memory::MemoryStore;
use approvalplane::store::redis::{RedisOptions, RedisStore};
use approvalplane::store::{ApprovalStore, Claim, ListQuery, OpenRequest, Opened, Reuse, Vote};

const CONCURRENCY: usize = 16;

/// The server, its port, and its directory (removed on drop).
struct Redis(Child, u16, #[allow(dead_code)] tempfile::TempDir);

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/install-deps installs it)");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis(child, port, dir)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn open_request(i: usize, now: Timestamp) -> OpenRequest {
    let fingerprint = format!("{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15);
    let approval = Approval {
        id: Approval::new_id_for(&fingerprint),
        status: Status::Pending,
        route: "finance".into(),
        routes: vec!["finance".into()],
        agent: "bench-agent".into(),
        action: "refund".into(),
        risk: Risk::High,
        summary: serde_json::Map::new(),
        justification: None,
        rule_ids: vec!["refund".into()],
        body_sha256: "00".repeat(32),
        created_at: now,
        decided_by: None,
        decided_at: None,
        reason: None,
        approvals: vec![],
        quorum: 1,
        kind: Entrance::Http,
        upstream: Some("echo".into()),
        target: Some("POST /echo/refund".into()),
        risk_reason: "bench".into(),
        policy_bundle: "sha256:00".into(),
        expires_at: now.plus(Duration::from_secs(3600)),
        escalate_at: None,
        escalated_to: vec![],
        decided_via: None,
    };
    let request = StoredRequest {
        upstream: "echo".into(),
        method: "POST".into(),
        path_and_query: "/refund".into(),
        headers: vec![("content-type".into(), "application/x-www-form-urlencoded".into())],
        body: bytes::Bytes::from(format!("charge=ch_{i}&amount=2400")),
    };
    let reuse = Reuse::Forward { grant_ttl: Duration::from_secs(900), reject_memory: Duration::from_secs(600) };
    OpenRequest { fingerprint, approval, request: Some(request), reuse, now }
}

fn vote(now: Timestamp) -> Vote {
    Vote { approver: "alice".into(), verdict: Verdict::Approve, reason: None, channel: Channel::AdminApi, now }
}

/// Runs `f(i)` for `0..n` with `CONCURRENCY` tasks; returns operations per second.
async fn rate<F, Fut>(n: usize, f: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..CONCURRENCY {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < n {
                f(i).await;
                i += CONCURRENCY;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn throughput(store: Arc<dyn ApprovalStore>, base: usize, ops: usize) -> (f64, f64, f64) {
    let now = Timestamp(1_800_000_000_000);
    let created = Arc::new(std::sync::Mutex::new(vec![String::new(); ops]));
    let (s, c) = (store.clone(), created.clone());
    let create = rate(ops, move |i| {
        let (s, c) = (s.clone(), c.clone());
        async move {
            let Opened::Created(a) = s.open(open_request(base + i, now)).await.unwrap() else { panic!("not created") };
            c.lock().unwrap()[i] = a.id;
        }
    })
    .await;
    let ids: Arc<Vec<String>> = Arc::new(created.lock().unwrap().clone());
    let (s, v) = (store.clone(), ids.clone());
    let decide = rate(ops, move |i| {
        let (s, v) = (s.clone(), v.clone());
        async move {
            s.decide(&v[i], vote(now)).await.unwrap();
        }
    })
    .await;
    let (s, v) = (store.clone(), ids.clone());
    let consume = rate(ops, move |i| {
        let (s, v) = (s.clone(), v.clone());
        async move {
            let c = s.claim_grant(&v[i], Duration::from_secs(900), now).await.unwrap();
            assert!(matches!(c, Claim::Granted(..)));
        }
    })
    .await;
    (create, decide, consume)
}

/// Decision on `b` → waiter on `a` woken → re-read → grant claimed.
async fn decision_to_grant(
    a: Arc<dyn ApprovalStore>,
    b: Arc<dyn ApprovalStore>,
    base: usize,
    samples: usize,
) -> Vec<Duration> {
    let now = Timestamp(1_800_000_000_000);
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let Opened::Created(ap) = a.open(open_request(base + i, now)).await.unwrap() else { panic!() };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let a2 = a.clone();
        let id = ap.id.clone();
        let waiter = tokio::spawn(async move {
            let w = a2.waiters().register(&id);
            let mut notified = Box::pin(w.notify().notified());
            notified.as_mut().enable();
            let _ = ready_tx.send(());
            loop {
                if a2.get(&id).await.unwrap().unwrap().status == Status::Approved {
                    break;
                }
                notified.as_mut().await;
                notified = Box::pin(w.notify().notified());
                notified.as_mut().enable();
            }
            let c = a2.claim_grant(&id, Duration::from_secs(900), now).await.unwrap();
            assert!(matches!(c, Claim::Granted(..)));
            Instant::now()
        });
        ready_rx.await.unwrap();
        let start = Instant::now();
        b.decide(&ap.id, vote(now)).await.unwrap();
        let done = waiter.await.unwrap();
        out.push(done - start);
    }
    out.sort();
    out
}

/// Opens `n` pending approvals, then pages through the pending ones and through
/// all, 1000 per page; returns (pages, ms for the pending pages, ms for all).
async fn listing(store: Arc<dyn ApprovalStore>, base: usize, n: usize) -> (usize, f64, f64) {
    let now = Timestamp(1_800_000_000_000);
    // One a millisecond, as a burst of held requests arrives.
    for i in 0..n {
        store.open(open_request(base + i, Timestamp(now.0 + i as u64))).await.unwrap();
    }
    let timed = |status| {
        let store = store.clone();
        async move {
            let start = Instant::now();
            let (mut after, mut pages) = (None, 0);
            loop {
                let p = store.list(&ListQuery { status, after, limit: 1000 }).await.unwrap();
                pages += 1;
                match p.next {
                    Some(n) => after = Some(n),
                    None => return (pages, start.elapsed().as_secs_f64() * 1000.0),
                }
            }
        }
    };
    let (pages, pending) = timed(Some(Status::Pending)).await;
    let (_, all) = timed(None).await;
    (pages, pending, all)
}

fn pct(v: &[Duration], p: f64) -> f64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let full = std::env::args().any(|a| a == "--bench");
    let (ops, samples) = if full { (3000, 400) } else { (50, 10) };
    rt.block_on(async {
        let redis = Redis::start();
        let opts = |prefix: &str| RedisOptions {
            url: format!("redis://127.0.0.1:{}/0", redis.1),
            key_prefix: prefix.into(),
            hmac_key: b"bench-store-key".to_vec(),
            op_timeout: Duration::from_secs(1),
            retention: Duration::from_secs(3600),
            ca_pem: None,
        };
        let memory: Arc<dyn ApprovalStore> = Arc::new(MemoryStore::new());
        let ra = RedisStore::connect(opts("b:")).unwrap();
        let rb = RedisStore::connect(opts("b:")).unwrap();
        assert!(ra.wait_subscribed(Duration::from_secs(5)).await && rb.wait_subscribed(Duration::from_secs(5)).await);
        let (ra, rb): (Arc<dyn ApprovalStore>, Arc<dyn ApprovalStore>) = (Arc::new(ra), Arc::new(rb));

        let m = throughput(memory.clone(), 0, ops).await;
        let r = throughput(ra.clone(), 0, ops).await;
        println!("store operations per second ({ops} each, {CONCURRENCY} concurrent):");
        println!("| backend | create | decide | consume |");
        println!("|---|---|---|---|");
        println!("| memory | {:.0} | {:.0} | {:.0} |", m.0, m.1, m.2);
        println!("| redis | {:.0} | {:.0} | {:.0} |", r.0, r.1, r.2);

        let lm = decision_to_grant(memory.clone(), memory.clone(), 100_000, samples).await;
        let lr = decision_to_grant(ra.clone(), rb.clone(), 100_000, samples).await;
        println!();
        println!("decision to grant ({samples} approvals; redis: decided on replica B, held on replica A):");
        println!("| backend | p50 ms | p99 ms | max ms |");
        println!("|---|---|---|---|");
        for (name, v) in [("memory", &lm), ("redis", &lr)] {
            println!("| {name} | {:.3} | {:.3} | {:.3} |", pct(v, 0.5), pct(v, 0.99), pct(v, 1.0));
        }

        // The listing pages of the admin API and the web page, with the approvals
        // decided above still retained.
        let held = if full { 10_000 } else { 100 };
        let lm = listing(memory.clone(), 200_000, held).await;
        let lr = listing(ra.clone(), 200_000, held).await;
        println!();
        println!("listing {held} pending approvals, 1000 per page, {} decided ones retained:", ops + samples);
        println!("| backend | pages | pending, ms | all, ms |");
        println!("|---|---|---|---|");
        for (name, l) in [("memory", &lm), ("redis", &lr)] {
            println!("| {name} | {} | {:.1} | {:.1} |", l.0, l.1, l.2);
        }
    });
}
