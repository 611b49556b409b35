//! The verifier behind `audit verify`: streams chain files in constant memory and
//! names the first bad record of each chain. Pure apart from reading the files.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::record::{canonical, hash_of, GENESIS_PREV, VERSION};
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
    let mut chains: BTreeMap<String, Vec<(u64, PathBuf)>> = BTreeMap::new();
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        let (chain, seq) = parse_file_name(&name).unwrap_or_else(|| (format!("?{name}"), 0));
        chains.entry(chain).or_default().push((seq, f));
    }
    for v in chains.values_mut() {
        v.sort();
    }
    Ok(chains)
}

struct ChainState {
    chain: String,
    expected_seq: u64,
    prev: String,
    report: ChainReport,
}

impl ChainState {
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
        self.prev = hash.to_string();
        self.expected_seq += 1;
        self.report.records += 1;
        self.report.last_seq = Some(seq);
        self.report.last_hash = hash.to_string();
        Ok(v)
    }
}

/// Calls `visit` for every intact record of `path`, verifying as it goes.
pub fn verify_with(path: &Path, mut visit: impl FnMut(&Value)) -> Result<Report, VerifyError> {
    let chains = chain_files(path)?;
    if chains.is_empty() {
        return Err(VerifyError::Empty(path.to_path_buf()));
    }
    let single_file = !path.is_dir();
    let mut report = Report::default();
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
        let mut st = ChainState {
            chain: chain.clone(),
            expected_seq: first_seq,
            prev: String::new(),
            report: ChainReport { chain: chain.clone(), files: files.len(), ..Default::default() },
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
        report.records += st.report.records;
        report.chains.push(st.report);
    }
    Ok(report)
}

/// Verifies a chain file or a directory of chains.
pub fn verify_path(path: &Path) -> Result<Report, VerifyError> {
    verify_with(path, |_| {})
}
