//! The embedded store: approvals in this process's memory.
//!
//! Every operation takes one short lock, so transitions are atomic. Pending approvals
//! do not survive a restart; on shutdown they are marked `interrupted` (and audited by
//! the caller) so that none is silently dropped.
//!
//! Listing walks two ordered indexes (every approval, and the pending ones) from the
//! page's cursor, so a page costs its own length under the lock, not the store's size.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    ApprovalStore, Claim, DecideOutcome, Finish, ListQuery, OpenRequest, Opened, Page, Reuse, StoreError, Vote, Waiters,
};
use crate::approval::{Approval, Status, StoredRequest, Verdict};
use crate::clock::Timestamp;

#[derive(Debug)]
struct Entry {
    approval: Approval,
    request: Option<StoredRequest>,
    fingerprint: String,
    grant_used: bool,
}

#[derive(Debug, Default)]
struct Inner {
    approvals: HashMap<String, Entry>,
    /// Fingerprint → the newest approval opened with it.
    index: HashMap<String, String>,
    /// Every approval's list cursor (`created_at.id`, see [`super::cursor`]), in list order.
    order: BTreeSet<String>,
    /// The cursors of the pending approvals.
    pending: BTreeSet<String>,
    /// `claim_once` keys → when they may be claimed again.
    seen: HashMap<String, Timestamp>,
    /// `set_meta` values with their expiry.
    meta: HashMap<String, (String, Timestamp)>,
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    waiters: Waiters,
}

impl Inner {
    /// Drops `a` from the pending index once it has left `pending`.
    fn settled(pending: &mut BTreeSet<String>, a: &Approval) {
        if a.status != Status::Pending {
            pending.remove(&super::cursor(a));
        }
    }

    /// The approvals after cursor `after` in `set`, in list order, that `keep` accepts,
    /// up to `limit + 1` of them (one more tells whether another page follows).
    fn walk<'a>(
        &'a self,
        set: &'a BTreeSet<String>,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&Approval) -> bool,
    ) -> Vec<&'a Approval> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        set.range::<str, _>((start, Bound::Unbounded))
            .filter_map(|c| c.split_once('.').and_then(|(_, id)| self.approvals.get(id)))
            .map(|e| &e.approval)
            .filter(|a| keep(a))
            .take(limit + 1)
            .collect()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-made transition: every
        // mutation below is a handful of field writes. Keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn reusable(e: &Entry, reuse: Reuse, now: Timestamp) -> Option<Opened> {
    let a = &e.approval;
    let decided = a.decided_at.unwrap_or(a.created_at);
    match (reuse, a.status) {
        (_, Status::Pending) => Some(Opened::Attached(a.clone())),
        (Reuse::Forward { grant_ttl, .. }, Status::Approved) if !e.grant_used && now < decided.plus(grant_ttl) => {
            Some(Opened::Attached(a.clone()))
        }
        (Reuse::Forward { reject_memory, .. }, Status::Rejected) if now < decided.plus(reject_memory) => {
            Some(Opened::RecentlyRejected(a.clone()))
        }
        (Reuse::Ask { grant_ttl }, Status::Approved | Status::Rejected) if now < decided.plus(grant_ttl) => {
            Some(Opened::Attached(a.clone()))
        }
        _ => None,
    }
}

#[async_trait]
impl ApprovalStore for MemoryStore {
    async fn open(&self, req: OpenRequest) -> Result<Opened, StoreError> {
        let mut g = self.lock();
        if let Some(id) = g.index.get(&req.fingerprint) {
            if let Some(found) = g.approvals.get(id).and_then(|e| reusable(e, req.reuse, req.now)) {
                return Ok(found);
            }
        }
        let a = req.approval;
        g.index.insert(req.fingerprint.clone(), a.id.clone());
        g.order.insert(super::cursor(&a));
        if a.status == Status::Pending {
            g.pending.insert(super::cursor(&a));
        }
        g.approvals.insert(
            a.id.clone(),
            Entry { approval: a.clone(), request: req.request, fingerprint: req.fingerprint, grant_used: false },
        );
        Ok(Opened::Created(a))
    }

    async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        Ok(self.lock().approvals.get(id).map(|e| e.approval.clone()))
    }

    async fn list(&self, q: &ListQuery) -> Result<Page, StoreError> {
        let g = self.lock();
        let limit = q.limit.clamp(1, 1000);
        let after = q.after.as_deref();
        let v = match q.status {
            Some(Status::Pending) => g.walk(&g.pending, after, limit, |_| true),
            Some(s) => g.walk(&g.order, after, limit, |a| a.status == s),
            None => g.walk(&g.order, after, limit, |_| true),
        };
        let next = (v.len() > limit).then(|| super::cursor(v[limit - 1]));
        Ok(Page { approvals: v.into_iter().take(limit).cloned().collect(), next })
    }

    async fn decide(&self, id: &str, vote: Vote) -> Result<DecideOutcome, StoreError> {
        let outcome = {
            let mut guard = self.lock();
            let g = &mut *guard;
            let Some(e) = g.approvals.get_mut(id) else { return Ok(DecideOutcome::NotFound) };
            let a = &mut e.approval;
            if a.status != Status::Pending {
                return Ok(DecideOutcome::AlreadyFinal(a.clone()));
            }
            match vote.verdict {
                Verdict::Reject => {
                    // Never forwarded: the bytes need not be kept for the retention.
                    e.request = None;
                    let a = &mut e.approval;
                    a.status = Status::Rejected;
                    a.decided_by = Some(vote.approver);
                    a.decided_at = Some(vote.now);
                    a.reason = vote.reason;
                    a.decided_via = Some(vote.channel);
                    Inner::settled(&mut g.pending, a);
                    DecideOutcome::Decided(a.clone())
                }
                Verdict::Approve => {
                    if a.approvals.contains(&vote.approver) {
                        return Ok(DecideOutcome::AlreadyVoted(a.clone()));
                    }
                    a.approvals.push(vote.approver.clone());
                    if a.approvals.len() as u32 >= a.quorum {
                        a.status = Status::Approved;
                        a.decided_by = Some(vote.approver);
                        a.decided_at = Some(vote.now);
                        a.reason = vote.reason;
                        a.decided_via = Some(vote.channel);
                        Inner::settled(&mut g.pending, a);
                        DecideOutcome::Decided(a.clone())
                    } else {
                        DecideOutcome::Counted(a.clone())
                    }
                }
            }
        };
        self.waiters.wake(id);
        Ok(outcome)
    }

    async fn claim_grant(&self, id: &str, grant_ttl: Duration, now: Timestamp) -> Result<Claim, StoreError> {
        let mut g = self.lock();
        let Some(e) = g.approvals.get_mut(id) else { return Ok(Claim::NotFound) };
        let a = e.approval.clone();
        if a.status != Status::Approved {
            return Ok(Claim::NotApproved(a));
        }
        if e.grant_used {
            return Ok(Claim::Used(a));
        }
        if now >= a.decided_at.unwrap_or(a.created_at).plus(grant_ttl) {
            return Ok(Claim::Lapsed(a));
        }
        // The bytes go with the grant: a used approval is kept for the retention
        // without them. A grant given back brings them back.
        let Some(req) = e.request.take() else { return Ok(Claim::NotApproved(a)) };
        e.grant_used = true;
        Ok(Claim::Granted(a, req))
    }

    async fn release_grant(&self, id: &str, request: StoredRequest) -> Result<(), StoreError> {
        if let Some(e) = self.lock().approvals.get_mut(id) {
            e.grant_used = false;
            e.request = Some(request);
        }
        self.waiters.wake(id);
        Ok(())
    }

    async fn finish(&self, id: &str, how: Finish, now: Timestamp) -> Result<Option<Approval>, StoreError> {
        let done = {
            let mut guard = self.lock();
            let g = &mut *guard;
            match g.approvals.get_mut(id) {
                Some(e) if e.approval.status == Status::Pending => {
                    e.request = None;
                    e.approval.status = how.status();
                    e.approval.decided_at = Some(now);
                    Inner::settled(&mut g.pending, &e.approval);
                    Some(e.approval.clone())
                }
                _ => None,
            }
        };
        if done.is_some() {
            self.waiters.wake(id);
        }
        Ok(done)
    }

    async fn escalate(&self, id: &str, routes: &[String], _now: Timestamp) -> Result<Option<Approval>, StoreError> {
        let done = {
            let mut g = self.lock();
            match g.approvals.get_mut(id) {
                Some(e) if e.approval.status == Status::Pending => {
                    let a = &mut e.approval;
                    let mut added = false;
                    for r in routes {
                        if !a.escalated_to.contains(r) && !a.routes.contains(r) {
                            a.escalated_to.push(r.clone());
                            added = true;
                        }
                    }
                    added.then(|| a.clone())
                }
                _ => None,
            }
        };
        if done.is_some() {
            self.waiters.wake(id);
        }
        Ok(done)
    }

    async fn pending_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        let g = self.lock();
        let mut m = HashMap::new();
        for a in g.walk(&g.pending, None, usize::MAX - 1, |_| true) {
            for r in &a.routes {
                *m.entry(r.clone()).or_insert(0) += 1;
            }
        }
        Ok(m)
    }

    async fn claim_once(&self, key: &str, ttl: Duration, now: Timestamp) -> Result<bool, StoreError> {
        let mut g = self.lock();
        match g.seen.get(key) {
            Some(until) if *until > now => Ok(false),
            _ => {
                g.seen.insert(key.to_string(), now.plus(ttl));
                Ok(true)
            }
        }
    }

    async fn set_meta(&self, key: &str, value: &str, ttl: Duration, now: Timestamp) -> Result<(), StoreError> {
        self.lock().meta.insert(key.to_string(), (value.to_string(), now.plus(ttl)));
        Ok(())
    }

    async fn set_meta_once(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<String>, StoreError> {
        let mut g = self.lock();
        if let Some((v, until)) = g.meta.get(key) {
            if *until > now {
                return Ok(Some(v.clone()));
            }
        }
        g.meta.insert(key.to_string(), (value.to_string(), now.plus(ttl)));
        Ok(None)
    }

    async fn get_meta(&self, key: &str, now: Timestamp) -> Result<Option<String>, StoreError> {
        Ok(self.lock().meta.get(key).filter(|(_, until)| *until > now).map(|(v, _)| v.clone()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn shutdown(&self, now: Timestamp) -> Result<Vec<Approval>, StoreError> {
        let out: Vec<Approval> = {
            let mut guard = self.lock();
            let g = &mut *guard;
            g.pending.clear();
            g.approvals
                .values_mut()
                .filter(|e| e.approval.status == Status::Pending)
                .map(|e| {
                    e.approval.status = Status::Interrupted;
                    e.approval.decided_at = Some(now);
                    e.approval.clone()
                })
                .collect()
        };
        self.waiters.wake_all();
        Ok(out)
    }

    async fn purge(&self, now: Timestamp, retention: Duration) -> Result<usize, StoreError> {
        let mut g = self.lock();
        let old: Vec<(String, String, String)> = g
            .approvals
            .values()
            .filter(|e| e.approval.status.is_final())
            .filter(|e| now >= e.approval.decided_at.unwrap_or(e.approval.created_at).plus(retention))
            .map(|e| (e.approval.id.clone(), e.fingerprint.clone(), super::cursor(&e.approval)))
            .collect();
        for (id, fp, cursor) in &old {
            g.approvals.remove(id);
            g.order.remove(cursor);
            if g.index.get(fp) == Some(id) {
                g.index.remove(fp);
            }
        }
        g.seen.retain(|_, until| *until > now);
        g.meta.retain(|_, (_, until)| *until > now);
        Ok(old.len())
    }

    fn waiters(&self) -> &Waiters {
        &self.waiters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        super::super::conformance::run_all(|| async { MemoryStore::new() }).await;
    }
}
