//! The verifier behind `audit verify`: streams chain files in constant memory and
//! names the first bad record of each chain. Pure apart from reading the files.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::Value;

use super::record::{canonical, hash_of, GENESIS_PREV, VERSION};
use super::writer::{checkpoint_message, copy_file_name, key_id};
use crate::policy::json::parse_strict;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0} holds no chain files (*.jsonl)")]
    Empty(PathBuf),
}

/// What is wrong with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// Not JSON, or a required field is missing or mistyped.
    Unparseable,
    /// Valid JSON, but not the canonical (JCS) encoding it was written in.
    NonCanonical,
    /// The record's content does not match its hash.
    HashMismatch,
    /// `prev` is not the previous record's hash.
    BrokenLink,
    /// `seq` is not the next number: a record or file was deleted, duplicated or moved.
    SequenceGap,
    /// The record belongs to another chain.
    WrongChain,
    /// A file's name does not match its first record.
    BadFileName,
    /// A fragment without a newline where one cannot be (not at the chain's end).
    TornMiddle,
    /// A record of an unknown format version.
    UnknownVersion,
    /// A checkpoint whose anchor is not the chain before it.
    BadCheckpoint,
    /// A checkpoint signature that does not verify, or is missing under `--key`.
    BadSignature,
    /// A checkpoint signed by a key other than the one given.
    UnknownKey,
    /// The record at a copied checkpoint's seq differs from the copy.
    CheckpointMismatch,
    /// The chain ends before a checkpoint held in the copies.
    TruncatedBeforeCheckpoint,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Unparseable => "unparseable",
            FindingKind::NonCanonical => "non-canonical",
            FindingKind::HashMismatch => "hash mismatch",
            FindingKind::BrokenLink => "broken link",
            FindingKind::SequenceGap => "sequence gap",
            FindingKind::WrongChain => "record from another chain",
            FindingKind::BadFileName => "file name does not match its records",
            FindingKind::TornMiddle => "torn record inside the chain",
            FindingKind::UnknownVersion => "unknown record version",
            FindingKind::BadCheckpoint => "checkpoint does not anchor the chain",
            FindingKind::BadSignature => "bad signature",
            FindingKind::UnknownKey => "unknown key",
            FindingKind::CheckpointMismatch => "differs from its checkpoint copy",
            FindingKind::TruncatedBeforeCheckpoint => "truncated before a checkpoint",
        }
    }
}

/// The first bad record of a chain.
#[derive(Debug, Clone)]
pub struct Finding {
    pub kind: FindingKind,
    pub chain: String,
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: u64,
    /// The seq the record should have had.
    pub expected_seq: u64,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}:{} (chain {}, expected seq {}): {}",
            self.kind.as_str(),
            self.file.display(),
            self.line,
            self.chain,
            self.expected_seq,
            self.detail
        )
    }
}

/// One chain's result.
#[derive(Debug, Clone, Default)]
pub struct ChainReport {
    pub chain: String,
    pub records: u64,
    /// Seq of the last good record.
    pub last_seq: Option<u64>,
    pub last_hash: String,
    pub files: usize,
    /// The highest seq anchored by a verified checkpoint.
    pub anchored_through: Option<u64>,
    pub checkpoints: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub records: u64,
    pub chains: Vec<ChainReport>,
    pub findings: Vec<Finding>,
    pub warnings: Vec<String>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Splits `<chain>-<20 digits>.jsonl`.
pub fn parse_file_name(name: &str) -> Option<(String, u64)> {
    let stem = name.strip_suffix(".jsonl")?;
    let (chain, seq) = stem.rsplit_once('-')?;
    if chain.is_empty() || seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((chain.to_string(), seq.parse().ok()?))
}

/// Lists chain files under `path` (a file or a directory), grouped by chain, in
/// write order.
pub fn chain_files(path: &Path) -> Result<BTreeMap<String, Vec<(u64, PathBuf)>>, VerifyError> {
    let read_err = |source| VerifyError::Read { path: path.to_path_buf(), source };
    let mut files = Vec::new();
    if path.is_dir() {
        for e in std::fs::read_dir(path).map_err(read_err)? {
            let p = e.map_err(read_err)?.path();
            if p.extension().is_some_and(|x| x == "jsonl") {
                files.push(p);
            }
        }
    } else {
        std::fs::metadata(path).map_err(read_err)?;
        files.push(path.to_path_buf());
    }
    let single = !path.is_dir();
    let mut chains: BTreeMap<String, Vec<(u64, PathBuf)>> = BTreeMap::new();
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        // One file named on the command line (a copy handed over as evidence, say)
        // may carry any name: its first record says which chain it holds.
        let named = parse_file_name(&name).or_else(|| if single { first_record_position(&f) } else { None });
        let (chain, seq) = named.unwrap_or_else(|| (format!("?{name}"), 0));
        chains.entry(chain).or_default().push((seq, f));
    }
    for v in chains.values_mut() {
        v.sort();
    }
    Ok(chains)
}

/// The `chain` and `seq` of a file's first record, when it reads as one.
fn first_record_position(f: &Path) -> Option<(String, u64)> {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(std::fs::File::open(f).ok()?).read_line(&mut line).ok()?;
    let v: serde_json::Value = serde_json::from_str(line.trim_end()).ok()?;
    let chain = v.get("chain")?.as_str().filter(|c| !c.is_empty() && !c.starts_with('?'))?;
    Some((chain.to_string(), v.get("seq")?.as_u64()?))
}

/// What the verifier checks checkpoints against.
#[derive(Debug, Clone, Default)]
pub struct Anchors {
    /// Verify checkpoint signatures with this key.
    pub key: Option<VerifyingKey>,
    /// A directory of checkpoint copies (`<chain>.ckpt`).
    pub copies: Option<PathBuf>,
}

/// A copied checkpoint: the seq and hash of the checkpoint record.
#[derive(Debug, Clone)]
struct Copy {
    seq: u64,
    hash: String,
    through_seq: u64,
}

fn read_copies(dir: &Path, chain: &str) -> Result<Vec<Copy>, VerifyError> {
    let p = dir.join(copy_file_name(chain));
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(VerifyError::Read { path: p, source }),
    };
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            if let (Some(seq), Some(hash), Some(through_seq)) = (
                v.get("seq").and_then(Value::as_u64),
                v.get("hash").and_then(Value::as_str),
                v.get("through_seq").and_then(Value::as_u64),
            ) {
                out.push(Copy { seq, hash: hash.to_string(), through_seq });
            }
        }
    }
    out.sort_by_key(|c| c.seq);
    Ok(out)
}

struct ChainState<'a> {
    chain: String,
    expected_seq: u64,
    prev: String,
    report: ChainReport,
    anchors: &'a Anchors,
    key_id: Option<String>,
    copies: Vec<Copy>,
    unverified_signatures: u64,
}

impl ChainState<'_> {
    fn finding(&self, kind: FindingKind, file: &Path, line: u64, detail: impl Into<String>) -> Finding {
        Finding {
            kind,
            chain: self.chain.clone(),
            file: file.to_path_buf(),
            line,
            expected_seq: self.expected_seq,
            detail: detail.into(),
        }
    }

    fn check_checkpoint(&mut self, v: &Value, file: &Path, line_no: u64, seq: u64, prev: &str) -> Result<(), Finding> {
        let through_seq = v.get("through_seq").and_then(Value::as_u64);
        let through_hash = v.get("through_hash").and_then(Value::as_str);
        if through_seq != seq.checked_sub(1) || through_hash != Some(prev) {
            return Err(self.finding(
                FindingKind::BadCheckpoint,
                file,
                line_no,
                "does not anchor the record before it",
            ));
        }
        let (through_seq, through_hash) = (seq - 1, prev);
        let signature = v.get("signature").and_then(Value::as_str);
        let key_id = v.get("key_id").and_then(Value::as_str);
        match (&self.anchors.key, signature) {
            (Some(key), Some(sig)) => {
                if key_id != self.key_id.as_deref() {
                    return Err(self.finding(
                        FindingKind::UnknownKey,
                        file,
                        line_no,
                        format!("signed by key {}, not the key given", key_id.unwrap_or("(none)")),
                    ));
                }
                let ok = hex::decode(sig)
                    .ok()
                    .and_then(|b| <[u8; 64]>::try_from(b).ok())
                    .map(|b| Signature::from_bytes(&b))
                    .is_some_and(|s| {
                        key.verify(&checkpoint_message(&self.chain, through_seq, through_hash), &s).is_ok()
                    });
                if !ok {
                    return Err(self.finding(
                        FindingKind::BadSignature,
                        file,
                        line_no,
                        "the checkpoint signature does not verify",
                    ));
                }
            }
            (Some(_), None) => {
                return Err(self.finding(FindingKind::BadSignature, file, line_no, "the checkpoint is not signed"));
            }
            (None, Some(_)) => self.unverified_signatures += 1,
            (None, None) => {}
        }
        self.report.checkpoints += 1;
        self.report.anchored_through = Some(through_seq);
        Ok(())
    }

    /// Checks one complete line; advances on success.
    fn check(&mut self, file: &Path, line_no: u64, line: &str) -> Result<Value, Finding> {
        let v = parse_strict(line.as_bytes())
            .map_err(|e| self.finding(FindingKind::Unparseable, file, line_no, format!("not a JSON record: {e}")))?;
        if canonical(&v) != line {
            return Err(self.finding(
                FindingKind::NonCanonical,
                file,
                line_no,
                "the line is not in canonical (JCS) form",
            ));
        }
        let field = |k: &str| v.get(k);
        let str_field = |k: &str| field(k).and_then(Value::as_str);
        let (Some(ver), Some(chain), Some(seq), Some(_ts), Some(_kind), Some(prev), Some(hash)) = (
            field("v").and_then(Value::as_u64),
            str_field("chain"),
            field("seq").and_then(Value::as_u64),
            str_field("ts"),
            str_field("kind"),
            str_field("prev"),
            str_field("hash"),
        ) else {
            return Err(self.finding(
                FindingKind::Unparseable,
                file,
                line_no,
                "missing one of v, chain, seq, ts, kind, prev, hash",
            ));
        };
        if ver != VERSION {
            return Err(self.finding(FindingKind::UnknownVersion, file, line_no, format!("v is {ver}")));
        }
        if chain != self.chain {
            return Err(self.finding(FindingKind::WrongChain, file, line_no, format!("record of chain {chain}")));
        }
        if seq != self.expected_seq {
            let what =
                if seq > self.expected_seq { "records are missing" } else { "a record is repeated or out of order" };
            return Err(self.finding(FindingKind::SequenceGap, file, line_no, format!("found seq {seq}: {what}")));
        }
        if prev != self.prev {
            return Err(self.finding(FindingKind::BrokenLink, file, line_no, "prev is not the previous record's hash"));
        }
        let mut without = v.clone();
        if let Some(m) = without.as_object_mut() {
            m.remove("hash");
        }
        if hash_of(&without) != hash {
            return Err(self.finding(FindingKind::HashMismatch, file, line_no, "the record does not match its hash"));
        }
        if let Some(c) = self.copies.iter().find(|c| c.seq == seq) {
            if c.hash != hash {
                return Err(self.finding(
                    FindingKind::CheckpointMismatch,
                    file,
                    line_no,
                    "the checkpoint copy holds a different record here: the chain was rewritten",
                ));
            }
        }
        if v.get("kind").and_then(Value::as_str) == Some("checkpoint") {
            self.check_checkpoint(&v, file, line_no, seq, prev)?;
        }
        self.prev = hash.to_string();
        self.expected_seq += 1;
        self.report.records += 1;
        self.report.last_seq = Some(seq);
        self.report.last_hash = hash.to_string();
        Ok(v)
    }
}

/// Calls `visit` for every intact record of `path`, verifying as it goes.
pub fn verify_with(path: &Path, anchors: &Anchors, mut visit: impl FnMut(&Value)) -> Result<Report, VerifyError> {
    let chains = chain_files(path)?;
    // No chain files is "could not run", unless the copies name chains of this
    // directory: then every file was deleted, a truncation (found below).
    if chains.is_empty() && (!path.is_dir() || anchors.copies.as_deref().is_none_or(|d| copied_chains(d).is_empty())) {
        return Err(VerifyError::Empty(path.to_path_buf()));
    }
    let single_file = !path.is_dir();
    let mut report = Report::default();
    if single_file {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if parse_file_name(name).is_none() && chains.keys().all(|c| !c.starts_with('?')) {
            report.warnings.push(format!(
                "{} is not named <chain>-<20-digit seq>.jsonl; its chain and first seq are read from its first record",
                path.display()
            ));
        }
    }
    let seen: std::collections::BTreeSet<String> = chains.keys().cloned().collect();
    for (chain, files) in chains {
        if chain.starts_with('?') {
            let f = &files[0].1;
            report.findings.push(Finding {
                kind: FindingKind::BadFileName,
                chain: chain.clone(),
                file: f.clone(),
                line: 0,
                expected_seq: 0,
                detail: "not named <chain>-<20-digit seq>.jsonl".into(),
            });
            continue;
        }
        let first_seq = files[0].0;
        let copies = match &anchors.copies {
            Some(d) => read_copies(d, &chain)?,
            None => Vec::new(),
        };
        let mut st = ChainState {
            chain: chain.clone(),
            expected_seq: first_seq,
            prev: String::new(),
            report: ChainReport { chain: chain.clone(), files: files.len(), ..Default::default() },
            anchors,
            key_id: anchors.key.as_ref().map(key_id),
            copies,
            unverified_signatures: 0,
        };
        if first_seq == 0 {
            st.prev = GENESIS_PREV.to_string();
        } else if single_file {
            report.warnings.push(format!(
                "chain {chain}: {} starts at seq {first_seq}; the link to earlier files was not checked",
                files[0].1.display()
            ));
        } else {
            report.findings.push(st.finding(
                FindingKind::SequenceGap,
                &files[0].1,
                0,
                format!("the chain's first file starts at seq {first_seq}: earlier files are missing"),
            ));
            report.chains.push(st.report);
            continue;
        }
        let nfiles = files.len();
        'files: for (fi, (name_seq, f)) in files.into_iter().enumerate() {
            if name_seq != st.expected_seq && !(fi == 0 && st.prev.is_empty()) {
                let kind = if name_seq > st.expected_seq { FindingKind::SequenceGap } else { FindingKind::BadFileName };
                report.findings.push(st.finding(
                    kind,
                    &f,
                    0,
                    format!("file starts at seq {name_seq}: a file is missing or misnamed"),
                ));
                break;
            }
            let fh = File::open(&f).map_err(|source| VerifyError::Read { path: f.clone(), source })?;
            let mut r = BufReader::new(fh);
            let mut buf = Vec::new();
            let mut line_no = 0u64;
            loop {
                buf.clear();
                let n =
                    r.read_until(b'\n', &mut buf).map_err(|source| VerifyError::Read { path: f.clone(), source })?;
                if n == 0 {
                    break;
                }
                line_no += 1;
                if buf.last() != Some(&b'\n') {
                    if fi + 1 == nfiles {
                        report.warnings.push(format!(
                            "torn tail: {}:{line_no}: {n} bytes without a final newline (an interrupted write); ignored",
                            f.display()
                        ));
                    } else {
                        report.findings.push(st.finding(
                            FindingKind::TornMiddle,
                            &f,
                            line_no,
                            "a fragment without a newline before later files",
                        ));
                    }
                    break 'files;
                }
                let text = match std::str::from_utf8(&buf[..n - 1]) {
                    Ok(t) => t,
                    Err(_) => {
                        report.findings.push(st.finding(FindingKind::Unparseable, &f, line_no, "not UTF-8"));
                        break 'files;
                    }
                };
                if st.prev.is_empty() {
                    // A lone file that starts mid-chain: take its first record's link on trust.
                    if let Ok(v) = parse_strict(text.as_bytes()) {
                        st.prev = v.get("prev").and_then(Value::as_str).unwrap_or("").to_string();
                    }
                }
                match st.check(&f, line_no, text) {
                    Ok(v) => visit(&v),
                    Err(finding) => {
                        report.findings.push(finding);
                        break 'files;
                    }
                }
            }
        }
        // Truncation: a copied checkpoint beyond the end of the chain.
        if report.findings.iter().all(|f| f.chain != chain) {
            if let Some(c) = st.copies.iter().rev().find(|c| st.report.last_seq.is_none_or(|l| c.seq > l)) {
                report.findings.push(Finding {
                    kind: FindingKind::TruncatedBeforeCheckpoint,
                    chain: chain.clone(),
                    file: path.to_path_buf(),
                    line: 0,
                    expected_seq: st.expected_seq,
                    detail: format!(
                        "the chain ends at seq {} but a checkpoint copy anchors seq {} (checkpoint record {})",
                        st.report.last_seq.map_or("-".to_string(), |s| s.to_string()),
                        c.through_seq,
                        c.seq
                    ),
                });
            }
        }
        if st.unverified_signatures > 0 {
            report.warnings.push(format!(
                "chain {chain}: {} checkpoint signature(s) not verified (no --key given)",
                st.unverified_signatures
            ));
        }
        report.records += st.report.records;
        report.chains.push(st.report);
    }
    // A chain known to the copies but with no files left was deleted whole.
    if let (Some(d), true) = (&anchors.copies, path.is_dir()) {
        for (chain, file) in copied_chains(d) {
            if !seen.contains(&chain) {
                report.findings.push(Finding {
                    kind: FindingKind::TruncatedBeforeCheckpoint,
                    chain,
                    file,
                    line: 0,
                    expected_seq: 0,
                    detail: "checkpoint copies exist for this chain, but none of its files".into(),
                });
            }
        }
    }
    Ok(report)
}

/// The chains a copy directory holds checkpoints of (`<chain>.ckpt`), in name order.
fn copied_chains(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let chain = name.strip_suffix(".ckpt").filter(|c| !c.is_empty())?.to_string();
            Some((chain, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Verifies a chain file or a directory of chains.
pub fn verify_path(path: &Path, anchors: &Anchors) -> Result<Report, VerifyError> {
    verify_with(path, anchors, |_| {})
}
