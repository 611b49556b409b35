//! A real `approvalplane serve` process is SIGKILLed under load, restarted, and the
//! log still verifies; every request the agents saw forwarded has its decision record.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn spawn_serve(config: &std::path::Path) -> Child {
    Command::new(bin())
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("AGENT_TOKEN", AGENT_TOKEN)
        .env("ALICE_TOKEN", ALICE)
        .env("STRIPE_AUTH", UPSTREAM_SECRET)
        .env("APPROVALPLANE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub async fn wait_healthy(control: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = tokio::net::TcpStream::connect(control.trim_start_matches("http://")).await.is_ok()
            && call("GET", &format!("{control}/healthz"), &[], "").await.status == 200;
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn sigterm(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            assert!(st.success(), "exit status {st:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("server did not stop on SIGTERM");
}

/// A directory with the Stripe rules and a config serving them on free ports.
pub struct ServeDir {
    pub dir: tempfile::TempDir,
    pub config: std::path::PathBuf,
    pub agent: String,
    pub control: String,
}

pub fn serve_dir(up: &FakeUpstream, server_extra: &str, audit_extra: &str) -> ServeDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/stripe.rego"), STRIPE_RULES).unwrap();
    let (ap, cp) = (free_port(), free_port());
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{ap}\"\ncontrol_listen = \"127.0.0.1:{cp}\"\n{server_extra}\n[[upstream]]\nname = \"stripe\"\nurl = \"http://{}\"\ninject_header = \"Authorization\"\ninject_value_env = \"STRIPE_AUTH\"\n\n[[agent]]\nid = \"support-agent\"\ntoken_env = \"AGENT_TOKEN\"\n\n[[approver]]\nid = \"alice\"\ntoken_env = \"ALICE_TOKEN\"\n\n[routes.finance-oncall]\napprovers = [\"alice\"]\n\n[policy]\nrules = \"rules\"\n\n[audit]\npath = \"audit\"\n{audit_extra}",
            up.addr
        ),
    )
    .unwrap();
    ServeDir { dir, config, agent: format!("http://127.0.0.1:{ap}"), control: format!("http://127.0.0.1:{cp}") }
}

/// A quick HTTP request that tolerates a dead server.
async fn try_refund(agent: &str, amount: u64) -> Option<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(agent.trim_start_matches("http://")).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let req = http::Request::post("/stripe/v1/refunds")
        .header("host", "x")
        .header("authorization", format!("Bearer {AGENT_TOKEN}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from(format!("charge=ch_1&amount={amount}"))))
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let id = resp.headers().get("x-request-id")?.to_str().ok()?.to_string();
    Some((resp.status().as_u16(), id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_forwarded_request() {
    let up = FakeUpstream::start(None).await;
    let ServeDir { dir, config, agent, control } = serve_dir(&up, "", "checkpoint_every = 50\n");
    let mut child = spawn_serve(&config);
    wait_healthy(&control).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8u64 {
        let agent = agent.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                match try_refund(&agent, 1000 + c * 100_000 + n).await {
                    Some(r) => seen.push(r),
                    None => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut forwarded = HashSet::new();
    for c in clients {
        for (status, id) in c.await.unwrap() {
            if status == 200 {
                forwarded.insert(id);
            }
        }
    }
    assert!(forwarded.len() > 20, "load reached the server: {}", forwarded.len());
    // Restart: a torn tail (if any) is moved aside and recorded; then stop cleanly.
    let mut child = spawn_serve(&config);
    wait_healthy(&control).await;
    sigterm(&mut child);
    let audit = dir.path().join("audit");
    let (code, out, err) = run_bin(&["audit", "verify", audit.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    for w in err.lines().filter(|l| l.starts_with("warning:")) {
        assert!(w.contains("torn tail") || w.contains("--key"), "only a torn-tail warning is allowed: {w}");
    }
    let mut decided = HashSet::new();
    for e in std::fs::read_dir(&audit).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            for l in std::fs::read_to_string(&p).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                if v["kind"] == "decision" {
                    decided.insert(v["request_id"].as_str().unwrap().to_string());
                }
            }
        }
    }
    let missing: Vec<_> = forwarded.iter().filter(|id| !decided.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} forwarded requests without a decision record: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

/// `worker_threads = 1` runs the whole service on one current-thread runtime (no
/// worker thread exists); allowed, held-then-approved and shut-down requests
/// behave as with more workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_everything_from_one_thread() {
    serves_everything_with(1).await;
}

/// With two workers, each runs its own current-thread runtime (`agent-worker-N`)
/// and takes its share of the agent connections; no multi-threaded runtime exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_each_run_their_own_runtime() {
    serves_everything_with(2).await;
}

async fn serves_everything_with(workers: usize) {
    let up = FakeUpstream::start(None).await;
    let ServeDir { dir, config, agent, control } = serve_dir(&up, &format!("worker_threads = {workers}\n"), "");
    let mut child = spawn_serve(&config);
    wait_healthy(&control).await;

    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(!threads.iter().any(|t| t.starts_with("tokio-rt-worker")), "no multi-threaded runtime: {threads:?}");
    let agent_workers = threads.iter().filter(|t| t.starts_with("agent-worker-")).count();
    assert_eq!(agent_workers, if workers == 1 { 0 } else { workers }, "{threads:?}");

    let mut clients = Vec::new();
    for c in 0..8u64 {
        let agent = agent.clone();
        clients.push(tokio::spawn(async move {
            let mut ok = 0;
            for n in 0..25 {
                if let Some((200, _)) = try_refund(&agent, 1000 + c * 100 + n).await {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let held = tokio::spawn({
        let agent = agent.clone();
        async move { try_refund(&agent, 240_000).await }
    });
    let mut allowed = 0;
    for c in clients {
        allowed += c.await.unwrap();
    }
    assert_eq!(allowed, 200, "every small refund went through");
    let auth = format!("Bearer {ALICE}");
    let id = 'found: {
        for _ in 0..200 {
            let r =
                call("GET", &format!("{control}/v1/admin/approvals?status=pending"), &[("authorization", &auth)], "")
                    .await;
            if let Some(a) = r.json()["approvals"].as_array().and_then(|a| a.first().cloned()) {
                break 'found a["id"].as_str().unwrap().to_string();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the large refund was never held");
    };
    let r = call(
        "POST",
        &format!("{control}/v1/admin/approvals/{id}/decision"),
        &[("authorization", &auth), ("content-type", "application/json")],
        r#"{"decision": "approve"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (status, _) = held.await.unwrap().expect("the held request got an answer");
    assert_eq!(status, 200, "the approved refund was forwarded");

    sigterm(&mut child);
    let (code, out, err) = run_bin(&["audit", "verify", dir.path().join("audit").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Logs written to a file or a pipe are plain text: no terminal colour codes for a
/// collector to trip over, in either log format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_file_carry_no_colour_codes() {
    let up = FakeUpstream::start(None).await;
    for format in ["text", "json"] {
        let ServeDir { dir, config, agent, control } = serve_dir(&up, "", "");
        let log = dir.path().join("serve.log");
        let mut child = Command::new(bin())
            .args(["serve", "--config", config.to_str().unwrap(), "--log-format", format])
            .env("AGENT_TOKEN", AGENT_TOKEN)
            .env("ALICE_TOKEN", ALICE)
            .env("STRIPE_AUTH", UPSTREAM_SECRET)
            .env("APPROVALPLANE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_healthy(&control).await;
        // One held refund: its approval is logged, then the shutdown answers it.
        let held = tokio::spawn(async move { try_refund(&agent, 60_000).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        let pending = format!("{control}/v1/admin/approvals?status=pending");
        let auth = format!("Bearer {ALICE}");
        while call("GET", &pending, &[("authorization", &auth)], "").await.json()["approvals"]
            .as_array()
            .is_none_or(|a| a.is_empty())
        {
            assert!(Instant::now() < deadline, "the refund was not held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sigterm(&mut child);
        let _ = held.await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("listening") && text.contains("approval requested"), "{format}: {text}");
        assert!(!text.contains('\u{1b}'), "{format}: colour codes in a log file:\n{text}");
    }
}
