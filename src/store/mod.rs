//! The approval store: where approvals, their requests and their grants live.
//!
//! A small trait ([`ApprovalStore`]) with one implementation per backend: memory
//! (embedded, the default) and Redis (shared by replicas). Every transition
//! that must happen once (pending → decided, grant consumed) is atomic inside the
//! store. One conformance suite ([`conformance`]) runs against every backend.
//!
//! The store does not decide who may approve (that is [`crate::gate`]), and it does
//! not write audit records.

#[cfg(test)]
pub mod conformance;
pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::approval::{Approval, Channel, Status, StoredRequest, Verdict};
use crate::clock::Timestamp;

/// A store failure: the request path fails closed on any of these.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data for {id} is corrupt: {message}")]
    Corrupt { id: String, message: String },
}

/// How an existing approval with the same fingerprint may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Proxied requests: attach while pending or while an unused grant is live;
    /// refuse at once within `reject_memory` after a rejection.
    Forward { grant_ttl: Duration, reject_memory: Duration },
    /// `request_approval`: return the same approval while pending and for
    /// `grant_ttl` after its decision.
    Ask { grant_ttl: Duration },
}

/// A timer on a pending approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    Escalate,
    Expire,
}

/// A request to open (create or attach to) an approval.
#[derive(Debug, Clone)]
pub struct OpenRequest {
    /// Hex fingerprint; identical requests share it.
    pub fingerprint: String,
    /// The approval to create when nothing can be reused.
    pub approval: Approval,
    /// The exact request to forward once approved (proxied requests only).
    pub request: Option<StoredRequest>,
    pub reuse: Reuse,
    pub now: Timestamp,
}

/// What [`ApprovalStore::open`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    Created(Approval),
    Attached(Approval),
    /// Rejected within `reject_memory`: refuse at once.
    RecentlyRejected(Approval),
}

/// A vote by an approver. Authorization is checked by the caller.
#[derive(Debug, Clone)]
pub struct Vote {
    pub approver: String,
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub channel: Channel,
    pub now: Timestamp,
}

/// What [`ApprovalStore::decide`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum DecideOutcome {
    /// This vote decided it.
    Decided(Approval),
    /// Counted towards the quorum; still pending.
    Counted(Approval),
    /// This approver already approved; still pending.
    AlreadyVoted(Approval),
    /// It was already decided (or expired, abandoned, interrupted).
    AlreadyFinal(Approval),
    NotFound,
}

/// What [`ApprovalStore::claim_grant`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The caller now owns the one forward of this approval.
    Granted(Approval, StoredRequest),
    /// Another request took the grant.
    Used(Approval),
    /// The grant outlived `grant_ttl`.
    Lapsed(Approval),
    /// Not approved (still pending, or rejected, expired...).
    NotApproved(Approval),
    NotFound,
}

/// A non-human end of a pending approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Expired,
    Abandoned,
    Interrupted,
}

impl Finish {
    pub fn status(self) -> Status {
        match self {
            Finish::Expired => Status::Expired,
            Finish::Abandoned => Status::Abandoned,
            Finish::Interrupted => Status::Interrupted,
        }
    }
}

/// The opaque list cursor of an approval: its place in (created_at, id) order.
pub fn cursor(a: &Approval) -> String {
    cursor_of(a.created_at, &a.id)
}

/// The list cursor of the approval `id` created at `created_at`: list order is
/// the order of these strings.
pub fn cursor_of(created_at: Timestamp, id: &str) -> String {
    format!("{:016x}.{}", created_at.0, id)
}

/// A page of approvals, oldest first.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<Status>,
    /// Opaque cursor from a previous page's `next`.
    pub after: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Page {
    pub approvals: Vec<Approval>,
    pub next: Option<String>,
}

#[async_trait]
pub trait ApprovalStore: Send + Sync + 'static {
    /// Creates an approval, or attaches to the live one with the same fingerprint.
    async fn open(&self, req: OpenRequest) -> Result<Opened, StoreError>;
    async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError>;
    async fn list(&self, q: &ListQuery) -> Result<Page, StoreError>;
    /// Records a vote; pending → approved/rejected happens exactly once.
    async fn decide(&self, id: &str, vote: Vote) -> Result<DecideOutcome, StoreError>;
    /// Takes the one forward of an approved request.
    async fn claim_grant(&self, id: &str, grant_ttl: Duration, now: Timestamp) -> Result<Claim, StoreError>;
    /// Gives an unused grant back (the upstream could not be connected to), with the
    /// request its claim returned: a store that hands the bytes out on claim (the
    /// memory store does not keep them for the retention) takes them back.
    async fn release_grant(&self, id: &str, request: StoredRequest) -> Result<(), StoreError>;
    /// Ends a pending approval without a person: expired, abandoned, interrupted.
    /// Returns the approval if this call ended it.
    async fn finish(&self, id: &str, how: Finish, now: Timestamp) -> Result<Option<Approval>, StoreError>;
    /// Adds escalation routes to a pending approval; returns it if this call did.
    async fn escalate(&self, id: &str, routes: &[String], now: Timestamp) -> Result<Option<Approval>, StoreError>;
    /// Pending approvals per route, for the gauge.
    async fn pending_counts(&self) -> Result<HashMap<String, u64>, StoreError>;
    /// Marks `key` as seen for `ttl`. Returns true the first time, false while it is
    /// remembered: replayed Slack callbacks, single-use sign-in links.
    async fn claim_once(&self, key: &str, ttl: Duration, now: Timestamp) -> Result<bool, StoreError>;
    /// Small shared key-value state with a lifetime, e.g. the Slack message of an
    /// approval card, so any replica can update it.
    async fn set_meta(&self, key: &str, value: &str, ttl: Duration, now: Timestamp) -> Result<(), StoreError>;
    async fn get_meta(&self, key: &str, now: Timestamp) -> Result<Option<String>, StoreError>;
    /// Sets `key` to `value` for `ttl` unless it holds a live value, in one atomic
    /// step; returns the live value it already held (`None`: this call set it).
    async fn set_meta_once(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<String>, StoreError>;
    /// Health check.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Called on shutdown. The memory store interrupts every pending approval
    /// (it is about to lose them) and returns them; shared stores return nothing.
    async fn shutdown(&self, now: Timestamp) -> Result<Vec<Approval>, StoreError>;
    /// Drops what is older than the retention; returns how many were dropped.
    async fn purge(&self, now: Timestamp, retention: Duration) -> Result<usize, StoreError>;
    /// The local wake-up registry that this store signals on every transition.
    fn waiters(&self) -> &Waiters;
    /// Whether several replicas share this store. Shared stores keep the timers of
    /// every approval, so that they fire even when the replica that set them died.
    fn shared(&self) -> bool {
        false
    }
    /// Timers due at `now`, leased to the caller for `lease`: another replica takes
    /// them over if the caller dies before [`ApprovalStore::timer_done`].
    async fn take_due_timers(
        &self,
        _now: Timestamp,
        _lease: Duration,
        _limit: usize,
    ) -> Result<Vec<(String, TimerKind)>, StoreError> {
        Ok(Vec::new())
    }
    /// A timer fired (or no longer matters).
    async fn timer_done(&self, _id: &str, _kind: TimerKind) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Wakes local tasks waiting on an approval. Waiters register, then re-read the
/// state, then wait: a change between the read and the wait is not lost, because
/// `Notified` is enabled before the read.
#[derive(Debug, Default)]
pub struct Waiters {
    map: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
}

/// A registration; dropping it unregisters.
#[derive(Debug)]
pub struct Waiter<'a> {
    owner: &'a Waiters,
    id: String,
    notify: Arc<Notify>,
}

impl Waiters {
    pub fn register(&self, id: &str) -> Waiter<'_> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(id.to_string()).or_insert_with(|| (Arc::new(Notify::new()), 0));
        e.1 += 1;
        Waiter { owner: self, id: id.to_string(), notify: e.0.clone() }
    }

    /// Wakes every local waiter on `id`.
    pub fn wake(&self, id: &str) {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, _)) = m.get(id) {
            n.notify_waiters();
        }
    }

    /// Wakes every local waiter (shutdown, reconnect).
    pub fn wake_all(&self) {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for (n, _) in m.values() {
            n.notify_waiters();
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Waiter<'_> {
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut m = self.owner.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = m.get_mut(&self.id) {
            e.1 -= 1;
            if e.1 == 0 {
                m.remove(&self.id);
            }
        }
    }
}
