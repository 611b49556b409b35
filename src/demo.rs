//! `approvalplane demo`: the proxy with a built-in echo upstream, the shipped rules
//! and fixed demo tokens, so a newcomer sees a held request and an approval in two
//! minutes without any account. Everything it writes goes under `--dir`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{Config, MapEnv};

/// The shipped rules, embedded so the demo needs no checkout.
pub const SHIPPED_RULES: &[(&str, &str)] = &[
    ("lib.rego", include_str!("../rules/lib.rego")),
    ("stripe.rego", include_str!("../rules/stripe.rego")),
    ("github.rego", include_str!("../rules/github.rego")),
    ("email.rego", include_str!("../rules/email.rego")),
    ("records.rego", include_str!("../rules/records.rego")),
    ("generic.rego", include_str!("../rules/generic.rego")),
    ("asked.rego", include_str!("../rules/asked.rego")),
    ("data.json", include_str!("../rules/data.json")),
];

pub const AGENT_TOKEN: &str = "demo-agent-token";
pub const APPROVER_TOKEN: &str = "demo-alice-token";

/// Starts an echo server: every request is answered 200 with what it received.
pub async fn echo_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    let v = json!({
                        "echo": true,
                        "method": parts.method.as_str(),
                        "path": parts.uri.to_string(),
                        "body": String::from_utf8_lossy(&body),
                        "authorization_seen_by_upstream": parts.headers.get("authorization").map(|v| v.to_str().unwrap_or("")),
                    });
                    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
                    r.headers_mut().insert("content-type", "application/json".parse().expect("static"));
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

/// Writes the demo config and rules under `dir`; returns the config path.
pub fn write_demo(dir: &Path, listen: SocketAddr, control: SocketAddr, echo: SocketAddr) -> std::io::Result<PathBuf> {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules)?;
    for (name, text) in SHIPPED_RULES {
        std::fs::write(rules.join(name), text)?;
    }
    let mut upstreams = String::new();
    for name in ["stripe", "github", "sendgrid"] {
        upstreams.push_str(&format!(
            "[[upstream]]\nname = \"{name}\"\nurl = \"http://{echo}\"\ninject_header = \"Authorization\"\ninject_value_env = \"DEMO_UPSTREAM_AUTH\"\n\n"
        ));
    }
    let mut routes = String::new();
    for r in ["finance-oncall", "eng-oncall", "comms-oncall", "data-oncall", "ops-oncall"] {
        routes.push_str(&format!("[routes.{r}]\napprovers = [\"alice\"]\n\n"));
    }
    let config = format!(
        "# Written by `approvalplane demo`.\n[server]\nlisten = \"{listen}\"\ncontrol_listen = \"{control}\"\nhold_timeout = \"30s\"\nshutdown_grace = \"2s\"\n\n{upstreams}[[agent]]\nid = \"support-agent\"\ntoken_env = \"DEMO_AGENT_TOKEN\"\n\n[[approver]]\nid = \"alice\"\ntoken_env = \"DEMO_APPROVER_TOKEN\"\n\n{routes}[policy]\nrules = \"rules\"\ndata = \"rules/data.json\"\n\n[audit]\npath = \"audit\"\n"
    );
    let path = dir.join("demo.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// The environment the demo config names.
pub fn demo_env() -> MapEnv {
    MapEnv(BTreeMap::from([
        ("DEMO_AGENT_TOKEN".to_string(), AGENT_TOKEN.to_string()),
        ("DEMO_APPROVER_TOKEN".to_string(), APPROVER_TOKEN.to_string()),
        ("DEMO_UPSTREAM_AUTH".to_string(), "Bearer sk_test_demo_injected_by_the_proxy".to_string()),
    ]))
}

/// The steps printed for the newcomer.
pub fn steps(cfg: &Config) -> String {
    let a = cfg.server.listen;
    let c = cfg.server.control_listen;
    format!(
        r#"ApprovalPlane demo is running.
  agent-facing proxy: http://{a}   (upstreams stripe, github, sendgrid -> a built-in echo server)
  control listener:   http://{c}   (admin API, health, metrics)
  audit log:          {audit}
  agent token: {AGENT_TOKEN}    approver token (alice): {APPROVER_TOKEN}

1. A small refund is allowed at once (the echo server shows the injected credential):
   curl -s -X POST http://{a}/stripe/v1/refunds -H 'Authorization: Bearer {AGENT_TOKEN}' -d charge=ch_1 -d amount=2000

2. A $2,400 refund is held for a person (this waits up to 30s; Prefer: wait=0 answers at once):
   curl -s -X POST http://{a}/stripe/v1/refunds -H 'Authorization: Bearer {AGENT_TOKEN}' -H 'Prefer: wait=0' -d charge=ch_1 -d amount=240000

3. See it waiting, as approver alice:
   curl -s 'http://{c}/v1/admin/approvals?status=pending' -H 'Authorization: Bearer {APPROVER_TOKEN}'

4. Approve it (use the id from step 2 or 3):
   curl -s -X POST http://{c}/v1/admin/approvals/APPROVAL_ID/decision -H 'Authorization: Bearer {APPROVER_TOKEN}' -d '{{"decision": "approve", "reason": "checked"}}'

5. Retry the identical request: it is forwarded exactly once.
   curl -s -X POST http://{a}/stripe/v1/refunds -H 'Authorization: Bearer {AGENT_TOKEN}' -d charge=ch_1 -d amount=240000

6. Verify the audit trail:
   approvalplane audit verify {audit}

Also try:
  - the approver web page (phone-sized): http://{c}/ui   (sign in with alice's token)
  - an agent that asks first, with the Python SDK (pip install ./sdk/python):
      export APPROVALPLANE_URL=http://{a} APPROVALPLANE_TOKEN={AGENT_TOKEN}
      python3 -c 'from approvalplane import request_approval as r; print(r(action="issue_refund", payload={{"customer": "cus_4193", "amount": 2400.00}}, risk="high", timeout=0))'
  - the same as MCP tools over stdio (request_approval, get_approval):
      DEMO_AGENT_TOKEN={AGENT_TOKEN} approvalplane mcp --config {config}
"#,
        audit = cfg.audit.path.display(),
        config = cfg.file.display()
    )
}
