//! Hostile clients: request smuggling, slow and oversize requests, idle connection
//! floods. None of them may reach the upstream as anything but one request.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

const AUTH: &str = "Authorization: Bearer agent-token-1\r\n";

/// Sends raw bytes, returns everything the server sent until it closed (or 3 s).
async fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr.trim_start_matches("http://")).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(resp: &str) -> Vec<u16> {
    resp.match_indices("HTTP/1.1 ").filter_map(|(i, _)| resp.get(i + 9..i + 12)?.parse().ok()).collect()
}

#[tokio::test]
async fn request_smuggling_never_reaches_the_upstream_as_two_requests() {
    let up = FakeUpstream::start(None).await;
    let app = TestApp::start(Options::new(&up)).await;
    let smuggled = "GET /stripe/v1/smuggled HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer agent-token-1\r\n\r\n";
    let cases = [
        // CL.TE: processed as chunked; the trailing bytes never become a request.
        format!("GET /stripe/v1/charges HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        // TE.CL.
        format!("GET /stripe/v1/charges HTTP/1.1\r\nHost: x\r\n{AUTH}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n{smuggled}\r\n0\r\n\r\n"),
        // Duplicate Content-Length.
        format!("GET /stripe/v1/charges HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 0\r\nContent-Length: 90\r\n\r\n{smuggled}"),
        // Obfuscated Transfer-Encoding.
        format!("GET /stripe/v1/charges HTTP/1.1\r\nHost: x\r\n{AUTH}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("GET /stripe/v1/charges HTTP/1.1\r\nHost: x\r\n{AUTH}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("GET /stripe/v1/charges HTTP/1.1\r\nHost: x\r\n{AUTH}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
    ];
    for (i, c) in cases.iter().enumerate() {
        let before = up.count();
        let resp = raw(&app.agent, c.as_bytes()).await;
        let st = statuses(&resp);
        let got: Vec<String> = up.received()[before..].iter().map(|r| r.path.clone()).collect();
        assert!(
            !got.iter().any(|p| p.contains("smuggled")),
            "case {i}: smuggled request reached the upstream: {got:?} / {resp}"
        );
        assert!(got.len() <= 1, "case {i}: {got:?}");
        assert!(st.len() <= 1 || st[1] >= 400, "case {i}: a second request was served: {resp}");
        if i >= 2 {
            assert_eq!(st.first(), Some(&400), "case {i}: {resp}");
        }
    }
}

#[tokio::test]
async fn slow_headers_and_slow_bodies_are_cut_off() {
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.server_toml = "hold_timeout = \"2s\"\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"\n".into();
    let app = TestApp::start(o).await;
    // Slowloris: one header byte every 300 ms.
    let addr = app.agent.trim_start_matches("http://").to_string();
    let slow = tokio::spawn(async move {
        let start = Instant::now();
        let mut s = TcpStream::connect(&addr).await.unwrap();
        for b in b"GET /stripe/v1/charges HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if start.elapsed() > Duration::from_secs(6) {
                break;
            }
        }
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
        start.elapsed()
    });
    // Meanwhile others are served.
    let r = call("GET", &format!("{}/stripe/v1/charges", app.agent), &[("authorization", "Bearer agent-token-1")], "")
        .await;
    assert_eq!(r.status, 200);
    let took = slow.await.unwrap();
    assert!(took < Duration::from_secs(6), "the trickling client was cut off ({took:?})");
    // A slow body: headers promise 100 bytes that never come.
    let start = Instant::now();
    let resp = raw(
        &app.agent,
        format!("POST /stripe/v1/refunds HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\namount=1").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&resp).first(), Some(&408), "{resp}");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn oversize_headers_are_refused() {
    let up = FakeUpstream::start(None).await;
    let app = TestApp::start(Options::new(&up)).await;
    let big = "a".repeat(100 * 1024);
    let resp =
        raw(&app.agent, format!("GET /stripe/v1/charges HTTP/1.1\r\nHost: x\r\n{AUTH}X-Big: {big}\r\n\r\n").as_bytes())
            .await;
    let st = statuses(&resp);
    assert!(st.is_empty() || st[0] == 431 || st[0] == 400, "{st:?}");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_do_not_stop_service() {
    let up = FakeUpstream::start(None).await;
    let app = TestApp::start(Options::new(&up)).await;
    let addr = app.agent.trim_start_matches("http://").to_string();
    let (host, port) = addr.split_once(':').unwrap();
    // A separate process opens the connections and leaves them idle.
    let script = format!(
        "import socket,sys,time\nconns=[]\nfor i in range(10000):\n  s=socket.socket()\n  s.connect(('{host}',{port}))\n  conns.append(s)\nprint('ready',flush=True)\nsys.stdin.read()\n"
    );
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(60), out.read_exact(&mut buf)).await.expect("connections opened").unwrap();
    assert_eq!(&buf, b"ready\n");
    let start = Instant::now();
    for i in 0..20 {
        let r = call(
            "GET",
            &format!("{}/stripe/v1/charges/{i}", app.agent),
            &[("authorization", "Bearer agent-token-1")],
            "",
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert!(start.elapsed() < Duration::from_secs(10), "served while 10,000 connections idle: {:?}", start.elapsed());
    drop(child.stdin.take());
    let _ = child.kill().await;
}
