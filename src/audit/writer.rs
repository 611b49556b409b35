//! The chain writer: one thread owns the chain file's slow work (syncs, checkpoints,
//! rotation, probing); callers send it events, or write a record in place.
//!
//! Group commit: the thread takes every event already queued, writes them with one
//! `write`, and, if any of them asked for it, runs one `fdatasync` for the whole
//! batch. Callers wait for the durability they need: an allowed forward for
//! [`Durability::Written`] (safe from a process kill), decisions and approved
//! forwards for [`Durability::Synced`] (safe from a power cut).
//!
//! The allowed path's records ([`Durability::Written`]) skip the hand-off when they
//! can: the caller takes the chain's lock and writes its record itself (a `write`
//! to the page cache, a few microseconds), so a request costs no wake-up of the
//! writer thread and no acknowledgement back. Whenever the thread is busy with a
//! synced batch, a checkpoint or a rotation, or the log is failing, the record goes
//! through the queue as before: nothing that needs the thread waits for it on a
//! caller's stack, and the lock is never held by a caller across an `fsync`.
//!
//! Records written in place are combined too: a caller seals its record into the
//! chain's pending buffer, yields once (so the other requests ready on its thread
//! can add theirs), and then writes the whole buffer with one `write` unless
//! another caller or the thread already has. A caller goes on only once the write
//! that holds its record has succeeded; a caller dropped while it yields leaves its
//! record to be written by its drop guard. The buffer is always the head of the
//! next write, so file order stays seq order.
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

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use tokio::sync::{mpsc, oneshot};

use super::event::Event;
use super::record::{seal_event, Header, GENESIS_PREV};
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

/// Where checkpoint copies go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointCopy {
    /// Appended to `<dir>/<chain>.ckpt` and synced.
    Dir(PathBuf),
    /// POSTed as JSON (retried in the background).
    Url(String),
}

impl CheckpointCopy {
    pub fn parse(s: &str) -> CheckpointCopy {
        if s.starts_with("http://") || s.starts_with("https://") {
            CheckpointCopy::Url(s.to_string())
        } else {
            CheckpointCopy::Dir(PathBuf::from(s))
        }
    }
}

/// Settings for a chain.
#[derive(Clone)]
pub struct WriterOptions {
    pub dir: PathBuf,
    pub replica: String,
    pub rotate_bytes: u64,
    pub rotate_after: Duration,
    /// A checkpoint every N records.
    pub checkpoint_every: u64,
    /// A checkpoint at least this often while records are written.
    pub checkpoint_interval: Duration,
    /// Signs checkpoints; without it they are hash-only.
    pub signing_key: Option<SigningKey>,
    pub checkpoint_copy: Option<CheckpointCopy>,
    /// Batch queued records into one write and one sync (on by default; off only
    /// to measure what group commit saves).
    pub group_commit: bool,
    /// When set to true, every write fails: for fault-injection tests.
    pub fault: Option<Arc<AtomicBool>>,
    /// Observes each batch's write (and sync) time, in seconds.
    pub batch_seconds: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl std::fmt::Debug for WriterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterOptions")
            .field("dir", &self.dir)
            .field("signed", &self.signing_key.is_some())
            .field("checkpoint_copy", &self.checkpoint_copy)
            .finish()
    }
}

impl WriterOptions {
    pub fn new(dir: PathBuf, replica: &str) -> Self {
        WriterOptions {
            dir,
            replica: replica.to_string(),
            rotate_bytes: 64 * 1024 * 1024,
            rotate_after: Duration::from_secs(24 * 3600),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
            signing_key: None,
            checkpoint_copy: None,
            group_commit: true,
            fault: None,
            batch_seconds: None,
        }
    }
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
    /// Writes to the chain file so far (one per batch, however many records it holds).
    pub writes: AtomicU64,
    pub failures: AtomicU64,
    /// Unix milliseconds of the last checkpoint.
    pub last_checkpoint_ms: AtomicU64,
    pub copy_failures: AtomicU64,
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
    Record {
        event: Box<Event>,
        durability: Durability,
        ack: Option<oneshot::Sender<Result<u64, AuditError>>>,
    },
    /// Periodic: checkpoint and rotate by age when due.
    Tick,
    /// Sent every second while the log is failing: check the disk again.
    Probe,
    /// Write the records sealed in place, if any are still pending.
    Flush {
        ack: Option<oneshot::Sender<()>>,
    },
    Close {
        ack: oneshot::Sender<()>,
    },
}

/// A handle to the chain writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
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

/// Where a chain's checkpoint copies go inside a copy directory.
pub fn copy_file_name(chain: &str) -> String {
    format!("{chain}.ckpt")
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
    since_checkpoint: u64,
    key_id: Option<String>,
    url_copies: Option<mpsc::UnboundedSender<String>>,
    /// Set when the writer has stopped: later appends fail with `Closed`.
    closed: bool,
    /// Sealed records not yet written: the head of the next write.
    pending: Pending,
}

/// Records sealed in place and waiting for the write that combines them.
#[derive(Default)]
struct Pending {
    lines: String,
    records: u64,
    /// The chain position before the first of them, to roll back to.
    from: Option<(u64, String)>,
    /// Resolved by the write that holds them.
    outcome: Arc<Outcome>,
}

/// The outcome of one combined write, shared by the callers whose records it holds.
#[derive(Default)]
struct Outcome(std::sync::OnceLock<Result<(), String>>);

impl Outcome {
    fn get(&self) -> Option<Result<(), AuditError>> {
        self.0.get().map(|r| r.clone().map_err(AuditError::Unavailable))
    }
}

/// The chain, shared by the writer thread and the callers that write in place.
struct Shared {
    writer: Mutex<Writer>,
    /// True while the thread holds (or is about to take) the lock for work that may
    /// sync: callers then queue instead of waiting on the lock.
    busy: AtomicBool,
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
        let (line, hash) = seal_event(&Header { chain: &self.chain, seq: self.seq, ts: &ts, prev: &self.prev }, event);
        self.seq += 1;
        self.prev = hash;
        line
    }

    fn rotation_due(&self) -> bool {
        self.cur.len > 0
            && (self.cur.len >= self.opts.rotate_bytes || self.cur.opened.elapsed() >= self.opts.rotate_after)
    }

    /// Closes the current file with a checkpoint and starts the next one.
    fn rotate(&mut self) -> Result<(), String> {
        self.checkpoint()?;
        self.cur.file.sync_data().map_err(|e| format!("syncing {}: {e}", self.cur.path.display()))?;
        self.cur = create_file(&self.opts.dir, &self.chain, self.seq)
            .map_err(|e| format!("rotating in {}: {e}", self.opts.dir.display()))?;
        Ok(())
    }

    /// While the log is failing: checks that the disk takes a write again (a small
    /// probe file, written, synced and removed), so that health recovers even when
    /// nothing is being recorded; decisions wait for it.
    fn probe(&mut self) {
        let path = self.opts.dir.join(".write-probe");
        let r = self.fail_injected().and_then(|_| {
            let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
            f.write_all(&[0u8; 4096])?;
            f.sync_data()
        });
        let _ = std::fs::remove_file(&path);
        if r.is_ok() {
            tracing::info!(dir = %self.opts.dir.display(), "audit log writable again");
            self.health.set(Ok(()));
        }
    }

    fn fail_injected(&self) -> std::io::Result<()> {
        match &self.opts.fault {
            Some(f) if f.load(Ordering::Acquire) => Err(std::io::Error::other("injected write failure")),
            _ => Ok(()),
        }
    }

    /// Writes a batch. On failure, restores the file and the chain position.
    /// Returns the first seq and the lines written. Records sealed in place ahead of
    /// it (see [`Pending`]) go first, in the same write, and share its outcome.
    fn write_batch(&mut self, events: &[&Event], sync: bool) -> Result<(u64, String), String> {
        let pending = std::mem::take(&mut self.pending);
        let (seq0, prev0) = pending.from.unwrap_or_else(|| (self.seq, self.prev.clone()));
        let len0 = self.cur.len;
        let first = self.seq;
        let mut buf = pending.lines;
        let own = buf.len();
        for e in events {
            buf.push_str(&self.seal(e));
            buf.push('\n');
        }
        let res = self.fail_injected().and_then(|_| self.cur.file.write_all(buf.as_bytes())).and_then(|_| {
            if sync {
                self.cur.file.sync_data()
            } else {
                Ok(())
            }
        });
        self.health.writes.fetch_add(1, Ordering::Relaxed);
        let res = match res {
            Ok(()) => {
                self.cur.len += buf.len() as u64;
                self.since_checkpoint += pending.records + events.len() as u64;
                if pending.records > 0 {
                    self.health.records.fetch_add(pending.records, Ordering::Relaxed);
                }
                Ok((first, buf.split_off(own)))
            }
            Err(e) => {
                self.seq = seq0;
                self.prev = prev0;
                // Cut any partial line so the chain stays intact for the next write.
                let _ = self.cur.file.set_len(len0);
                Err(format!("writing {}: {e}", self.cur.path.display()))
            }
        };
        let _ = pending.outcome.0.set(res.as_ref().map(|_| ()).map_err(Clone::clone));
        res
    }

    /// Writes the pending records, if any.
    fn flush_pending(&mut self) -> Result<(), String> {
        if self.pending.records == 0 {
            return Ok(());
        }
        let start = Instant::now();
        let res = self.write_batch(&[], false).map(|_| ());
        self.health.last_batch_micros.store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Some(h) = &self.opts.batch_seconds {
            h.observe(start.elapsed().as_secs_f64());
        }
        if let Err(e) = &res {
            tracing::error!(error = %e, "audit write failed");
            self.health.set(Err(e.clone()));
        }
        res
    }

    /// Appends a checkpoint anchoring everything so far, signed when a key is set,
    /// and copies it to the second place.
    fn checkpoint(&mut self) -> Result<(), String> {
        if self.seq == 0 {
            return Ok(());
        }
        let through_seq = self.seq - 1;
        let through_hash = self.prev.clone();
        let signature = self.opts.signing_key.as_ref().map(|k| {
            let msg = checkpoint_message(&self.chain, through_seq, &through_hash);
            hex::encode(k.sign(&msg).to_bytes())
        });
        let ev = Event::Checkpoint { through_seq, through_hash, key_id: self.key_id.clone(), signature };
        let (_, line) = self.write_batch(&[&ev], true)?;
        self.since_checkpoint = 0;
        self.health.last_checkpoint_ms.store(self.clock.now().0, Ordering::Relaxed);
        self.health.records.fetch_add(1, Ordering::Relaxed);
        let line = line.trim_end().to_string();
        match &self.opts.checkpoint_copy {
            None => {}
            Some(CheckpointCopy::Dir(d)) => {
                if let Err(e) = append_copy(d, &self.chain, &line) {
                    self.health.copy_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, dir = %d.display(), "checkpoint copy failed");
                }
            }
            Some(CheckpointCopy::Url(_)) => {
                if let Some(tx) = &self.url_copies {
                    let _ = tx.send(line);
                }
            }
        }
        Ok(())
    }

    fn ack_all(&self, records: Vec<Queued>, res: &Result<u64, String>) {
        for (i, (event, _, ack)) in records.into_iter().enumerate() {
            match (res, ack) {
                (Ok(seq0), Some(ack)) => {
                    let _ = ack.send(Ok(seq0 + i as u64));
                }
                (Err(e), Some(ack)) => {
                    let _ = ack.send(Err(AuditError::Unavailable(e.clone())));
                }
                (Err(_), None) => tracing::error!(kind = event.kind(), "audit record lost: write failed"),
                (Ok(_), None) => {}
            }
        }
    }

    fn handle_records(&mut self, records: Vec<Queued>) {
        if self.rotation_due() {
            if let Err(e) = self.rotate() {
                tracing::error!(error = %e, "audit rotation failed");
                self.health.set(Err(e));
            }
        }
        let start = Instant::now();
        let res: Result<u64, String> = if self.opts.group_commit {
            let sync = records.iter().any(|(_, d, _)| *d == Durability::Synced);
            let events: Vec<&Event> = records.iter().map(|(e, _, _)| e.as_ref()).collect();
            self.write_batch(&events, sync).map(|(s, _)| s)
        } else {
            // One write and one sync per record: the baseline group commit beats.
            let mut first = None;
            let mut r = Ok(0);
            for (e, d, _) in &records {
                match self.write_batch(&[e.as_ref()], *d == Durability::Synced) {
                    Ok((s, _)) => {
                        first.get_or_insert(s);
                    }
                    Err(e) => {
                        r = Err(e);
                        break;
                    }
                }
            }
            r.map(|_| first.unwrap_or(self.seq))
        };
        self.health.last_batch_micros.store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Some(h) = &self.opts.batch_seconds {
            h.observe(start.elapsed().as_secs_f64());
        }
        match &res {
            Ok(_) => {
                self.health.records.fetch_add(records.len() as u64, Ordering::Relaxed);
                self.health.set(Ok(()));
            }
            Err(e) => {
                tracing::error!(error = %e, records = records.len(), "audit write failed");
                self.health.set(Err(e.clone()));
            }
        }
        self.ack_all(records, &res);
        if res.is_ok() && self.since_checkpoint >= self.opts.checkpoint_every {
            if let Err(e) = self.checkpoint() {
                tracing::error!(error = %e, "audit checkpoint failed");
                self.health.set(Err(e));
            }
        }
    }

    /// Seals a record written in place by a caller (see the module docs) into the
    /// pending buffer; `None` when the record must go through the queue instead.
    fn seal_in_place(&mut self, event: &Event) -> Option<Result<(u64, Arc<Outcome>), AuditError>> {
        if self.closed {
            return Some(Err(AuditError::Closed));
        }
        // Rotation, checkpoints and probing are the thread's work.
        if self.rotation_due() || self.since_checkpoint + self.pending.records >= self.opts.checkpoint_every {
            return None;
        }
        if self.pending.from.is_none() {
            self.pending.from = Some((self.seq, self.prev.clone()));
        }
        let seq = self.seq;
        let line = self.seal(event);
        self.pending.lines.push_str(&line);
        self.pending.lines.push('\n');
        self.pending.records += 1;
        Some(Ok((seq, self.pending.outcome.clone())))
    }

    fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Msg>) {
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
            let (mut tick, mut probe) = (false, false);
            let mut flushed = Vec::new();
            for m in batch {
                match m {
                    Msg::Record { event, durability, ack } => records.push((event, durability, ack)),
                    Msg::Tick => tick = true,
                    Msg::Probe => probe = true,
                    Msg::Flush { ack } => flushed.extend(ack),
                    Msg::Close { ack } => closing = Some(ack),
                }
            }
            shared.busy.store(true, Ordering::Release);
            let mut guard = match shared.writer.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let this = &mut *guard;
            if !records.is_empty() {
                this.handle_records(records);
            } else if let Err(e) = this.flush_pending() {
                tracing::error!(error = %e, "audit write failed");
            }
            if probe && !this.health.is_ok() {
                this.probe();
            }
            // A checkpoint that fell due to records written in place.
            let due = this.since_checkpoint >= this.opts.checkpoint_every;
            if (tick || due) && this.since_checkpoint > 0 {
                let r = if this.rotation_due() { this.rotate() } else { this.checkpoint() };
                if let Err(e) = r {
                    tracing::error!(error = %e, "audit checkpoint failed");
                    this.health.set(Err(e));
                }
            }
            drop(guard);
            shared.busy.store(false, Ordering::Release);
            for ack in flushed {
                let _ = ack.send(());
            }
        }
        shared.busy.store(true, Ordering::Release);
        let mut guard = match shared.writer.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let this = &mut *guard;
        // The final checkpoint anchors everything, including the shutdown record.
        if let Err(e) = this.checkpoint() {
            tracing::error!(error = %e, "final audit checkpoint failed");
        }
        let _ = this.cur.file.sync_data();
        this.closed = true;
        drop(guard);
        if let Some(ack) = closing {
            let _ = ack.send(());
        }
    }
}

type Queued = (Box<Event>, Durability, Option<oneshot::Sender<Result<u64, AuditError>>>);

/// Writes a caller's pending record unless some write already has: when the caller
/// goes on, or when it is dropped while it waits. Never waits on the lock: when the
/// thread holds it (a synced batch, a checkpoint), the thread writes the buffer.
struct FlushOnDrop<'a> {
    log: &'a AuditLog,
    outcome: Option<Arc<Outcome>>,
}

impl FlushOnDrop<'_> {
    /// Writes the buffer now if the lock is free; true if that was done or not needed.
    fn try_flush(&self, outcome: &Outcome) -> bool {
        if outcome.get().is_some() {
            return true;
        }
        let mut w = match self.log.shared.writer.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        // Under the lock, the record is either written (or failed) or still pending.
        if outcome.get().is_none() {
            let _ = w.flush_pending();
        }
        true
    }

    async fn finish(&mut self) -> Result<(), AuditError> {
        let Some(outcome) = self.outcome.take() else { return Ok(()) };
        if !self.try_flush(&outcome) {
            let (ack, rx) = oneshot::channel();
            if self.log.tx.send(Msg::Flush { ack: Some(ack) }).await.is_ok() {
                let _ = rx.await;
            }
        }
        outcome.get().unwrap_or(Err(AuditError::Closed))
    }
}

impl Drop for FlushOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(outcome) = self.outcome.take() {
            if !self.try_flush(&outcome) {
                // The thread holds the lock and writes the buffer with whatever it
                // is doing; the message only makes sure it takes the lock again.
                let _ = self.log.tx.try_send(Msg::Flush { ack: None });
            }
        }
    }
}

/// The bytes a checkpoint signature covers.
pub fn checkpoint_message(chain: &str, through_seq: u64, through_hash: &str) -> Vec<u8> {
    format!("approvalplane.audit.checkpoint.v1\n{chain}\n{through_seq}\n{through_hash}\n").into_bytes()
}

/// A key's id: the first 16 hex digits of SHA-256 over the public key.
pub fn key_id(public: &VerifyingKey) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(public.as_bytes())[..8])
}

fn append_copy(dir: &Path, chain: &str, line: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut f = OpenOptions::new().create(true).append(true).open(dir.join(copy_file_name(chain)))?;
    f.write_all(line.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_data()
}

/// Moves torn tails (a final fragment without a newline, left by a kill mid-write)
/// aside, so every chain file ends on a whole record. Returns what was done.
pub fn recover_torn_tails(dir: &Path, now: Timestamp) -> std::io::Result<Vec<Event>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(out) };
    let mut files: Vec<PathBuf> =
        rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "jsonl")).collect();
    files.sort();
    for f in files {
        let data = std::fs::read(&f)?;
        if data.is_empty() || data.ends_with(b"\n") {
            continue;
        }
        let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let fragment = &data[keep..];
        let moved = f.with_extension(format!("jsonl.torn-{}", now.0));
        std::fs::write(&moved, fragment)?;
        let file = OpenOptions::new().write(true).open(&f)?;
        file.set_len(keep as u64)?;
        file.sync_all()?;
        let last_seq = data[..keep]
            .split(|&b| b == b'\n')
            .rev()
            .find(|l| !l.is_empty())
            .and_then(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
            .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64));
        tracing::warn!(file = %f.display(), torn_bytes = fragment.len(), "moved a torn audit tail aside");
        out.push(Event::Recovery {
            file: f.display().to_string(),
            torn_bytes: fragment.len() as u64,
            moved_to: moved.display().to_string(),
            last_seq,
        });
    }
    Ok(out)
}

/// POSTs checkpoint copies, retrying with backoff; never blocks the writer.
async fn post_copies(url: String, mut rx: mpsc::UnboundedReceiver<String>, health: Arc<AuditHealth>) {
    use http_body_util::Full;
    let client = match crate::upstream::https_client(crate::upstream::webpki_roots(), Duration::from_secs(5), 2) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "checkpoint copies cannot be posted");
            return;
        }
    };
    while let Some(line) = rx.recv().await {
        let mut delay = Duration::from_millis(200);
        for attempt in 0..8 {
            let req = http::Request::post(&url)
                .header("content-type", "application/json")
                .body(Full::new(bytes::Bytes::from(line.clone())));
            let ok = match req {
                Ok(req) => matches!(client.request(req).await, Ok(r) if r.status().is_success()),
                Err(_) => false,
            };
            if ok {
                break;
            }
            if attempt == 7 {
                health.copy_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(url = %url, "checkpoint copy not delivered after retries");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

impl AuditLog {
    /// Starts a new chain in `opts.dir` with its genesis record (after moving any
    /// torn tail of an earlier chain aside and recording that).
    pub fn start(opts: WriterOptions, clock: Arc<dyn Clock>, policy_bundle: &str) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| AuditError::Unavailable(format!("creating {}: {e}", opts.dir.display())))?;
        let recoveries = recover_torn_tails(&opts.dir, clock.now())
            .map_err(|e| AuditError::Unavailable(format!("recovering {}: {e}", opts.dir.display())))?;
        let chain = new_chain_id(clock.now());
        let cur = create_file(&opts.dir, &chain, 0)
            .map_err(|e| AuditError::Unavailable(format!("creating chain file in {}: {e}", opts.dir.display())))?;
        let health = Arc::new(AuditHealth::default());
        let url_copies = match &opts.checkpoint_copy {
            Some(CheckpointCopy::Url(u)) => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(post_copies(u.clone(), rx, health.clone()));
                Some(tx)
            }
            _ => None,
        };
        let mut w = Writer {
            key_id: opts.signing_key.as_ref().map(|k| key_id(&k.verifying_key())),
            opts: opts.clone(),
            chain: chain.clone(),
            clock,
            seq: 0,
            prev: GENESIS_PREV.to_string(),
            cur,
            health: health.clone(),
            since_checkpoint: 0,
            url_copies,
            closed: false,
            pending: Pending::default(),
        };
        let genesis = Event::Genesis {
            replica: opts.replica.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            policy_bundle: policy_bundle.to_string(),
        };
        let mut first: Vec<&Event> = vec![&genesis];
        first.extend(recoveries.iter());
        w.write_batch(&first, true).map_err(AuditError::Unavailable)?;
        health.records.store(first.len() as u64, Ordering::Relaxed);
        health.set(Ok(()));
        let (tx, rx) = mpsc::channel(16 * 1024);
        let shared = Arc::new(Shared { writer: Mutex::new(w), busy: AtomicBool::new(false) });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || Writer::run(thread_shared, rx))
            .map_err(|e| AuditError::Unavailable(format!("starting writer: {e}")))?;
        // Time-based checkpoints (and rotation by age) while records are written.
        let ticker = tx.clone();
        let every = opts.checkpoint_interval.max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            t.tick().await;
            loop {
                t.tick().await;
                if ticker.send(Msg::Tick).await.is_err() {
                    return;
                }
            }
        });
        // While failing, the writer probes the disk every second.
        let prober = tx.clone();
        let probing = health.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                t.tick().await;
                if !probing.is_ok() && prober.send(Msg::Probe).await.is_err() {
                    return;
                }
                if prober.is_closed() {
                    return;
                }
            }
        });
        Ok(AuditLog { tx, health, chain: chain.into(), shared })
    }

    pub fn chain(&self) -> &str {
        &self.chain
    }

    pub fn health(&self) -> &Arc<AuditHealth> {
        &self.health
    }

    /// Appends `event` and waits for `durability`. Returns the record's seq
    /// (0 for [`Durability::Queued`], which does not wait).
    pub async fn append(&self, event: &Event, durability: Durability) -> Result<u64, AuditError> {
        if durability == Durability::Queued {
            self.tx
                .send(Msg::Record { event: Box::new(event.clone()), durability, ack: None })
                .await
                .map_err(|_| AuditError::Closed)?;
            return Ok(0);
        }
        if durability == Durability::Written && !self.shared.busy.load(Ordering::Acquire) && self.health.is_ok() {
            let sealed = match self.shared.writer.try_lock() {
                Ok(mut w) => w.seal_in_place(event),
                Err(_) => None,
            };
            if let Some(sealed) = sealed {
                let (seq, outcome) = sealed?;
                let mut flush = FlushOnDrop { log: self, outcome: Some(outcome) };
                // Lets the other requests ready on this thread add their records.
                tokio::task::yield_now().await;
                return flush.finish().await.map(|()| seq);
            }
        }
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::Record { event: Box::new(event.clone()), durability, ack: Some(ack) })
            .await
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Asks the writer thread to probe a failing disk now (tests; in service a
    /// task asks every second).
    #[cfg(test)]
    async fn writer_probe_for_test(&self) -> Result<(), AuditError> {
        self.tx.send(Msg::Probe).await.map_err(|_| AuditError::Closed)?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }

    /// Writes a final checkpoint, syncs and stops the writer. Later appends fail
    /// with `Closed`.
    pub async fn close(&self) {
        let (ack, rx) = oneshot::channel();
        if self.tx.send(Msg::Close { ack }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Reads a key written by `audit keygen`: base64 of the 32-byte seed.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| format!("{} is not a key written by `approvalplane audit keygen`", path.display()))?;
    let seed: [u8; 32] =
        raw.try_into().map_err(|_| format!("{} does not hold a 32-byte ed25519 key", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads a public key written by `audit keygen`.
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, String> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| format!("{} is not a public key written by `approvalplane audit keygen`", path.display()))?;
    let b: [u8; 32] = raw.try_into().map_err(|_| format!("{} does not hold a 32-byte ed25519 key", path.display()))?;
    VerifyingKey::from_bytes(&b).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes a new key pair: `dir/audit.key` (mode 0600) and `dir/audit.pub`.
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf, String), String> {
    use base64::Engine as _;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let b64 = base64::engine::general_purpose::STANDARD;
    let kp = dir.join("audit.key");
    let pp = dir.join("audit.pub");
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&kp)
        .map_err(|e| format!("creating {}: {e}", kp.display()))?;
    f.write_all(format!("{}\n", b64.encode(key.to_bytes())).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", kp.display()))?;
    std::fs::write(&pp, format!("{}\n", b64.encode(key.verifying_key().as_bytes())))
        .map_err(|e| format!("writing {}: {e}", pp.display()))?;
    Ok((kp, pp, key_id(&key.verifying_key())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn opts(dir: &Path, rotate_bytes: u64) -> WriterOptions {
        WriterOptions { rotate_bytes, ..WriterOptions::new(dir.to_path_buf(), "test") }
    }

    /// Clears the injected fault and probes until the log reports healthy again.
    async fn recover(log: &AuditLog, fault: &AtomicBool) {
        fault.store(false, Ordering::Release);
        for _ in 0..50 {
            if log.health().is_ok() {
                break;
            }
            let _ = log.writer_probe_for_test().await;
        }
        assert!(log.health().is_ok(), "the probe found the disk writable again");
    }

    /// Verifies the chains in `dir` (they must be intact) and returns the report with
    /// the reasons of the shutdown records, in chain order.
    fn shutdown_reasons(dir: &Path) -> (crate::audit::verify::Report, Vec<String>) {
        let mut reasons = Vec::new();
        let report = crate::audit::verify::verify_with(dir, &Default::default(), |v| {
            if v["kind"] == "shutdown" {
                reasons.push(v["reason"].as_str().unwrap_or_default().to_string());
            }
        })
        .unwrap();
        assert!(report.intact(), "{:?}", report.findings);
        (report, reasons)
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
                log.append(&Event::Shutdown { reason: format!("r{i}"), interrupted: vec![] }, d).await.unwrap()
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        // One at a time, so batches are small and rotation (at batch boundaries) happens.
        for i in 0..100 {
            let e = Event::Shutdown { reason: format!("s{i}"), interrupted: vec![] };
            seqs.push(log.append(&e, Durability::Written).await.unwrap());
        }
        seqs.sort();
        seqs.dedup();
        assert_eq!(seqs.len(), 300, "every record got its own seq (checkpoints take seqs too)");
        log.close().await;
        assert!(log
            .append(&Event::Shutdown { reason: "x".into(), interrupted: vec![] }, Durability::Written)
            .await
            .is_err());
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(files.len() > 1, "rotated");
        let report = crate::audit::verify::verify_path(dir.path(), &Default::default()).unwrap();
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        assert!(report.records > 301, "the records plus checkpoints: {}", report.records);
        assert!(report.chains[0].checkpoints >= 2, "at rotation and at close");
    }

    /// Records written in place by callers and batches written by the thread share
    /// one chain: checkpoints still fall due, a failed in-place write is rolled back
    /// and reported, and the chain verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn records_written_in_place_keep_the_chain_and_its_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let fault = Arc::new(AtomicBool::new(false));
        let o = WriterOptions { checkpoint_every: 10, fault: Some(fault.clone()), ..opts(dir.path(), 1 << 20) };
        let log = AuditLog::start(o, Arc::new(SystemClock), "sha256:abc").unwrap();
        let ev = |r: String| Event::Shutdown { reason: r, interrupted: vec![] };
        let mut tasks = Vec::new();
        for t in 0..8 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..50 {
                    let d = if i % 10 == t { Durability::Synced } else { Durability::Written };
                    seqs.push(log.append(&ev(format!("t{t}-{i}")), d).await.unwrap());
                }
                seqs
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.extend(t.await.unwrap());
        }
        seqs.sort();
        seqs.dedup();
        assert_eq!(seqs.len(), 400, "every record got its own seq");

        fault.store(true, Ordering::Release);
        let err = log.append(&ev("lost".into()), Durability::Written).await;
        assert!(matches!(err, Err(AuditError::Unavailable(_))), "{err:?}");
        assert!(!log.health().is_ok());
        // While unhealthy, records go through the thread, whose probe restores health.
        recover(&log, &fault).await;
        log.append(&ev("after".into()), Durability::Written).await.unwrap();
        log.close().await;
        assert!(matches!(log.append(&ev("closed".into()), Durability::Written).await, Err(AuditError::Closed)));

        let (report, reasons) = shutdown_reasons(dir.path());
        assert_eq!(reasons.len(), 401, "the 400, and the one after the failure");
        assert!(!reasons.iter().any(|r| r == "lost"), "a failed write leaves nothing behind");
        // Due every 10 records, taken at batch boundaries (a batch may pass 10).
        assert!(report.chains[0].checkpoints >= 10, "checkpoints fell due: {}", report.chains[0].checkpoints);
    }

    /// Records written in place by requests ready at the same time share one
    /// `write`, a failed shared write fails every one of them, and a caller dropped
    /// while it waits still has its record written.
    #[tokio::test]
    async fn records_written_in_place_are_combined_and_fail_together() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let fault = Arc::new(AtomicBool::new(false));
        let o = WriterOptions { fault: Some(fault.clone()), ..opts(dir.path(), 1 << 20) };
        let log = AuditLog::start(o, Arc::new(SystemClock), "sha256:abc").unwrap();
        let ev = |r: String| Event::Shutdown { reason: r, interrupted: vec![] };

        let events: Vec<Event> = (0..32).map(|i| ev(format!("together-{i}"))).collect();
        let writes = log.health().writes.load(Ordering::Relaxed);
        let seqs = futures_util::future::join_all(events.iter().map(|e| log.append(e, Durability::Written))).await;
        let mut seqs: Vec<u64> = seqs.into_iter().map(Result::unwrap).collect();
        assert_eq!(log.health().writes.load(Ordering::Relaxed) - writes, 1, "32 ready records, one write");
        seqs.dedup();
        assert_eq!(seqs, (seqs[0]..seqs[0] + 32).collect::<Vec<_>>(), "in order, each its own seq");

        // All sealed, then the disk fails before the shared write.
        let (a, b, c, ()) = tokio::join!(
            log.append(&events[0], Durability::Written),
            log.append(&events[1], Durability::Written),
            log.append(&events[2], Durability::Written),
            async { fault.store(true, Ordering::Release) },
        );
        for r in [a, b, c] {
            assert!(matches!(r, Err(AuditError::Unavailable(_))), "{r:?}");
        }
        assert!(!log.health().is_ok());
        recover(&log, &fault).await;

        // Polled once (sealed, waiting for its write), then dropped.
        let dropped = ev("dropped while waiting".into());
        assert!(log.append(&dropped, Durability::Written).now_or_never().is_none(), "waits for the write");
        let on_disk: String = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        assert!(on_disk.contains("dropped while waiting"), "written when its caller was dropped");
        log.append(&ev("after".into()), Durability::Written).await.unwrap();
        log.close().await;

        let (_, reasons) = shutdown_reasons(dir.path());
        let mut want: Vec<String> = (0..32).map(|i| format!("together-{i}")).collect();
        want.extend(["dropped while waiting".to_string(), "after".to_string()]);
        assert_eq!(reasons, want, "the failed write left nothing; the dropped caller's record is there");
    }

    #[tokio::test]
    async fn a_torn_tail_is_moved_aside_and_recorded_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::start(opts(dir.path(), 1 << 20), Arc::new(SystemClock), "sha256:abc").unwrap();
        log.append(&Event::Shutdown { reason: "a".into(), interrupted: vec![] }, Durability::Synced).await.unwrap();
        log.close().await;
        let first = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        let mut f = OpenOptions::new().append(true).open(&first).unwrap();
        f.write_all(b"{\"v\":1,\"chain\":\"half a rec").unwrap();
        drop(f);
        let warn = crate::audit::verify::verify_path(dir.path(), &Default::default()).unwrap();
        assert!(warn.intact() && warn.warnings.iter().any(|w| w.contains("torn tail")), "{:?}", warn.warnings);
        let log = AuditLog::start(opts(dir.path(), 1 << 20), Arc::new(SystemClock), "sha256:abc").unwrap();
        log.close().await;
        assert!(std::fs::read(&first).unwrap().ends_with(b"\n"), "the torn fragment was cut");
        let moved: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".torn-"))
            .collect();
        assert_eq!(moved.len(), 1, "the fragment was moved aside");
        let mut recovery = None;
        let report = crate::audit::verify::verify_with(dir.path(), &Default::default(), |v| {
            if v["kind"] == "recovery" {
                recovery = Some(v.clone());
            }
        })
        .unwrap();
        assert!(report.intact() && report.warnings.is_empty(), "{:?} {:?}", report.findings, report.warnings);
        let r = recovery.expect("a recovery record in the new chain");
        assert_eq!(r["torn_bytes"], 26);
        assert_eq!(r["last_seq"], 2, "genesis, the record, the final checkpoint");
    }
}
