//! `audit export`: the SOC 2 evidence export. One row per action (an approval, or a
//! rule's automatic approval), merged across chains by time, each value traced back
//! to its record by `chain:seq`. A trailer states every chain's seq range so an
//! auditor can check the population is complete.
//!
//! The export refuses a log that does not verify.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::verify::{verify_with, Anchors, VerifyError};
use crate::clock::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Read(#[from] VerifyError),
    #[error("the log does not verify ({0}); run `approvalplane audit verify` for details; nothing exported")]
    Tampered(String),
    #[error("{0}")]
    Write(#[from] std::io::Error),
}

/// One action, from request to execution.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub approval_id: String,
    pub agent: String,
    pub action: String,
    pub summary: Map<String, Value>,
    pub body_sha256: String,
    pub risk: String,
    pub routes: Vec<String>,
    pub justification: Option<String>,
    pub requested_at: Option<String>,
    pub status: String,
    pub decided_by: Option<String>,
    pub approvals: Vec<String>,
    pub channel: Option<String>,
    pub decided_at: Option<String>,
    pub reason: Option<String>,
    pub executed_at: Option<String>,
    pub upstream_status: Option<u64>,
    pub rule_ids: Vec<String>,
    pub policy_bundle: String,
    /// The approver is not the requesting agent.
    pub separation_of_duties: bool,
    pub requested_record: Option<String>,
    pub decided_record: Option<String>,
    pub executed_record: Option<String>,
}

/// Every chain's seq range.
#[derive(Debug, Clone, Serialize)]
pub struct ChainRange {
    pub chain: String,
    pub first_seq: u64,
    pub last_seq: Option<u64>,
    pub records: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Trailer {
    pub rows: usize,
    pub from: Option<String>,
    pub to: Option<String>,
    pub chains: Vec<ChainRange>,
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

fn strs(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn fill_subject(r: &mut Row, v: &Value) {
    if r.agent.is_empty() {
        r.agent = s(v, "agent").unwrap_or_default();
        r.action = s(v, "action").unwrap_or_default();
        r.body_sha256 = s(v, "body_sha256").unwrap_or_default();
        r.rule_ids = strs(v, "rule_ids");
        r.policy_bundle = s(v, "policy_bundle").unwrap_or_default();
    }
}

/// Builds the rows and trailer from the log at `path`.
pub fn collect(
    path: &Path,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Result<(Vec<Row>, Trailer), ExportError> {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut ranges: BTreeMap<String, ChainRange> = BTreeMap::new();
    let report = verify_with(path, &Anchors::default(), |v| {
        let chain = s(v, "chain").unwrap_or_default();
        let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let range = ranges.entry(chain.clone()).or_insert(ChainRange {
            chain: chain.clone(),
            first_seq: seq,
            last_seq: None,
            records: 0,
        });
        range.last_seq = Some(seq);
        range.records += 1;
        let Some(id) = s(v, "approval_id") else { return };
        let at = format!("{chain}:{seq}");
        let ts = s(v, "ts");
        let r = rows.entry(id.clone()).or_insert_with(|| Row {
            approval_id: id,
            status: "pending".into(),
            ..Default::default()
        });
        match v.get("kind").and_then(Value::as_str).unwrap_or("") {
            "approval_requested" => {
                fill_subject(r, v);
                r.summary = v.get("summary").and_then(Value::as_object).cloned().unwrap_or_default();
                r.risk = s(v, "risk").unwrap_or_default();
                r.routes = strs(v, "routes");
                r.justification = s(v, "justification");
                r.requested_at = ts;
                r.requested_record = Some(at);
            }
            "decision" => {
                fill_subject(r, v);
                if r.requested_at.is_none() {
                    r.requested_at = ts;
                    r.requested_record = Some(at);
                }
            }
            "approval_decided" => {
                fill_subject(r, v);
                r.approvals = strs(v, "approvals");
                let status = s(v, "status").unwrap_or_default();
                if status != "pending" {
                    r.status = status;
                    r.decided_by = s(v, "decided_by");
                    r.channel = s(v, "channel");
                    r.reason = s(v, "reason");
                    r.decided_at = ts;
                    r.decided_record = Some(at);
                }
            }
            "approval_ended" => {
                fill_subject(r, v);
                r.status = s(v, "status").unwrap_or_default();
                r.reason = s(v, "reason");
                r.decided_at = ts;
                r.decided_record = Some(at);
            }
            "grant_used" => {
                r.executed_at = ts;
                r.executed_record = Some(at);
            }
            "forwarded" => {
                r.upstream_status = v.get("status").and_then(Value::as_u64);
                if r.executed_at.is_none() {
                    r.executed_at = ts;
                    r.executed_record = Some(at);
                }
            }
            _ => {}
        }
    })?;
    if let Some(f) = report.findings.first() {
        return Err(ExportError::Tampered(f.to_string()));
    }
    let in_range = |t: &Option<String>| {
        let Some(t) = t.as_deref().and_then(|t| Timestamp::parse(t).ok()) else {
            return from.is_none() && to.is_none();
        };
        from.is_none_or(|f| t >= f) && to.is_none_or(|e| t < e)
    };
    let mut out: Vec<Row> = rows
        .into_values()
        .filter(|r| in_range(&r.requested_at))
        .map(|mut r| {
            r.separation_of_duties = r.decided_by.as_deref().is_some_and(|d| d != r.agent);
            r
        })
        .collect();
    out.sort_by(|a, b| (&a.requested_at, &a.approval_id).cmp(&(&b.requested_at, &b.approval_id)));
    let trailer = Trailer {
        rows: out.len(),
        from: from.map(|t| t.rfc3339()),
        to: to.map(|t| t.rfc3339()),
        chains: ranges.into_values().collect(),
    };
    Ok((out, trailer))
}

const CSV_COLUMNS: &[&str] = &[
    "approval_id",
    "agent",
    "action",
    "summary",
    "body_sha256",
    "risk",
    "routes",
    "justification",
    "requested_at",
    "status",
    "decided_by",
    "approvals",
    "channel",
    "decided_at",
    "reason",
    "executed_at",
    "upstream_status",
    "rule_ids",
    "policy_bundle",
    "separation_of_duties",
    "requested_record",
    "decided_record",
    "executed_record",
];

fn csv_field(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(";")
        }
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) || text.starts_with(['=', '+', '-', '@']) {
        // Quote, and defuse spreadsheet formulas.
        let t = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text };
        format!("\"{}\"", t.replace('"', "\"\""))
    } else {
        text
    }
}

/// Writes the export to `out`.
pub fn write(out: &mut dyn std::io::Write, rows: &[Row], trailer: &Trailer, csv: bool) -> std::io::Result<()> {
    if csv {
        writeln!(out, "{}", CSV_COLUMNS.join(","))?;
        for r in rows {
            let v = serde_json::to_value(r).unwrap_or(Value::Null);
            let line: Vec<String> = CSV_COLUMNS.iter().map(|c| csv_field(&v[*c])).collect();
            writeln!(out, "{}", line.join(","))?;
        }
        writeln!(out, "# trailer: {} rows", trailer.rows)?;
        for c in &trailer.chains {
            writeln!(
                out,
                "# chain {} seq {}..={} ({} records)",
                c.chain,
                c.first_seq,
                c.last_seq.map_or("-".into(), |s| s.to_string()),
                c.records
            )?;
        }
    } else {
        for r in rows {
            writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default())?;
        }
        writeln!(out, "{}", json!({ "trailer": trailer }))?;
    }
    Ok(())
}
