//! Test harness: the real server in-process on 127.0.0.1:0, a recording fake
//! upstream (plain or TLS), and a small HTTP client.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approvalplane::app::App;
use approvalplane::clock::{Clock, SystemClock};
use approvalplane::config::{Config, MapEnv};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;

pub const AGENT_TOKEN: &str = "agent-token-1";
pub const OTHER_AGENT_TOKEN: &str = "agent-token-2";
pub const ALICE: &str = "alice-token";
pub const BOB: &str = "bob-token";
pub const CAROL: &str = "carol-token";
pub const UPSTREAM_SECRET: &str = "Bearer sk_live_injected";

/// A request the fake upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;
pub type Responder = Arc<dyn Fn(&Received) -> Response<BoxBody> + Send + Sync>;

pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    _task: tokio::task::JoinHandle<()>,
}

pub fn json_response(status: u16, v: &Value) -> Response<BoxBody> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r.headers_mut().insert("x-upstream", "fake".parse().unwrap());
    r
}

/// A chunked response sent in pieces, 50 ms apart.
pub fn streaming_response(chunks: Vec<&'static str>) -> Response<BoxBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(Ok(Frame::data(Bytes::from_static(c.as_bytes())))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let stream = tokio_stream_from(rx);
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
    r
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl FakeUpstream {
    pub async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> FakeUpstream {
        Self::start_with(tls, Arc::new(|_r: &Received| json_response(200, &serde_json::json!({"ok": true})))).await
    }

    pub async fn start_with(tls: Option<Arc<rustls::ServerConfig>>, responder: Responder) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let rec = rec.clone();
                let responder = responder.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let rec = rec.clone();
                        let responder = responder.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            let r = Received {
                                method: parts.method.to_string(),
                                path: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            let resp = responder(&r);
                            rec.lock().unwrap().push(r);
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(a) => {
                            if let Ok(s) = a.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        FakeUpstream { addr, received, _task: task }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits (up to 10 s) until at least `n` requests have arrived.
    pub async fn wait_count(&self, n: usize) {
        for _ in 0..400 {
            if self.count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the fake upstream saw {} requests, wanted {n}", self.count());
    }
}

/// A self-signed CA and a server certificate for 127.0.0.1 / localhost.
pub struct TestPki {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    TestPki { ca_pem: ca.pem(), server: Arc::new(server) }
}

/// A running server.
pub struct TestApp {
    pub agent: String,
    pub control: String,
    pub dir: tempfile::TempDir,
    pub reloader: Arc<approvalplane::reload::Reloader>,
    stop: Option<tokio::sync::oneshot::Sender<String>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub struct Options {
    pub upstream_url: String,
    pub rules: Vec<(&'static str, String)>,
    pub extra_toml: String,
    pub server_toml: String,
    pub clock: Arc<dyn Clock>,
    pub ca_pem: Option<String>,
    pub hooks: approvalplane::app::Hooks,
    pub watch_rules: bool,
    pub policy_toml: String,
    /// The `[[approver]]` and `[routes.*]` part of the config.
    pub people_toml: String,
    /// Extra environment variables (secrets named by `extra_toml`).
    pub env: Vec<(String, String)>,
    /// Extra keys of `[routes.finance-oncall]` and of approver alice (added to
    /// the default people).
    pub finance_route_toml: String,
    pub alice_toml: String,
}

/// The default approvers and routes.
pub const PEOPLE_TOML: &str = r#"
[[approver]]
id = "alice"
token_env = "ALICE_TOKEN"

[[approver]]
id = "bob"
token_env = "BOB_TOKEN"

[[approver]]
id = "carol"
token_env = "CAROL_TOKEN"

[routes.finance-oncall]
approvers = ["alice", "bob"]
escalate_to = "finance-leads"

[routes.finance-leads]
approvers = ["carol"]

[routes.eng-oncall]
approvers = ["carol"]
"#;

impl Options {
    pub fn new(upstream: &FakeUpstream) -> Options {
        Options {
            upstream_url: format!("http://{}", upstream.addr),
            rules: vec![("stripe.rego", STRIPE_RULES.to_string())],
            extra_toml: String::new(),
            server_toml: "hold_timeout = \"10s\"\n".into(),
            clock: Arc::new(SystemClock),
            ca_pem: None,
            hooks: Default::default(),
            watch_rules: false,
            policy_toml: String::new(),
            people_toml: PEOPLE_TOML.to_string(),
            env: Vec::new(),
            finance_route_toml: String::new(),
            alice_toml: String::new(),
        }
    }
}

/// The seed's own example: refunds over $500 need finance-oncall; small refunds and
/// GETs are allowed; merges to main need eng-oncall.
pub const STRIPE_RULES: &str = r#"package approvalplane

amount := to_number(input.request.parsed_body.amount) if is_string(input.request.parsed_body.amount)

approval contains {
    "id": "stripe.refund.large",
    "reason": "amount over your $500 auto-approve threshold",
    "route": "finance-oncall",
    "risk": "high",
    "action": "issue_refund",
    "summary": {"amount": sprintf("%v", [amount]), "charge": object.get(input.request.parsed_body, "charge", "")},
    "escalate_after": "15m",
    "expires_after": "1h",
} if {
    input.upstream == "stripe"
    input.request.method == "POST"
    input.request.path == "/v1/refunds"
    amount > 50000
}

allow contains {"id": "stripe.refund.small", "reason": "small refund"} if {
    input.request.method == "POST"
    input.request.path == "/v1/refunds"
    amount <= 50000
}

allow contains {"id": "reads", "reason": "reads are allowed"} if input.request.method == "GET"

deny contains {"id": "stripe.payouts.blocked", "reason": "payouts are not allowed for agents"} if {
    input.request.path == "/v1/payouts"
}

# A deliberately broken rule: to_number on a non-number is a builtin error.
deny contains {"id": "broken", "reason": "never"} if {
    input.request.path == "/v1/broken"
    to_number(input.request.parsed_body.x) > 1
}
"#;

impl TestApp {
    pub async fn start(o: Options) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        for (name, text) in &o.rules {
            std::fs::write(rules.join(name), text).unwrap();
        }
        let ca_line = match &o.ca_pem {
            Some(pem) => {
                std::fs::write(dir.path().join("ca.pem"), pem).unwrap();
                "ca_file = \"ca.pem\"\n".to_string()
            }
            None => String::new(),
        };
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:1"
control_listen = "127.0.0.1:2"
{server}
[[upstream]]
name = "stripe"
url = "{url}"
inject_header = "Authorization"
inject_value_env = "STRIPE_AUTH"
{ca_line}
[[agent]]
id = "support-agent"
token_env = "AGENT_TOKEN"

[[agent]]
id = "other-agent"
token_env = "OTHER_AGENT_TOKEN"

{people}
[policy]
rules = "rules"
{policy}

[audit]
path = "audit"
{extra}
"#,
            server = o.server_toml,
            url = o.upstream_url,
            extra = o.extra_toml,
            policy = o.policy_toml,
            people = o
                .people_toml
                .replace("token_env = \"ALICE_TOKEN\"\n", &format!("token_env = \"ALICE_TOKEN\"\n{}\n", o.alice_toml))
                .replace(
                    "escalate_to = \"finance-leads\"\n",
                    &format!("escalate_to = \"finance-leads\"\n{}\n", o.finance_route_toml)
                ),
        );
        let file = dir.path().join("config.toml");
        std::fs::write(&file, &toml).unwrap();
        let cfg = Config::load(&file).unwrap();
        let mut env = MapEnv(BTreeMap::from([
            ("AGENT_TOKEN".into(), AGENT_TOKEN.into()),
            ("OTHER_AGENT_TOKEN".into(), OTHER_AGENT_TOKEN.into()),
            ("ALICE_TOKEN".into(), ALICE.into()),
            ("BOB_TOKEN".into(), BOB.into()),
            ("CAROL_TOKEN".into(), CAROL.into()),
            ("STRIPE_AUTH".into(), UPSTREAM_SECRET.into()),
        ]));
        env.0.extend(o.env.iter().cloned());
        let (secrets, _) = cfg.resolve_secrets(&env).unwrap();
        let watch = cfg.policy.watch_interval;
        let app = App::build_with(cfg, secrets, o.clock.clone(), "test", o.hooks.clone()).await.unwrap();
        let reloader = app.reloader(Arc::new(env));
        if o.watch_rules {
            tokio::spawn(approvalplane::reload::watch_rules(reloader.clone(), watch));
        }
        let agent_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let control_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent = format!("http://{}", agent_l.local_addr().unwrap());
        let control = format!("http://{}", control_l.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let task = tokio::spawn(async move {
            app.serve(agent_l, control_l, async move { rx.await.unwrap_or_else(|_| "dropped".into()) }).await.unwrap();
        });
        TestApp { agent, control, dir, reloader, stop: Some(tx), task: Some(task) }
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    pub fn rules_dir(&self) -> PathBuf {
        self.dir.path().join("rules")
    }

    /// Every audit record written so far (all chains).
    pub fn records(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(self.audit_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        for f in files {
            for l in std::fs::read_to_string(f).unwrap().lines() {
                out.push(serde_json::from_str(l).unwrap());
            }
        }
        out
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send("test".into());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t).await.expect("server stops").unwrap();
        }
    }

    /// Pending approvals as alice sees them.
    pub async fn pending(&self) -> Vec<Value> {
        let r = call(
            "GET",
            &format!("{}/v1/admin/approvals?status=pending", self.control),
            &[("authorization", &format!("Bearer {ALICE}"))],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["approvals"].as_array().unwrap().clone()
    }

    /// Waits until exactly `n` approvals are pending; returns them.
    pub async fn wait_pending(&self, n: usize) -> Vec<Value> {
        for _ in 0..200 {
            let p = self.pending().await;
            if p.len() == n {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("never saw {n} pending approvals: {:?}", self.pending().await);
    }

    pub async fn decide(&self, token: &str, id: &str, decision: &str, reason: Option<&str>) -> Reply {
        let body = serde_json::json!({"decision": decision, "reason": reason}).to_string();
        call(
            "POST",
            &format!("{}/v1/admin/approvals/{id}/decision", self.control),
            &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json")],
            &body,
        )
        .await
    }

    /// A refund through the proxy as the support agent.
    pub async fn refund(&self, amount: u64, extra: &[(&str, &str)]) -> Reply {
        let mut h: Vec<(&str, &str)> =
            vec![("authorization", "Bearer agent-token-1"), ("content-type", "application/x-www-form-urlencoded")];
        h.extend_from_slice(extra);
        call("POST", &format!("{}/stripe/v1/refunds", self.agent), &h, &format!("charge=ch_1&amount={amount}")).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send("drop".into());
        }
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn error_type(&self) -> String {
        self.json()["error"]["type"].as_str().unwrap_or("").to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn call(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    call_bytes(method, url, headers, Bytes::copy_from_slice(body.as_bytes())).await
}

pub async fn call_bytes(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Reply {
    let uri: http::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder().method(method).uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    b = b.header("host", addr.as_str());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(b.body(Full::new(body)).unwrap()))
        .await
        .expect("response within 30s")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply { status: parts.status.as_u16(), headers: parts.headers, body }
}

/// The approvalplane binary.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_approvalplane"))
}

pub fn run_bin(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
