//! `rules explain`: shows a reviewer exactly why a request gets its decision.
//!
//! The request file is JSON `{method, path, headers, body, agent?}` (the path with
//! its `/{upstream}` prefix) or a raw HTTP/1.1 request whose body is the rest of the
//! file. Needs no secrets.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Value};

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::policy::input::{self, HttpView};
use crate::policy::{Decision, RuleSets, Verdict};

/// A request to explain.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub agent: String,
    pub justification: Option<String>,
}

/// Parses a JSON or raw HTTP request file.
pub fn parse_request(raw: &[u8]) -> Result<ExplainRequest, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "the request file is not UTF-8".to_string())?;
    if text.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("request JSON: {e}"))?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let mut headers = Vec::new();
        if let Some(h) = v.get("headers").and_then(Value::as_object) {
            for (k, x) in h {
                let val = x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string());
                headers.push((k.to_ascii_lowercase(), val));
            }
        }
        let body = match v.get("body") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(b)) => b.as_bytes().to_vec(),
            Some(other) => {
                if !headers.iter().any(|(k, _)| k == "content-type") {
                    headers.push(("content-type".into(), "application/json".into()));
                }
                other.to_string().into_bytes()
            }
        };
        return Ok(ExplainRequest {
            method: s("method").ok_or("request JSON needs \"method\"")?.to_ascii_uppercase(),
            path: s("path").ok_or("request JSON needs \"path\"")?,
            headers,
            body,
            agent: s("agent").unwrap_or_else(|| "anonymous".into()),
            justification: s("justification"),
        });
    }
    // Raw HTTP/1.1.
    let (head, body) = match text.find("\r\n\r\n") {
        Some(i) => (&text[..i], &text[i + 4..]),
        None => match text.find("\n\n") {
            Some(i) => (&text[..i], &text[i + 2..]),
            None => (text, ""),
        },
    };
    let mut lines = head.lines();
    let start = lines.next().ok_or("empty request file")?;
    let mut parts = start.split_whitespace();
    let method = parts.next().ok_or("no method")?.to_ascii_uppercase();
    let path = parts.next().ok_or("no path")?.to_string();
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l.split_once(':').ok_or_else(|| format!("bad header line {l:?}"))?;
        let k = k.trim().to_ascii_lowercase();
        if k == "host" || k == "content-length" {
            continue;
        }
        headers.push((k, v.trim().to_string()));
    }
    let justification = headers.iter().find(|(k, _)| k == "x-approval-justification").map(|(_, v)| v.clone());
    headers.retain(|(k, _)| k != "x-approval-justification");
    Ok(ExplainRequest {
        method,
        path,
        headers,
        body: body.as_bytes().to_vec(),
        agent: "anonymous".into(),
        justification,
    })
}

/// The explanation as a JSON document (also used by snapshot tests).
pub fn explain(
    cfg: &Config,
    policy: &crate::policy::PolicyBundle,
    req: &ExplainRequest,
    now: crate::clock::Timestamp,
) -> Result<Value, String> {
    let (path, query) = match req.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path.as_str(), None),
    };
    crate::proxy::check_path(path)
        .map_err(|e| e.body()["error"]["message"].as_str().unwrap_or("bad path").to_string())?;
    let rest = &path[1..];
    let (upstream, sub) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let up = cfg.upstream(upstream).ok_or_else(|| format!("no upstream named {upstream:?} in the config"))?;
    let inject = up.inject_header.as_ref().map(|h| h.as_str().to_string());
    let view = HttpView {
        agent: &req.agent,
        upstream,
        method: &req.method,
        path: sub,
        query,
        headers: &req.headers,
        body: &req.body,
        justification: req.justification.as_deref(),
        inject_header: inject.as_deref(),
    };
    let doc = match input::http_input::<Value>(&view, now) {
        Ok(d) => d,
        Err(e) => {
            return Ok(json!({
                "input": null,
                "matched": {"deny": [], "approval": [], "allow": []},
                "decision": "deny",
                "reason": format!("unreadable request, refused before the rules: {e}"),
                "rule_ids": ["approvalplane.malformed_body"],
                "approvers": [],
            }))
        }
    };
    let (verdict, sets) = policy.evaluate(&doc);
    Ok(render(cfg, &doc, &verdict, &sets))
}

fn render(cfg: &Config, doc: &Value, v: &Verdict, sets: &RuleSets) -> Value {
    let mut approvers = Vec::new();
    if let Some(plan) = &v.plan {
        for r in &plan.routes {
            if let Some(rc) = cfg.routes.get(r) {
                approvers.push(json!({
                    "route": r,
                    "approvers": rc.approvers,
                    "slack_channel": rc.slack_channel,
                    "slack_usergroup": rc.slack_usergroup,
                    "escalate_to": rc.escalate_to,
                }));
            }
        }
    }
    json!({
        "input": doc,
        "matched": {"deny": sets.deny, "approval": sets.approval, "allow": sets.allow},
        "decision": v.decision.as_str(),
        "matched_decision": v.matched.as_str(),
        "shadow": v.shadowed(),
        "reason": v.reason,
        "rule_ids": v.rule_ids,
        "error": v.error,
        "plan": v.plan.as_ref().map(|p| json!({
            "routes": p.routes,
            "risk": p.risk.as_str(),
            "risk_reason": p.risk_reason,
            "action": p.action,
            "summary": p.summary,
            "escalate_after": p.escalate_after.map(|d| humantime::format_duration(d).to_string()),
            "expires_after": p.expires_after.map(|d| humantime::format_duration(d).to_string()),
            "quorum": p.quorum,
        })),
        "approvers": approvers,
    })
}

pub fn run(config: &Path, request: &Path) -> ExitCode {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let policy = match crate::app::load_policy(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let raw = match std::fs::read(request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", request.display());
            return ExitCode::from(2);
        }
    };
    let req = match parse_request(&raw) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", request.display());
            return ExitCode::from(2);
        }
    };
    match explain(&cfg, &policy, &req, SystemClock.now()) {
        Ok(v) => {
            print_explanation(&v);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_explanation(v: &Value) {
    println!("input:");
    println!("{}", serde_json::to_string_pretty(&v["input"]).unwrap_or_default());
    println!();
    println!("matched rule elements:");
    let mut any = false;
    for set in ["deny", "approval", "allow"] {
        for e in v["matched"][set].as_array().map(Vec::as_slice).unwrap_or_default() {
            any = true;
            println!("  {set:<8} {}", serde_json::to_string(e).unwrap_or_default());
        }
    }
    if !any {
        println!("  (none)");
    }
    println!();
    let decision = v["decision"].as_str().unwrap_or("deny");
    if v["shadow"] == json!(true) {
        println!("decision: {decision} (shadow: the rules asked for {})", v["matched_decision"].as_str().unwrap_or(""));
    } else {
        println!("decision: {decision}");
    }
    println!("reason: {}", v["reason"].as_str().unwrap_or(""));
    println!(
        "rule ids: {}",
        v["rule_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );
    if let Some(e) = v["error"].as_str() {
        println!("error: {e}");
    }
    let approvers = v["approvers"].as_array().cloned().unwrap_or_default();
    if decision == Decision::RequireApproval.as_str() || !approvers.is_empty() {
        println!("who would be asked:");
        for a in approvers {
            let names: Vec<&str> =
                a["approvers"].as_array().map(|x| x.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            println!(
                "  route {}: {}{}{}",
                a["route"].as_str().unwrap_or(""),
                if names.is_empty() { "(no approvers listed)".to_string() } else { names.join(", ") },
                a["slack_channel"].as_str().map(|c| format!("; slack channel {c}")).unwrap_or_default(),
                a["escalate_to"].as_str().map(|c| format!("; escalates to {c}")).unwrap_or_default(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_json_requests_parse_alike() {
        let raw = b"POST /stripe/v1/refunds HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\n\r\namount=10";
        let j = br#"{"method": "post", "path": "/stripe/v1/refunds", "headers": {"Content-Type": "application/x-www-form-urlencoded"}, "body": "amount=10"}"#;
        assert_eq!(parse_request(raw).unwrap(), parse_request(j).unwrap());
    }
}
