//! The evidence-grade ledger: a data-driven tamper suite (one case per attack, each
//! with the finding it must produce), a property test over single-byte changes,
//! signed checkpoints with copies, the export, and fault injection.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use approvalplane::audit::record::{canonical, hash_of};
use approvalplane::audit::verify::{verify_path, FindingKind, Report};
use approvalplane::audit::writer::{checkpoint_message, key_id, read_signing_key, read_verifying_key};
use approvalplane::audit::Anchors;
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use serde_json::Value;

use crate::harness::*;

/// A finished run's audit directory, with keys and checkpoint copies.
struct Ledger {
    _tmp: tempfile::TempDir,
    audit: PathBuf,
    copies: PathBuf,
    pubkey: PathBuf,
    key: SigningKey,
}

/// Runs a server with a signing key, checkpoint copies, small files and frequent
/// checkpoints, and drives a mix of allowed, denied and approved requests.
async fn make_ledger() -> Ledger {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out, err) = run_bin(&["audit", "keygen", "--out", tmp.path().join("keys").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    let copies = tmp.path().join("copies");
    o.extra_toml = format!(
        "signing_key_file = \"{}\"\ncheckpoint_copy = \"{}\"\nrotate_bytes = 4096\ncheckpoint_every = 4\n",
        tmp.path().join("keys/audit.key").display(),
        copies.display()
    );
    let mut app = TestApp::start(o).await;
    for i in 0..6 {
        assert_eq!(app.refund(1000 + i, &[]).await.status, 200);
    }
    let r = app.refund(240000, &[("prefer", "wait=0")]).await;
    let id = r.json()["error"]["approval_id"].as_str().unwrap().to_string();
    app.decide(ALICE, &id, "approve", Some("checked")).await;
    assert_eq!(app.refund(240000, &[]).await.status, 200);
    assert_eq!(
        call("POST", &format!("{}/stripe/v1/payouts", app.agent), &[("authorization", "Bearer agent-token-1")], "")
            .await
            .status,
        403
    );
    app.stop().await;
    let audit = tmp.path().join("audit_copy");
    copy_dir(&app.audit_dir(), &audit);
    let key = read_signing_key(&tmp.path().join("keys/audit.key")).unwrap();
    Ledger { audit, copies, pubkey: tmp.path().join("keys/audit.pub"), key, _tmp: tmp }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn chain_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    v.sort();
    v
}

/// All records of the (single) chain, with the file each came from.
fn records(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for f in chain_files(dir) {
        for l in std::fs::read_to_string(&f).unwrap().lines() {
            out.push((f.clone(), serde_json::from_str(l).unwrap()));
        }
    }
    out
}

/// Writes records back, one line each, into the files they came from.
fn write_records(dir: &Path, recs: &[(PathBuf, Value)]) {
    for f in chain_files(dir) {
        std::fs::write(&f, "").unwrap();
    }
    for (f, v) in recs {
        use std::io::Write;
        let mut h = std::fs::OpenOptions::new().append(true).open(f).unwrap();
        writeln!(h, "{}", canonical(v)).unwrap();
    }
}

/// Re-computes `prev` and `hash` from record `from` on: what an attacker without
/// the key does to hide an edit.
fn rechain(recs: &mut [(PathBuf, Value)], from: usize) {
    for i in from..recs.len() {
        if i > 0 {
            let prev = recs[i - 1].1["hash"].clone();
            recs[i].1["prev"] = prev;
        }
        reseal(&mut recs[i].1);
    }
}

fn reseal(v: &mut Value) {
    v.as_object_mut().unwrap().remove("hash");
    let h = hash_of(v);
    v["hash"] = Value::from(h);
}

fn renumber(recs: &mut [(PathBuf, Value)]) {
    for (i, r) in recs.iter_mut().enumerate() {
        r.1["seq"] = Value::from(i as u64);
    }
}

fn find(recs: &[(PathBuf, Value)], kind: &str, after: usize) -> usize {
    (after..recs.len()).find(|&i| recs[i].1["kind"] == kind).unwrap_or_else(|| panic!("a {kind} record after {after}"))
}

fn verify(l: &Ledger, dir: &Path) -> Report {
    let anchors = Anchors { key: Some(read_verifying_key(&l.pubkey).unwrap()), copies: Some(l.copies.clone()) };
    verify_path(dir, &anchors).unwrap()
}

type Tamper = fn(&Ledger, &Path);

#[tokio::test]
async fn every_tampering_is_detected_with_the_right_finding() {
    let l = make_ledger().await;
    assert!(chain_files(&l.audit).len() >= 3, "rotated into several files");
    let clean = verify(&l, &l.audit);
    assert!(clean.intact(), "{:?}", clean.findings);
    assert!(clean.chains[0].checkpoints >= 3);
    let cases: Vec<(&str, Tamper, &[FindingKind])> = vec![
        (
            "a modified field",
            |_, d| {
                let mut r = records(d);
                let i = find(&r, "forwarded", 0);
                r[i].1["status"] = Value::from(500);
                write_records(d, &r);
            },
            &[FindingKind::HashMismatch],
        ),
        (
            "a modified record with its own hash recomputed",
            |_, d| {
                let mut r = records(d);
                let i = find(&r, "decision", 0);
                r[i].1["decision"] = Value::from("deny");
                reseal(&mut r[i].1);
                write_records(d, &r);
            },
            &[FindingKind::BrokenLink],
        ),
        (
            "everything after an edit re-chained",
            |_, d| {
                let mut r = records(d);
                let i = find(&r, "approval_decided", 0);
                r[i].1["decided_by"] = Value::from("mallory");
                rechain(&mut r, i);
                write_records(d, &r);
            },
            &[FindingKind::CheckpointMismatch, FindingKind::BadCheckpoint, FindingKind::BadSignature],
        ),
        (
            "a deleted middle record",
            |_, d| {
                let mut r = records(d);
                r.remove(r.len() / 2);
                write_records(d, &r);
            },
            &[FindingKind::SequenceGap],
        ),
        (
            "a deleted record, the rest renumbered and re-chained",
            |_, d| {
                let mut r = records(d);
                let i = find(&r, "approval_requested", 0);
                r.remove(i);
                renumber(&mut r);
                rechain(&mut r, i);
                write_records(d, &r);
            },
            &[FindingKind::CheckpointMismatch, FindingKind::BadCheckpoint, FindingKind::BadSignature],
        ),
        (
            "swapped records",
            |_, d| {
                let mut r = records(d);
                let i = r.len() / 2;
                let (a, b) = (r[i].1.clone(), r[i + 1].1.clone());
                r[i].1 = b;
                r[i + 1].1 = a;
                write_records(d, &r);
            },
            &[FindingKind::SequenceGap],
        ),
        (
            "an inserted forged record",
            |_, d| {
                let mut r = records(d);
                let i = find(&r, "decision", 3);
                let mut forged = r[i].1.clone();
                forged["decision"] = Value::from("allow");
                forged["seq"] = Value::from(r[i].1["seq"].as_u64().unwrap() + 1);
                forged["prev"] = r[i].1["hash"].clone();
                reseal(&mut forged);
                let f = r[i].0.clone();
                r.insert(i + 1, (f, forged));
                write_records(d, &r);
            },
            &[FindingKind::SequenceGap, FindingKind::BrokenLink, FindingKind::CheckpointMismatch],
        ),
        (
            "a duplicated record",
            |_, d| {
                let mut r = records(d);
                let i = r.len() / 2;
                let dup = r[i].clone();
                r.insert(i + 1, dup);
                write_records(d, &r);
            },
            &[FindingKind::SequenceGap],
        ),
        (
            "truncation across a checkpoint",
            |_, d| {
                let mut r = records(d);
                let i = find(&r, "checkpoint", 5);
                r.truncate(i - 1);
                write_records(d, &r);
                // Whole files past the cut go too.
                for f in chain_files(d) {
                    if std::fs::metadata(&f).unwrap().len() == 0 {
                        std::fs::remove_file(f).unwrap();
                    }
                }
            },
            &[FindingKind::TruncatedBeforeCheckpoint],
        ),
        (
            "every chain file deleted",
            |_, d| {
                for f in chain_files(d) {
                    std::fs::remove_file(f).unwrap();
                }
            },
            &[FindingKind::TruncatedBeforeCheckpoint],
        ),
        (
            "a deleted rotated file",
            |_, d| {
                let files = chain_files(d);
                std::fs::remove_file(&files[1]).unwrap();
            },
            &[FindingKind::SequenceGap],
        ),
        (
            "a checkpoint edited",
            |_, d| {
                let mut r = records(d);
                let i = find(&r, "checkpoint", 0);
                let sig = r[i].1["signature"].as_str().unwrap().to_string();
                let flipped = match sig.strip_prefix('0') {
                    Some(rest) => format!("1{rest}"),
                    None => format!("0{}", &sig[1..]),
                };
                r[i].1["signature"] = Value::from(flipped);
                rechain(&mut r, i);
                write_records(d, &r);
            },
            &[FindingKind::BadSignature, FindingKind::CheckpointMismatch],
        ),
        (
            "a checkpoint signed by an unknown key",
            |_, d| {
                let other = SigningKey::from_bytes(&[7u8; 32]);
                let mut r = records(d);
                let chain = r[0].1["chain"].as_str().unwrap().to_string();
                for i in 0..r.len() {
                    if i > 0 {
                        let prev = r[i - 1].1["hash"].clone();
                        r[i].1["prev"] = prev;
                    }
                    if r[i].1["kind"] == "checkpoint" {
                        let ts = r[i].1["through_seq"].as_u64().unwrap();
                        let th = r[i].1["prev"].as_str().unwrap().to_string();
                        r[i].1["through_hash"] = Value::from(th.clone());
                        r[i].1["key_id"] = Value::from(key_id(&other.verifying_key()));
                        r[i].1["signature"] =
                            Value::from(hex::encode(other.sign(&checkpoint_message(&chain, ts, &th)).to_bytes()));
                    }
                    reseal(&mut r[i].1);
                }
                write_records(d, &r);
            },
            &[FindingKind::UnknownKey, FindingKind::CheckpointMismatch],
        ),
        (
            "reformatted white space or key order",
            |_, d| {
                let f = &chain_files(d)[0];
                let text = std::fs::read_to_string(f).unwrap();
                let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                let v: Value = serde_json::from_str(&lines[2]).unwrap();
                lines[2] = serde_json::to_string_pretty(&v).unwrap().replace('\n', "");
                std::fs::write(f, lines.join("\n") + "\n").unwrap();
            },
            &[FindingKind::NonCanonical],
        ),
        (
            "a record spliced in from another chain",
            |_, d| {
                let mut r = records(d);
                let i = r.len() / 2;
                r[i].1["chain"] = Value::from("0000000000000000beef");
                rechain(&mut r, i);
                write_records(d, &r);
            },
            &[FindingKind::WrongChain],
        ),
    ];
    for (name, tamper, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("audit");
        copy_dir(&l.audit, &d);
        tamper(&l, &d);
        let rep = verify(&l, &d);
        let first = rep.findings.first().unwrap_or_else(|| panic!("{name}: not detected"));
        assert!(expected.contains(&first.kind), "{name}: got {:?}: {first}", first.kind);
        // The CLI agrees: exit 1, naming the first bad record.
        let (code, out, _) = run_bin(&[
            "audit",
            "verify",
            d.to_str().unwrap(),
            "--key",
            l.pubkey.to_str().unwrap(),
            "--checkpoints",
            l.copies.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains("TAMPERED"), "{name}: {out}");
    }
    let _ = &l.key;
}

#[tokio::test]
async fn a_signed_log_verifies_and_exports() {
    let l = make_ledger().await;
    let (code, out, err) = run_bin(&[
        "audit",
        "verify",
        l.audit.to_str().unwrap(),
        "--key",
        l.pubkey.to_str().unwrap(),
        "--checkpoints",
        l.copies.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("verified ") && last.contains("through seq") && last.contains("anchored through checkpoint"),
        "{last}"
    );
    // Without --key: a warning, still exit 0.
    let (code, _, err) = run_bin(&["audit", "verify", l.audit.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(err.contains("--key"), "{err}");
    // The evidence export: one row per action, the approver differs from the agent,
    // and a trailer with the seq ranges.
    let (code, out, err) = run_bin(&["audit", "export", l.audit.to_str().unwrap(), "--format", "jsonl"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out.lines().map(|x| serde_json::from_str(x).unwrap()).collect();
    let (trailer, rows) = lines.split_last().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["agent"], "support-agent");
    assert_eq!(row["action"], "issue_refund");
    assert_eq!(row["decided_by"], "alice");
    assert_eq!(row["reason"], "checked");
    assert_eq!(row["status"], "approved");
    assert_eq!(row["separation_of_duties"], true);
    assert_eq!(row["upstream_status"], 200);
    for k in ["requested_at", "decided_at", "executed_at", "requested_record", "decided_record", "executed_record"] {
        assert!(row[k].is_string(), "{k}: {row}");
    }
    assert!(row["policy_bundle"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(row["rule_ids"], serde_json::json!(["stripe.refund.large"]));
    let chains = trailer["trailer"]["chains"].as_array().unwrap();
    assert_eq!(chains[0]["first_seq"], 0);
    assert!(chains[0]["last_seq"].as_u64().unwrap() > 10);
    let (code, csv, _) = run_bin(&["audit", "export", l.audit.to_str().unwrap(), "--format", "csv"]);
    assert_eq!(code, 0);
    assert!(csv.starts_with("approval_id,agent,action,"));
    assert!(csv.contains("# chain "));
    let (code, _, _) =
        run_bin(&["audit", "export", l.audit.to_str().unwrap(), "--format", "csv", "--from", "2099-01-01T00:00:00Z"]);
    assert_eq!(code, 0);
    // A tampered log is not exported.
    let mut r = records(&l.audit);
    r.remove(3);
    write_records(&l.audit, &r);
    let (code, _, err) = run_bin(&["audit", "export", l.audit.to_str().unwrap(), "--format", "jsonl"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn no_chain_files_is_could_not_run_unless_the_copies_name_chains() {
    let tmp = tempfile::tempdir().unwrap();
    let (audit, copies) = (tmp.path().join("audit"), tmp.path().join("copies"));
    std::fs::create_dir_all(&audit).unwrap();
    std::fs::create_dir_all(&copies).unwrap();
    let verify = |with_copies: bool| {
        let mut args = vec!["audit", "verify", audit.to_str().unwrap()];
        if with_copies {
            args.extend(["--checkpoints", copies.to_str().unwrap()]);
        }
        run_bin(&args)
    };
    for with_copies in [false, true] {
        let (code, out, err) = verify(with_copies);
        assert_eq!(code, 2, "{out}{err}");
        assert!(err.contains("holds no chain files"), "{err}");
    }
    // Copies of another chain's checkpoints: every file of that chain is gone.
    std::fs::write(copies.join("0000018f00000000abcd.ckpt"), "{\"seq\":4,\"hash\":\"x\",\"through_seq\":3}\n").unwrap();
    let (code, out, err) = verify(true);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("TAMPERED truncated before a checkpoint") && out.contains("0000018f00000000abcd"), "{out}");
    // Without the copies, nothing says there was a chain.
    let (code, _, _) = verify(false);
    assert_eq!(code, 2);
}

#[test]
fn export_takes_any_rfc3339_offset_and_plain_dates() {
    let (_tmp, dir) = small_log();
    let export =
        |flag: &str, t: &str| run_bin(&["audit", "export", dir.to_str().unwrap(), "--format", "jsonl", flag, t]);
    for (flag, t, want) in [
        ("--from", "2026-11-24T01:00:00+01:00", "2026-11-24T00:00:00.000Z"),
        ("--from", "2026-11-23T19:30:00-04:30", "2026-11-24T00:00:00.000Z"),
        ("--from", "2026-11-24T00:00:00.250Z", "2026-11-24T00:00:00.250Z"),
        ("--from", "2026-11-24", "2026-11-24T00:00:00.000Z"),
        ("--to", "2026-11-24T02:00:00.5+02:00", "2026-11-24T00:00:00.500Z"),
    ] {
        let (code, out, err) = export(flag, t);
        assert_eq!(code, 0, "{flag} {t}: {err}");
        let trailer: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(trailer["trailer"][&flag[2..]], want, "{flag} {t}: {trailer}");
    }
    for bad in ["yesterday", "2026-11-24T25:00:00Z", "24/11/2026", "2026-11-24T01:00:00+25:00"] {
        let (code, out, err) = export("--from", bad);
        assert_eq!(code, 2, "{bad}: {out}");
        assert!(err.contains("--from") && err.contains(bad) && err.lines().count() == 1, "{bad}: {err}");
    }
}

/// A small unsigned log for the property test.
fn small_log() -> (tempfile::TempDir, PathBuf) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    rt.block_on(async {
        use approvalplane::audit::{AuditLog, Durability, Event, WriterOptions};
        let log = AuditLog::start(
            WriterOptions::new(dir.clone(), "p"),
            Arc::new(approvalplane::clock::SystemClock),
            "sha256:x",
        )
        .unwrap();
        for i in 0..12 {
            log.append(
                &Event::Shutdown { reason: format!("r{i}"), interrupted: vec![format!("apr_{i}")] },
                Durability::Written,
            )
            .await
            .unwrap();
        }
        log.close().await;
    });
    (tmp, dir)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn any_single_byte_change_is_flagged(pos in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let (_tmp, dir) = small_log();
        let f = chain_files(&dir).remove(0);
        let mut bytes = std::fs::read(&f).unwrap();
        let i = pos.index(bytes.len());
        bytes[i] ^= delta;
        let last_line_start = bytes[..bytes.len() - 1].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        std::fs::write(&f, &bytes).unwrap();
        let rep = verify_path(&dir, &Anchors::default()).unwrap();
        if rep.findings.is_empty() {
            // Only a change that removes the final newline may pass, as a torn tail.
            prop_assert!(i >= last_line_start, "byte {i} changed silently");
            prop_assert!(rep.warnings.iter().any(|w| w.contains("torn tail")), "{:?}", rep.warnings);
        }
    }
}

#[tokio::test]
async fn audit_failures_refuse_risky_calls_and_follow_fail_mode_for_allowed_ones() {
    for (fail_mode, allowed_status) in [("closed", 503), ("open_allowed", 200)] {
        let up = FakeUpstream::start(None).await;
        let fault = Arc::new(AtomicBool::new(false));
        let mut o = Options::new(&up);
        o.extra_toml = format!("fail_mode = \"{fail_mode}\"\n");
        o.hooks.audit_fault = Some(fault.clone());
        let app = TestApp::start(o).await;
        assert_eq!(app.refund(1000, &[]).await.status, 200);
        fault.store(true, Ordering::Release);
        let r = app.refund(1000, &[("idempotency-key", "x")]).await;
        assert_eq!(r.status, allowed_status, "{fail_mode}: {}", r.text());
        if allowed_status == 503 {
            assert_eq!(r.error_type(), "audit_unavailable");
            assert!(r.headers.get("retry-after").is_some());
        }
        let r = app.refund(240000, &[("prefer", "wait=0")]).await;
        assert_eq!((r.status, r.error_type().as_str()), (503, "audit_unavailable"), "{fail_mode}: risky calls refused");
        let ready = call("GET", &format!("{}/readyz", app.control), &[], "").await;
        assert_eq!(ready.status, 503, "{}", ready.text());
        assert!(app.pending().await.is_empty(), "no unrecorded approval is left pending");
        fault.store(false, Ordering::Release);
        assert_eq!(app.refund(1000, &[("idempotency-key", "y")]).await.status, 200, "recovers by itself");
        assert_eq!(call("GET", &format!("{}/readyz", app.control), &[], "").await.status, 200);
        let expected = if fail_mode == "closed" { 2 } else { 3 };
        assert_eq!(up.count(), expected, "{fail_mode}");
    }
}

#[tokio::test]
async fn checkpoints_are_copied_to_a_url() {
    use approvalplane::audit::{AuditLog, CheckpointCopy, Durability, Event, WriterOptions};
    let receiver = FakeUpstream::start(None).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut o = WriterOptions::new(tmp.path().join("audit"), "url-copy");
    o.checkpoint_every = 3;
    o.checkpoint_copy = Some(CheckpointCopy::Url(format!("http://{}/checkpoints", receiver.addr)));
    let log = AuditLog::start(o, Arc::new(approvalplane::clock::SystemClock), "sha256:x").unwrap();
    for i in 0..7 {
        log.append(&Event::Shutdown { reason: format!("r{i}"), interrupted: vec![] }, Durability::Written)
            .await
            .unwrap();
    }
    log.close().await;
    let mut got = Vec::new();
    for _ in 0..100 {
        got = receiver.received();
        if got.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(got.len() >= 3, "every checkpoint is posted: {}", got.len());
    for r in &got {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/checkpoints"));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["kind"], "checkpoint");
        assert!(v["through_hash"].as_str().unwrap().len() == 64);
    }
}

/// No decision without its record: while the log fails, a decision is refused and
/// changes nothing; the log recovers by itself (the writer probes the disk) and the
/// decision is then taken, recorded, and the approved request forwarded once.
#[tokio::test]
async fn decisions_wait_for_the_audit_log() {
    let up = FakeUpstream::start(None).await;
    let fault = Arc::new(AtomicBool::new(false));
    let mut o = Options::new(&up);
    o.hooks.audit_fault = Some(fault.clone());
    let app = TestApp::start(o).await;
    let r = app.refund(240000, &[("prefer", "wait=0")]).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let id = r.json()["error"]["approval_id"].as_str().unwrap().to_string();
    fault.store(true, Ordering::Release);
    assert_eq!(app.refund(1000, &[]).await.status, 503, "the log is failing");
    let d = app.decide(ALICE, &id, "approve", None).await;
    assert_eq!((d.status, d.error_type().as_str()), (503, "audit_unavailable"), "{}", d.text());
    assert!(d.headers.get("retry-after").is_some());
    // Someone who may not decide is told so first, whatever the log's state.
    let c = app.decide(CAROL, &id, "approve", None).await;
    assert_eq!((c.status, c.error_type().as_str()), (403, "forbidden"), "{}", c.text());
    assert_eq!(app.pending().await.len(), 1, "the refused decision changed nothing");
    fault.store(false, Ordering::Release);
    // No traffic: the writer's probe alone brings the log back.
    let mut ready = 0;
    for _ in 0..50 {
        ready = call("GET", &format!("{}/readyz", app.control), &[], "").await.status;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200, "the log recovered without a request");
    assert_eq!(app.decide(ALICE, &id, "approve", None).await.status, 200);
    assert_eq!(app.refund(240000, &[]).await.status, 200);
    let recs = app.records();
    let decided: Vec<&Value> =
        recs.iter().filter(|r| r["kind"] == "approval_decided" && r["approval_id"] == id.as_str()).collect();
    assert_eq!(decided.len(), 1, "the decision is recorded once");
    assert_eq!(up.count(), 1, "forwarded once");
}
