//! The chain writer: one thread owns the chain file; everyone else sends it events.
//!
//! Group commit: the thread takes every event already queued, writes them with one
//! `write`, and, if any of them asked for it, runs one `fdatasync` for the whole
//! batch. Callers wait for the durability they need: an allowed forward for
//! [`Durability::Written`] (safe from a process kill), decisions and approved
//! forwards for [`Durability::Synced`] (safe from a power cut).
//!
//! A failed write is rolled back (the file is truncated to its last good length and
//! the chain position restored), every caller in the batch gets an error, and the
//! log reports unhealthy until a later write succeeds. Nothing is dropped silently:
//! a caller that gets an error refuses the risky call, and logs what it could not
//! record.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::event::Event;
use super::record::{seal, Header, GENESIS_PREV};
use crate::clock::{Clock, Timestamp};

/// How durable a record must be before the caller goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durability {
    /// Queued; the caller does not wait.
    Queued,
    /// In the file (the kernel has it): survives a process kill.
    Written,
    /// `fdatasync`ed: survives a power cut.
    Synced,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    #[error("audit log is closed")]
    Closed,
}

/// Settings for a chain.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub dir: PathBuf,
    pub replica: String,
    pub rotate_bytes: u64,
    pub rotate_after: Duration,
}

/// Health and progress, shared with `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct AuditHealth {
    ok: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Records written so far in this chain.
    pub records: AtomicU64,
    /// Microseconds the last batch took to write (and sync, if asked).
    pub last_batch_micros: AtomicU64,
    pub failures: AtomicU64,
}

impl AuditHealth {
    pub fn is_ok(&self) -> bool {
        self.ok.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn set(&self, r: Result<(), String>) {
        match r {
            Ok(()) => {
                self.ok.store(true, Ordering::Release);
            }
            Err(e) => {
                self.ok.store(false, Ordering::Release);
                self.failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut g) = self.last_error.lock() {
                    *g = Some(e);
                }
            }
        }
    }
}

enum Msg {
    Record { event: Box<Event>, durability: Durability, ack: Option<oneshot::Sender<Result<u64, AuditError>>> },
    Close { ack: oneshot::Sender<()> },
}

/// A handle to the chain writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    health: Arc<AuditHealth>,
    chain: Arc<str>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("chain", &self.chain).finish()
    }
}

/// A new chain id: time-ordered, unique, without `-` (it separates the seq in names).
pub fn new_chain_id(now: Timestamp) -> String {
    use rand::RngCore;
    format!("{:012x}{:08x}", now.0, rand::thread_rng().next_u32())
}

/// `<chain>-<first seq, 20 digits>.jsonl`.
pub fn file_name(chain: &str, first_seq: u64) -> String {
    format!("{chain}-{first_seq:020}.jsonl")
}

struct ChainFile {
    file: File,
    path: PathBuf,
    len: u64,
    opened: Instant,
}

struct Writer {
    opts: WriterOptions,
    chain: String,
    clock: Arc<dyn Clock>,
    seq: u64,
    prev: String,
    cur: ChainFile,
    health: Arc<AuditHealth>,
}

fn sync_dir(dir: &Path) {
    // Makes a new file's name durable. Not all platforms allow it; best effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn create_file(dir: &Path, chain: &str, first_seq: u64) -> std::io::Result<ChainFile> {
    let path = dir.join(file_name(chain, first_seq));
    let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
    sync_dir(dir);
    Ok(ChainFile { file, path, len: 0, opened: Instant::now() })
}

impl Writer {
    fn seal(&mut self, event: &Event) -> String {
        let ts = self.clock.now().rfc3339();
        let (line, hash) =
            seal(&Header { chain: &self.chain, seq: self.seq, ts: &ts, prev: &self.prev }, event.fields());
        self.seq += 1;
        self.prev = hash;
        line
    }

    fn maybe_rotate(&mut self) -> std::io::Result<()> {
        if self.cur.len == 0
            || (self.cur.len < self.opts.rotate_bytes && self.cur.opened.elapsed() < self.opts.rotate_after)
        {
            return Ok(());
        }
        self.cur.file.sync_data()?;
        let next = create_file(&self.opts.dir, &self.chain, self.seq)?;
        self.cur = next;
        Ok(())
    }

    /// Writes a batch. On failure, restores the file and the chain position.
    fn write_batch(&mut self, events: &[&Event], sync: bool) -> Result<u64, String> {
        self.maybe_rotate().map_err(|e| format!("rotating {}: {e}", self.cur.path.display()))?;
        let (seq0, prev0, len0) = (self.seq, self.prev.clone(), self.cur.len);
        let mut buf = String::new();
        for e in events {
            buf.push_str(&self.seal(e));
            buf.push('\n');
        }
        let res =
            self.cur.file.write_all(buf.as_bytes()).and_then(|_| if sync { self.cur.file.sync_data() } else { Ok(()) });
        match res {
            Ok(()) => {
                self.cur.len += buf.len() as u64;
                Ok(seq0)
            }
            Err(e) => {
                self.seq = seq0;
                self.prev = prev0;
                // Cut any partial line so the chain stays intact for the next write.
                let _ = self.cur.file.set_len(len0);
                Err(format!("writing {}: {e}", self.cur.path.display()))
            }
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut closing: Option<oneshot::Sender<()>> = None;
        while closing.is_none() {
            let Some(first) = rx.blocking_recv() else { break };
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut records = Vec::with_capacity(batch.len());
            for m in batch {
                match m {
                    Msg::Record { event, durability, ack } => records.push((event, durability, ack)),
                    Msg::Close { ack } => closing = Some(ack),
                }
            }
            if records.is_empty() {
                continue;
            }
            let sync = records.iter().any(|(_, d, _)| *d == Durability::Synced);
            let start = Instant::now();
            let events: Vec<&Event> = records.iter().map(|(e, _, _)| e.as_ref()).collect();
            let res = self.write_batch(&events, sync);
            self.health.last_batch_micros.store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
            match res {
                Ok(seq0) => {
                    self.health.records.fetch_add(records.len() as u64, Ordering::Relaxed);
                    self.health.set(Ok(()));
                    for (i, (_, _, ack)) in records.into_iter().enumerate() {
                        if let Some(ack) = ack {
                            let _ = ack.send(Ok(seq0 + i as u64));
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, records = records.len(), "audit write failed");
                    self.health.set(Err(e.clone()));
                    for (event, _, ack) in records {
                        match ack {
                            Some(ack) => {
                                let _ = ack.send(Err(AuditError::Unavailable(e.clone())));
                            }
                            None => tracing::error!(kind = event.kind(), "audit record lost: write failed"),
                        }
                    }
                }
            }
        }
        let _ = self.cur.file.sync_data();
        if let Some(ack) = closing {
            let _ = ack.send(());
        }
    }
}

impl AuditLog {
    /// Starts a new chain in `opts.dir` with its genesis record.
    pub fn start(opts: WriterOptions, clock: Arc<dyn Clock>, policy_bundle: &str) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| AuditError::Unavailable(format!("creating {}: {e}", opts.dir.display())))?;
        let chain = new_chain_id(clock.now());
        let cur = create_file(&opts.dir, &chain, 0)
            .map_err(|e| AuditError::Unavailable(format!("creating chain file in {}: {e}", opts.dir.display())))?;
        let health = Arc::new(AuditHealth::default());
        let mut w = Writer {
            opts: opts.clone(),
            chain: chain.clone(),
            clock,
            seq: 0,
            prev: GENESIS_PREV.to_string(),
            cur,
            health: health.clone(),
        };
        let genesis = Event::Genesis {
            replica: opts.replica.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            policy_bundle: policy_bundle.to_string(),
        };
        w.write_batch(&[&genesis], true).map_err(AuditError::Unavailable)?;
        health.records.store(1, Ordering::Relaxed);
        health.set(Ok(()));
        let (tx, rx) = mpsc::channel(16 * 1024);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| AuditError::Unavailable(format!("starting writer: {e}")))?;
        Ok(AuditLog { tx, health, chain: chain.into() })
    }

    pub fn chain(&self) -> &str {
        &self.chain
    }

    pub fn health(&self) -> &Arc<AuditHealth> {
        &self.health
    }

    /// Appends `event` and waits for `durability`. Returns the record's seq
    /// (0 for [`Durability::Queued`], which does not wait).
    pub async fn append(&self, event: Event, durability: Durability) -> Result<u64, AuditError> {
        if durability == Durability::Queued {
            self.tx
                .send(Msg::Record { event: Box::new(event), durability, ack: None })
                .await
                .map_err(|_| AuditError::Closed)?;
            return Ok(0);
        }
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::Record { event: Box::new(event), durability, ack: Some(ack) })
            .await
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Flushes, syncs and stops the writer. Later appends fail with `Closed`.
    pub async fn close(&self) {
        let (ack, rx) = oneshot::channel();
        if self.tx.send(Msg::Close { ack }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn opts(dir: &Path, rotate_bytes: u64) -> WriterOptions {
        WriterOptions {
            dir: dir.to_path_buf(),
            replica: "test".into(),
            rotate_bytes,
            rotate_after: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn writes_a_verifiable_chain_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::start(opts(dir.path(), 4096), Arc::new(SystemClock), "sha256:abc").unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let d = if i % 3 == 0 { Durability::Synced } else { Durability::Written };
                log.append(Event::Shutdown { reason: format!("r{i}"), interrupted: vec![] }, d).await.unwrap()
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        // One at a time, so batches are small and rotation (at batch boundaries) happens.
        for i in 0..100 {
            let e = Event::Shutdown { reason: format!("s{i}"), interrupted: vec![] };
            seqs.push(log.append(e, Durability::Written).await.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
        log.close().await;
        assert!(log
            .append(Event::Shutdown { reason: "x".into(), interrupted: vec![] }, Durability::Written)
            .await
            .is_err());
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(files.len() > 1, "rotated");
        let report = crate::audit::verify::verify_path(dir.path()).unwrap();
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        assert_eq!(report.records, 301);
    }
}
