//! The shared store: approvals in Redis, so that replicas share them.
//!
//! # Keys
//! Every key of one action carries the hash tag `{tttt}`: four hex digits derived
//! from the request's fingerprint, which the approval id also carries
//! ([`Approval::new_id_for`]). Each atomic script therefore touches one Redis
//! Cluster slot. With `P` = `store.key_prefix`:
//!
//! | key | type | what |
//! |---|---|---|
//! | `P{tttt}:a:<id>` | hash | the approval: `doc` (as created), `req`, `fp`, the mutable state, `rmac`, `dmac` |
//! | `P{tttt}:v:<id>` | list | approvers who approved, each with a MAC |
//! | `P{tttt}:e:<id>` | list | routes it was escalated to |
//! | `P{tttt}:f:<fingerprint>` | string | the newest approval opened with that fingerprint |
//! | `Pidx:all`, `Pidx:pending` | zset | ids by creation time: listing hints, reconciled from the records |
//! | `Ptimers` | zset | `x|<id>` / `e|<id>` by due time; a replica leases what it fires |
//! | `Ponce:<key>`, `Pmeta:<key>` | string | replay guards and shared card state |
//!
//! Every record has a TTL (its expiry plus the retention), so nothing grows without
//! bound even if no replica purges. Indexes are written before the record they
//! point to, so a crash leaves at worst a dangling hint, never an unlisted record.
//!
//! # Integrity
//! Write access to Redis alone must not approve a refund. Records carry
//! `rmac` = HMAC(key, id, doc, request, fingerprint), written by the replica that
//! created them and checked on every read; each vote carries its own MAC; an approval
//! carries `dmac` = HMAC(key, id, rmac, decided_at, voters), which a replica checks
//! before it consumes the grant. The key comes from `store.hmac_key_env` (or
//! `_file`) and is shared by the replicas.
//!
//! # Wake-ups and failures
//! Transitions `PUBLISH` the approval id on `Pwake` from inside their script. One
//! subscriber connection per replica wakes local waiters; after a reconnect it wakes
//! them all, and they re-read the state, so a wake-up lost in an outage is not lost.
//! Every operation times out after `op_timeout` (1 s): the request path then fails
//! closed with `store_unavailable`. The connection manager reconnects on the next
//! use, and the subscriber retries every second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use sha2::Sha256;

use super::{
    ApprovalStore, Claim, DecideOutcome, Finish, ListQuery, OpenRequest, Opened, Page, Reuse, StoreError, TimerKind,
    Vote, Waiters,
};
use crate::approval::{slot_tag, Approval, Channel, Status, StoredRequest, Verdict};
use crate::clock::Timestamp;

type HmacSha256 = Hmac<Sha256>;

/// How a [`RedisStore`] connects and keeps its keys.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://` or `rediss://`, possibly with credentials (never logged).
    pub url: String,
    pub key_prefix: String,
    /// The shared secret the integrity MACs are derived from.
    pub hmac_key: Vec<u8>,
    /// The longest a store operation may take before it counts as unavailable.
    pub op_timeout: Duration,
    /// How long decided approvals are kept (their TTL after expiry).
    pub retention: Duration,
    /// PEM CA certificates trusted for `rediss://` instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

/// `scheme://host...` without user or password.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    /// MAC key for records, votes and decisions.
    key: [u8; 32],
    op_timeout: Duration,
    retention: Duration,
    wake: Arc<Wake>,
    scripts: Scripts,
    /// Dropped with the store: stops the subscriber.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// What the subscriber task shares with the store.
#[derive(Debug, Default)]
struct Wake {
    waiters: Waiters,
    subscribed: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

struct Scripts {
    open: Script,
    decide: Script,
    claim: Script,
    release: Script,
    finish: Script,
    escalate: Script,
    take_due: Script,
    purge_one: Script,
    claim_once: Script,
    set_meta_once: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            open: Script::new(OPEN_LUA),
            decide: Script::new(DECIDE_LUA),
            claim: Script::new(CLAIM_LUA),
            release: Script::new(RELEASE_LUA),
            finish: Script::new(FINISH_LUA),
            escalate: Script::new(ESCALATE_LUA),
            take_due: Script::new(TAKE_DUE_LUA),
            purge_one: Script::new(PURGE_ONE_LUA),
            claim_once: Script::new(CLAIM_ONCE_LUA),
            set_meta_once: Script::new(SET_META_ONCE_LUA),
        }
    }
}

/// Creates the approval unless a live one with the same fingerprint can be reused.
/// KEYS: fingerprint key, new record key. ARGV: mode, now, grant_ttl, reject_memory,
/// new id, record key prefix (for the existing id), ttl, then the record's fields.
const OPEN_LUA: &str = r#"
local existing = redis.call('GET', KEYS[1])
if existing then
  local f = redis.call('HMGET', ARGV[6] .. existing, 'status', 'decided_at', 'grant', 'created_at')
  if f[1] then
    local now = tonumber(ARGV[2])
    local decided = tonumber(f[4])
    if f[2] and f[2] ~= '' then decided = tonumber(f[2]) end
    if f[1] == 'pending' then return {'attached', existing} end
    if ARGV[1] == 'fwd' then
      if f[1] == 'approved' and f[3] == '0' and now < decided + tonumber(ARGV[3]) then return {'attached', existing} end
      if f[1] == 'rejected' and now < decided + tonumber(ARGV[4]) then return {'rejected', existing} end
    else
      if (f[1] == 'approved' or f[1] == 'rejected') and now < decided + tonumber(ARGV[3]) then return {'attached', existing} end
    end
  end
end
local fields = {}
for i = 8, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[7])
return {'created', ARGV[5]}
"#;

/// One vote. KEYS: record, votes. ARGV: verdict, approver, vote entry, reason, via,
/// now, expected vote count, completes ('1' when this vote decides), dmac, channel, id.
const DECIDE_LUA: &str = r#"
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st ~= 'pending' then return 'final' end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[7]) then return 'retry' end
if ARGV[1] == 'reject' then
  redis.call('HSET', KEYS[1], 'status', 'rejected', 'decided_by', ARGV[2], 'decided_at', ARGV[6], 'reason', ARGV[4], 'via', ARGV[5])
  redis.call('PUBLISH', ARGV[10], ARGV[11])
  return 'decided'
end
redis.call('RPUSH', KEYS[2], ARGV[3])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[1], 'status', 'approved', 'decided_by', ARGV[2], 'decided_at', ARGV[6], 'reason', ARGV[4], 'via', ARGV[5], 'dmac', ARGV[9])
  redis.call('PUBLISH', ARGV[10], ARGV[11])
  return 'decided'
end
redis.call('PUBLISH', ARGV[10], ARGV[11])
return 'counted'
"#;

/// Takes the one forward. KEYS: record. ARGV: now, grant_ttl, the dmac the caller
/// verified.
const CLAIM_LUA: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'status', 'grant', 'decided_at', 'dmac', 'req')
if not f[1] then return 'missing' end
if f[1] ~= 'approved' or not f[5] or f[5] == '' then return 'not_approved' end
if f[2] == '1' then return 'used' end
if tonumber(ARGV[1]) >= tonumber(f[3]) + tonumber(ARGV[2]) then return 'lapsed' end
if f[4] ~= ARGV[3] then return 'changed' end
redis.call('HSET', KEYS[1], 'grant', '1')
return 'granted'
"#;

/// KEYS: record. ARGV: channel, id.
const RELEASE_LUA: &str = r#"
if redis.call('HGET', KEYS[1], 'status') == 'approved' and redis.call('HGET', KEYS[1], 'grant') == '1' then
  redis.call('HSET', KEYS[1], 'grant', '0')
  redis.call('PUBLISH', ARGV[1], ARGV[2])
  return 1
end
return 0
"#;

/// KEYS: record. ARGV: status, now, channel, id.
const FINISH_LUA: &str = r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'decided_at', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"#;

/// KEYS: record, escalations. ARGV: channel, id, routes...
const ESCALATE_LUA: &str = r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
local have = {}
for _, r in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do have[r] = true end
local added = 0
for i = 3, #ARGV do
  if not have[ARGV[i]] then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    have[ARGV[i]] = true
    added = added + 1
  end
end
if added > 0 then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return added
"#;

/// Leases due timers to the caller. KEYS: timers. ARGV: now, lease end, limit.
const TAKE_DUE_LUA: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], m) end
return due
"#;

/// Drops one decided approval older than the cutoff. KEYS: record, votes,
/// escalations. ARGV: cutoff, fingerprint key prefix, id. Returns 1 dropped,
/// 2 already gone, 0 kept.
const PURGE_ONE_LUA: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'status', 'decided_at', 'fp')
if not f[1] then return 2 end
if f[1] == 'pending' or not f[2] or f[2] == '' or tonumber(f[2]) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local fk = ARGV[2] .. f[3]
if redis.call('GET', fk) == ARGV[3] then redis.call('DEL', fk) end
return 1
"#;

/// KEYS: the key. ARGV: now, until, ttl. The stored value is when it may be
/// claimed again, so the injected clock decides, and Redis's TTL cleans up.
const CLAIM_ONCE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and tonumber(v) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// Sets a meta value unless a live one is there; returns the live one (nil when
/// it set). KEYS: meta key. ARGV: now, "<until>|<value>", ttl in ms.
const SET_META_ONCE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then
  local sep = string.find(v, '|', 1, true)
  if sep and tonumber(string.sub(v, 1, sep - 1)) > tonumber(ARGV[1]) then
    return string.sub(v, sep + 1)
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return false
"#;

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// One record as read from Redis.
struct Record {
    approval: Approval,
    request: Option<StoredRequest>,
    grant_used: bool,
    rmac: String,
    dmac: String,
    votes: Vec<String>,
}

impl RedisStore {
    /// Connects lazily: the store is created even while Redis is down, reports
    /// itself unavailable, and recovers by itself.
    pub fn connect(opts: RedisOptions) -> Result<RedisStore, StoreError> {
        let bad =
            |e: redis::RedisError| StoreError::Unavailable(format!("bad redis url {}: {e}", redact_url(&opts.url)));
        let client = match &opts.ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                opts.url.as_str(),
                redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) },
            )
            .map_err(bad)?,
            None => redis::Client::open(opts.url.as_str()).map_err(bad)?,
        };
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.op_timeout))
            .set_response_timeout(Some(opts.op_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), cfg).map_err(unavailable)?;
        let key = {
            let mut m = <HmacSha256 as Mac>::new_from_slice(&opts.hmac_key)
                .unwrap_or_else(|_| unreachable!("hmac takes any key length"));
            m.update(b"approvalplane/store/v1");
            m.finalize().into_bytes().into()
        };
        let wake = Arc::new(Wake::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let channel = format!("{}wake", opts.key_prefix);
        tokio::spawn(subscriber(client.clone(), channel, Arc::downgrade(&wake), stopped));
        Ok(RedisStore {
            conn,
            prefix: opts.key_prefix,
            key,
            op_timeout: opts.op_timeout,
            retention: opts.retention,
            wake,
            scripts: Scripts::new(),
            _stop: stop,
        })
    }

    /// Whether the wake-up subscription is live.
    pub fn subscribed(&self) -> bool {
        self.wake.subscribed.load(Ordering::Acquire)
    }

    fn channel(&self) -> String {
        format!("{}wake", self.prefix)
    }

    /// Waits until the wake-up subscription is live (tests, start-up checks).
    pub async fn wait_subscribed(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.subscribed() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn tag_for_id(id: &str) -> String {
        Approval::tag_of(id).map(str::to_string).unwrap_or_else(|| slot_tag(id))
    }

    fn record_key(&self, id: &str) -> String {
        format!("{}{{{}}}:a:{id}", self.prefix, Self::tag_for_id(id))
    }

    fn votes_key(&self, id: &str) -> String {
        format!("{}{{{}}}:v:{id}", self.prefix, Self::tag_for_id(id))
    }

    fn esc_key(&self, id: &str) -> String {
        format!("{}{{{}}}:e:{id}", self.prefix, Self::tag_for_id(id))
    }

    fn fp_prefix(&self, fingerprint: &str) -> String {
        format!("{}{{{}}}:f:", self.prefix, slot_tag(fingerprint))
    }

    fn idx(&self, which: &str) -> String {
        format!("{}idx:{which}", self.prefix)
    }

    fn timers_key(&self) -> String {
        format!("{}timers", self.prefix)
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("hmac takes any key length"));
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        hex::encode(m.finalize().into_bytes())
    }

    fn rmac(&self, id: &str, doc: &str, req: &str, fp: &str) -> String {
        self.mac(&[b"record", id.as_bytes(), doc.as_bytes(), req.as_bytes(), fp.as_bytes()])
    }

    fn vote_entry(&self, id: &str, approver: &str) -> String {
        format!("{approver}\u{1f}{}", self.mac(&[b"vote", id.as_bytes(), approver.as_bytes()]))
    }

    fn dmac(&self, id: &str, rmac: &str, decided_at: u64, voters: &[String]) -> String {
        let voters = voters.join("\n");
        self.mac(&[b"grant", id.as_bytes(), rmac.as_bytes(), decided_at.to_string().as_bytes(), voters.as_bytes()])
    }

    async fn timed<T>(&self, fut: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable(format!("no answer from redis within {:?}", self.op_timeout))),
        }
    }

    /// Runs one script invocation on the shared connection, within the deadline.
    async fn invoke<T: redis::FromRedisValue>(&self, inv: &redis::ScriptInvocation<'_>) -> Result<T, StoreError> {
        let mut c = self.conn.clone();
        self.timed(inv.invoke_async(&mut c)).await
    }

    fn corrupt(id: &str, message: impl Into<String>) -> StoreError {
        StoreError::Corrupt { id: id.to_string(), message: message.into() }
    }

    /// Reads and verifies one record.
    async fn read(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let mut c = self.conn.clone();
        let (fields, votes, esc): (HashMap<String, String>, Vec<String>, Vec<String>) = self
            .timed(
                redis::pipe()
                    .hgetall(self.record_key(id))
                    .lrange(self.votes_key(id), 0, -1)
                    .lrange(self.esc_key(id), 0, -1)
                    .query_async(&mut c),
            )
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        self.parse(id, fields, votes, esc).map(Some)
    }

    fn parse(
        &self,
        id: &str,
        mut f: HashMap<String, String>,
        votes: Vec<String>,
        esc: Vec<String>,
    ) -> Result<Record, StoreError> {
        let mut take = |k: &str| f.remove(k).unwrap_or_default();
        let (doc, req, fp, rmac) = (take("doc"), take("req"), take("fp"), take("rmac"));
        let expected = self.rmac(id, &doc, &req, &fp);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), rmac.as_bytes())) {
            return Err(Self::corrupt(id, "record MAC does not verify (written without the store key?)"));
        }
        let mut a: Approval = serde_json::from_str(&doc).map_err(|e| Self::corrupt(id, format!("doc: {e}")))?;
        if a.id != id {
            return Err(Self::corrupt(id, "doc is for another approval"));
        }
        let request = if req.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&req).map_err(|e| Self::corrupt(id, format!("req: {e}")))?)
        };
        let status = take("status");
        a.status = Status::parse(&status).ok_or_else(|| Self::corrupt(id, format!("status {status:?}")))?;
        let opt = |s: String| (!s.is_empty()).then_some(s);
        a.decided_by = opt(take("decided_by")).or(a.decided_by);
        if let Some(t) = opt(take("decided_at")) {
            a.decided_at = Some(Timestamp(t.parse().map_err(|_| Self::corrupt(id, "decided_at"))?));
        }
        a.reason = opt(take("reason")).or(a.reason);
        if let Some(v) = opt(take("via")) {
            a.decided_via = Some(Channel::parse(&v).ok_or_else(|| Self::corrupt(id, format!("via {v:?}")))?);
        }
        let mut voters = Vec::with_capacity(votes.len());
        for v in &votes {
            let name = v.rsplit_once('\u{1f}').map(|(n, _)| n).unwrap_or("");
            if name.is_empty() || *v != self.vote_entry(id, name) {
                return Err(Self::corrupt(id, "a vote's MAC does not verify"));
            }
            voters.push(name.to_string());
        }
        a.approvals = voters;
        a.escalated_to = esc;
        Ok(Record { approval: a, request, grant_used: take("grant") == "1", rmac, dmac: take("dmac"), votes })
    }

    /// Reads many approvals at once (listing); missing ones are `None`.
    async fn read_many(&self, ids: &[String]) -> Result<Vec<Option<Approval>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for id in ids {
            p.hgetall(self.record_key(id)).lrange(self.votes_key(id), 0, -1).lrange(self.esc_key(id), 0, -1);
        }
        let mut c = self.conn.clone();
        let raw: Vec<redis::Value> = self.timed(p.query_async(&mut c)).await?;
        let mut out = Vec::with_capacity(ids.len());
        let mut it = raw.into_iter();
        for id in ids {
            let (Some(f), Some(v), Some(e)) = (it.next(), it.next(), it.next()) else { break };
            let f: HashMap<String, String> =
                redis::from_redis_value(f).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            if f.is_empty() {
                out.push(None);
                continue;
            }
            let v: Vec<String> = redis::from_redis_value(v).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let e: Vec<String> = redis::from_redis_value(e).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            match self.parse(id, f, v, e) {
                Ok(r) => out.push(Some(r.approval)),
                Err(err) => {
                    tracing::error!(approval.id = %id, error = %err, "skipping a record that does not verify");
                    out.push(None);
                }
            }
        }
        Ok(out)
    }

    fn timer_member(id: &str, kind: TimerKind) -> String {
        match kind {
            TimerKind::Expire => format!("x|{id}"),
            TimerKind::Escalate => format!("e|{id}"),
        }
    }

    /// Drops index entries that point nowhere or at approvals no longer pending.
    async fn repair(&self, idx: &str, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut c = self.conn.clone();
        let r: Result<(), _> = self.timed(c.zrem(idx, ids)).await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "index repair deferred");
        }
    }

    /// Index updates after a transition ended a pending approval; hints only.
    async fn ended(&self, id: &str) {
        let mut c = self.conn.clone();
        let r: Result<(), _> = self
            .timed(
                redis::pipe()
                    .zrem(self.idx("pending"), id)
                    .zrem(self.timers_key(), Self::timer_member(id, TimerKind::Expire))
                    .zrem(self.timers_key(), Self::timer_member(id, TimerKind::Escalate))
                    .query_async(&mut c),
            )
            .await;
        if let Err(e) = r {
            tracing::debug!(approval.id = %id, error = %e, "index update deferred");
        }
    }
}

/// The one subscriber connection of this replica: wakes local waiters.
async fn subscriber(
    client: redis::Client,
    channel: String,
    wake: Weak<Wake>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let live = async {
        loop {
            let connected = async {
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            match tokio::time::timeout(Duration::from_secs(2), connected).await {
                Ok(Ok(ps)) => {
                    let Some(w) = wake.upgrade() else { return };
                    w.subscribed.store(true, Ordering::Release);
                    // Anything decided while we were not listening: waiters re-read.
                    w.waiters.wake_all();
                    drop(w);
                    tracing::info!("redis wake-up subscription live");
                    let mut stream = ps.into_on_message();
                    while let Some(msg) = stream.next().await {
                        let Some(w) = wake.upgrade() else { return };
                        if let Ok(id) = msg.get_payload::<String>() {
                            w.waiters.wake(&id);
                        }
                    }
                    let Some(w) = wake.upgrade() else { return };
                    w.subscribed.store(false, Ordering::Release);
                    w.waiters.wake_all();
                    tracing::warn!("redis wake-up subscription lost; reconnecting");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "redis subscription failed; retrying"),
                Err(_) => tracing::debug!("redis subscription timed out; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        _ = live => {}
        _ = &mut stop => {}
    }
}

#[async_trait]
impl ApprovalStore for RedisStore {
    async fn open(&self, req: OpenRequest) -> Result<Opened, StoreError> {
        let a = &req.approval;
        let id = a.id.clone();
        if Approval::tag_of(&id) != Some(slot_tag(&req.fingerprint).as_str()) {
            return Err(Self::corrupt(&id, "approval id does not carry its fingerprint's slot tag"));
        }
        let doc = serde_json::to_string(a).map_err(|e| Self::corrupt(&id, e.to_string()))?;
        let reqj = match &req.request {
            Some(r) => serde_json::to_string(r).map_err(|e| Self::corrupt(&id, e.to_string()))?,
            None => String::new(),
        };
        let rmac = self.rmac(&id, &doc, &reqj, &req.fingerprint);
        let life = a.expires_at.since(req.now) + self.retention.max(Duration::from_secs(3600));
        // Indexes first: a crash between them and the record leaves a dangling hint.
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        p.zadd(self.idx("all"), &id, a.created_at.0).ignore();
        if a.status == Status::Pending {
            p.zadd(self.idx("pending"), &id, a.created_at.0).ignore();
            p.zadd(self.timers_key(), Self::timer_member(&id, TimerKind::Expire), a.expires_at.0).ignore();
            if let Some(at) = a.escalate_at {
                p.zadd(self.timers_key(), Self::timer_member(&id, TimerKind::Escalate), at.0).ignore();
            }
        }
        self.timed(p.query_async::<()>(&mut c)).await?;

        let (mode, grant_ttl, reject) = match req.reuse {
            Reuse::Forward { grant_ttl, reject_memory } => ("fwd", grant_ttl, reject_memory),
            Reuse::Ask { grant_ttl } => ("ask", grant_ttl, Duration::ZERO),
        };
        let mut inv = self.scripts.open.prepare_invoke();
        inv.key(format!("{}{}", self.fp_prefix(&req.fingerprint), req.fingerprint))
            .key(self.record_key(&id))
            .arg(mode)
            .arg(req.now.0)
            .arg(ms(grant_ttl))
            .arg(ms(reject))
            .arg(&id)
            .arg(format!("{}{{{}}}:a:", self.prefix, slot_tag(&req.fingerprint)))
            .arg(ms(life).max(1));
        let decided_at = a.decided_at.map(|t| t.0.to_string()).unwrap_or_default();
        let fields: [(&str, String); 12] = [
            ("doc", doc),
            ("req", reqj),
            ("fp", req.fingerprint.clone()),
            ("rmac", rmac.clone()),
            ("status", a.status.as_str().to_string()),
            ("decided_by", a.decided_by.clone().unwrap_or_default()),
            ("decided_at", decided_at),
            ("reason", a.reason.clone().unwrap_or_default()),
            ("via", a.decided_via.map(|c| c.as_str().to_string()).unwrap_or_default()),
            ("grant", "0".to_string()),
            ("created_at", a.created_at.0.to_string()),
            ("dmac", String::new()),
        ];
        for (k, v) in &fields {
            inv.arg(*k).arg(v);
        }
        let (what, got): (String, String) = self.invoke(&inv).await?;
        if what == "created" {
            return Ok(Opened::Created(req.approval));
        }
        // Not ours after all: drop the hints written for it.
        let mut p = redis::pipe();
        p.zrem(self.idx("all"), &id)
            .zrem(self.idx("pending"), &id)
            .zrem(self.timers_key(), Self::timer_member(&id, TimerKind::Expire))
            .zrem(self.timers_key(), Self::timer_member(&id, TimerKind::Escalate));
        let _ = self.timed(p.query_async::<()>(&mut c)).await;
        let existing = self.read(&got).await?.ok_or_else(|| Self::corrupt(&got, "vanished while attaching"))?;
        Ok(if what == "rejected" {
            Opened::RecentlyRejected(existing.approval)
        } else {
            Opened::Attached(existing.approval)
        })
    }

    async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        Ok(self.read(id).await?.map(|r| r.approval))
    }

    async fn list(&self, q: &ListQuery) -> Result<Page, StoreError> {
        let limit = q.limit.clamp(1, 1000);
        let idx = if q.status == Some(Status::Pending) { self.idx("pending") } else { self.idx("all") };
        let (min_score, after) = match &q.after {
            Some(c) => {
                let (t, _) = c.split_once('.').unwrap_or((c, ""));
                (u64::from_str_radix(t, 16).unwrap_or(0), Some(c.clone()))
            }
            None => (0, None),
        };
        let mut out: Vec<Approval> = Vec::new();
        let mut offset = 0usize;
        let batch = (limit + 1).max(64);
        loop {
            let mut c = self.conn.clone();
            // Members come with their scores (the creation time), so the ones at or
            // before the cursor are skipped without reading their records.
            let members: Vec<(String, f64)> = self
                .timed(
                    redis::cmd("ZRANGE")
                        .arg(&idx)
                        .arg(min_score)
                        .arg("+inf")
                        .arg("BYSCORE")
                        .arg("LIMIT")
                        .arg(offset)
                        .arg(batch)
                        .arg("WITHSCORES")
                        .query_async(&mut c),
                )
                .await?;
            let n = members.len();
            offset += n;
            let ids: Vec<String> = members
                .into_iter()
                .filter(|(id, score)| {
                    after.as_ref().is_none_or(|c| super::cursor_of(Timestamp(*score as u64), id).as_str() > c.as_str())
                })
                .map(|(id, _)| id)
                .collect();
            let found = self.read_many(&ids).await?;
            let mut stale = Vec::new();
            for (id, a) in ids.iter().zip(found) {
                // A missing record may be one being created right now (its hints
                // are written first): skip it here; purge drops old dangling hints.
                let Some(a) = a else { continue };
                if q.status == Some(Status::Pending) && a.status != Status::Pending {
                    stale.push(id.clone());
                    continue;
                }
                if q.status.is_some_and(|s| a.status != s) {
                    continue;
                }
                if after.as_ref().is_some_and(|c| super::cursor(&a).as_str() <= c.as_str()) {
                    continue;
                }
                out.push(a);
            }
            self.repair(&idx, &stale).await;
            if out.len() > limit || n < batch {
                break;
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let next = (out.len() > limit).then(|| super::cursor(&out[limit - 1]));
        out.truncate(limit);
        Ok(Page { approvals: out, next })
    }

    async fn decide(&self, id: &str, vote: Vote) -> Result<DecideOutcome, StoreError> {
        // Optimistic: read and verify, then apply if the votes did not change.
        for _ in 0..16 {
            let Some(r) = self.read(id).await? else { return Ok(DecideOutcome::NotFound) };
            let a = r.approval;
            if a.status != Status::Pending {
                return Ok(DecideOutcome::AlreadyFinal(a));
            }
            if vote.verdict == Verdict::Approve && a.approvals.contains(&vote.approver) {
                return Ok(DecideOutcome::AlreadyVoted(a));
            }
            let mut voters = a.approvals.clone();
            voters.push(vote.approver.clone());
            let completes = vote.verdict == Verdict::Reject || voters.len() as u32 >= a.quorum;
            let dmac = if vote.verdict == Verdict::Approve && completes {
                self.dmac(id, &r.rmac, vote.now.0, &voters)
            } else {
                String::new()
            };
            let res: String = self
                .invoke(
                    self.scripts
                        .decide
                        .key(self.record_key(id))
                        .key(self.votes_key(id))
                        .arg(if vote.verdict == Verdict::Approve { "approve" } else { "reject" })
                        .arg(&vote.approver)
                        .arg(self.vote_entry(id, &vote.approver))
                        .arg(vote.reason.clone().unwrap_or_default())
                        .arg(vote.channel.as_str())
                        .arg(vote.now.0)
                        .arg(r.votes.len())
                        .arg(if completes { "1" } else { "0" })
                        .arg(&dmac)
                        .arg(self.channel())
                        .arg(id),
                )
                .await?;
            match res.as_str() {
                "retry" | "final" => continue,
                "missing" => return Ok(DecideOutcome::NotFound),
                "decided" | "counted" => {}
                other => return Err(Self::corrupt(id, format!("decide script said {other:?}"))),
            }
            self.wake.waiters.wake(id);
            let mut a = a;
            if res == "counted" {
                a.approvals = voters;
                return Ok(DecideOutcome::Counted(a));
            }
            if vote.verdict == Verdict::Approve {
                a.approvals = voters;
                a.status = Status::Approved;
            } else {
                a.status = Status::Rejected;
            }
            a.decided_by = Some(vote.approver);
            a.decided_at = Some(vote.now);
            a.reason = vote.reason;
            a.decided_via = Some(vote.channel);
            self.ended(id).await;
            return Ok(DecideOutcome::Decided(a));
        }
        Err(StoreError::Unavailable(format!("too much contention deciding {id}")))
    }

    async fn claim_grant(&self, id: &str, grant_ttl: Duration, now: Timestamp) -> Result<Claim, StoreError> {
        let Some(r) = self.read(id).await? else { return Ok(Claim::NotFound) };
        let a = r.approval;
        if a.status != Status::Approved {
            return Ok(Claim::NotApproved(a));
        }
        if r.grant_used {
            return Ok(Claim::Used(a));
        }
        let Some(request) = r.request else { return Ok(Claim::NotApproved(a)) };
        let decided_at = a.decided_at.unwrap_or(a.created_at);
        if now >= decided_at.plus(grant_ttl) {
            return Ok(Claim::Lapsed(a));
        }
        let expected = self.dmac(id, &r.rmac, decided_at.0, &a.approvals);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), r.dmac.as_bytes())) {
            tracing::error!(approval.id = %id, "approval in the store carries no valid decision MAC: not forwarding");
            return Err(Self::corrupt(id, "the decision MAC does not verify"));
        }
        let res: String = self
            .invoke(self.scripts.claim.key(self.record_key(id)).arg(now.0).arg(ms(grant_ttl)).arg(&expected))
            .await?;
        Ok(match res.as_str() {
            "granted" => Claim::Granted(a, request),
            "used" => Claim::Used(a),
            "lapsed" => Claim::Lapsed(a),
            "missing" => Claim::NotFound,
            "not_approved" => Claim::NotApproved(a),
            _ => return Err(Self::corrupt(id, "the approval changed while its grant was claimed")),
        })
    }

    async fn release_grant(&self, id: &str, _request: StoredRequest) -> Result<(), StoreError> {
        // The record keeps its request: claiming does not take it out.
        let _: i64 = self.invoke(self.scripts.release.key(self.record_key(id)).arg(self.channel()).arg(id)).await?;
        self.wake.waiters.wake(id);
        Ok(())
    }

    async fn finish(&self, id: &str, how: Finish, now: Timestamp) -> Result<Option<Approval>, StoreError> {
        let done: i64 = self
            .invoke(
                self.scripts
                    .finish
                    .key(self.record_key(id))
                    .arg(how.status().as_str())
                    .arg(now.0)
                    .arg(self.channel())
                    .arg(id),
            )
            .await?;
        if done == 0 {
            return Ok(None);
        }
        self.wake.waiters.wake(id);
        self.ended(id).await;
        self.get(id).await
    }

    async fn escalate(&self, id: &str, routes: &[String], _now: Timestamp) -> Result<Option<Approval>, StoreError> {
        let Some(r) = self.read(id).await? else { return Ok(None) };
        let fresh: Vec<&String> = routes.iter().filter(|x| !r.approval.routes.contains(x)).collect();
        if fresh.is_empty() || r.approval.status != Status::Pending {
            return Ok(None);
        }
        let mut inv = self.scripts.escalate.prepare_invoke();
        inv.key(self.record_key(id)).key(self.esc_key(id)).arg(self.channel()).arg(id);
        for x in fresh {
            inv.arg(x);
        }
        let added: i64 = self.invoke(&inv).await?;
        if added == 0 {
            return Ok(None);
        }
        self.wake.waiters.wake(id);
        self.get(id).await
    }

    async fn pending_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = self.timed(c.zrange(self.idx("pending"), 0, -1)).await?;
        let mut m = HashMap::new();
        for chunk in ids.chunks(500) {
            for a in self.read_many(chunk).await?.into_iter().flatten() {
                if a.status == Status::Pending {
                    for r in &a.routes {
                        *m.entry(r.clone()).or_insert(0) += 1;
                    }
                }
            }
        }
        Ok(m)
    }

    async fn claim_once(&self, key: &str, ttl: Duration, now: Timestamp) -> Result<bool, StoreError> {
        let fresh: i64 = self
            .invoke(
                self.scripts
                    .claim_once
                    .key(format!("{}once:{key}", self.prefix))
                    .arg(now.0)
                    .arg(now.plus(ttl).0)
                    .arg(ms(ttl).max(1)),
            )
            .await?;
        Ok(fresh == 1)
    }

    async fn set_meta(&self, key: &str, value: &str, ttl: Duration, now: Timestamp) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let v = format!("{}|{value}", now.plus(ttl).0);
        self.timed(c.pset_ex::<_, _, ()>(format!("{}meta:{key}", self.prefix), v, ms(ttl).max(1))).await
    }

    async fn set_meta_once(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Option<String>, StoreError> {
        self.invoke(
            self.scripts
                .set_meta_once
                .key(format!("{}meta:{key}", self.prefix))
                .arg(now.0)
                .arg(format!("{}|{value}", now.plus(ttl).0))
                .arg(ms(ttl).max(1)),
        )
        .await
    }

    async fn get_meta(&self, key: &str, now: Timestamp) -> Result<Option<String>, StoreError> {
        let mut c = self.conn.clone();
        let v: Option<String> = self.timed(c.get(format!("{}meta:{key}", self.prefix))).await?;
        Ok(v.and_then(|v| {
            let (until, value) = v.split_once('|')?;
            (until.parse::<u64>().ok()? > now.0).then(|| value.to_string())
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let _: String = self.timed(redis::cmd("PING").query_async(&mut c)).await?;
        if !self.subscribed() {
            return Err(StoreError::Unavailable("the wake-up subscription is not connected".into()));
        }
        Ok(())
    }

    async fn shutdown(&self, _now: Timestamp) -> Result<Vec<Approval>, StoreError> {
        // Pending approvals stay pending, for the other replicas.
        self.wake.waiters.wake_all();
        Ok(Vec::new())
    }

    async fn purge(&self, now: Timestamp, retention: Duration) -> Result<usize, StoreError> {
        let cutoff = Timestamp(now.0.saturating_sub(ms(retention)));
        let mut c = self.conn.clone();
        // Oldest first; a decided approval is at least as old as its creation.
        let ids: Vec<String> = self
            .timed(
                redis::cmd("ZRANGE")
                    .arg(self.idx("all"))
                    .arg(0)
                    .arg(cutoff.0)
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(5000)
                    .query_async(&mut c),
            )
            .await?;
        let mut dropped = 0;
        let mut gone = Vec::new();
        for id in &ids {
            let tag = Self::tag_for_id(id);
            let res: i64 = self
                .invoke(
                    self.scripts
                        .purge_one
                        .key(self.record_key(id))
                        .key(self.votes_key(id))
                        .key(self.esc_key(id))
                        .arg(cutoff.0)
                        .arg(format!("{}{{{tag}}}:f:", self.prefix))
                        .arg(id),
                )
                .await?;
            if res == 1 {
                dropped += 1;
            }
            if res != 0 {
                gone.push(id.clone());
            }
        }
        self.repair(&self.idx("all"), &gone).await;
        self.repair(&self.idx("pending"), &gone).await;
        Ok(dropped)
    }

    fn waiters(&self) -> &Waiters {
        &self.wake.waiters
    }

    fn shared(&self) -> bool {
        true
    }

    async fn take_due_timers(
        &self,
        now: Timestamp,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<(String, TimerKind)>, StoreError> {
        let due: Vec<String> = self
            .invoke(self.scripts.take_due.key(self.timers_key()).arg(now.0).arg(now.plus(lease).0).arg(limit))
            .await?;
        Ok(due
            .into_iter()
            .filter_map(|m| match m.split_once('|') {
                Some(("x", id)) => Some((id.to_string(), TimerKind::Expire)),
                Some(("e", id)) => Some((id.to_string(), TimerKind::Escalate)),
                _ => None,
            })
            .collect())
    }

    async fn timer_done(&self, id: &str, kind: TimerKind) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        self.timed(c.zrem::<_, _, ()>(self.timers_key(), Self::timer_member(id, kind))).await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::AtomicUsize;

    /// A `redis-server` of the test's own, on a free port with a temporary
    /// directory; killed on drop.
    pub struct Server {
        child: Child,
        pub port: u16,
        _dir: tempfile::TempDir,
    }

    impl Server {
        pub fn start() -> Server {
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server is installed (scripts/install-deps installs it)");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(std::time::Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            Server { child, port, _dir: dir }
        }

        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/0", self.port)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn options(url: String, prefix: String) -> RedisOptions {
        RedisOptions {
            url,
            key_prefix: prefix,
            hmac_key: b"test-store-key".to_vec(),
            op_timeout: Duration::from_secs(1),
            retention: Duration::from_secs(3600),
            ca_pem: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let server = Server::start();
        let n = AtomicUsize::new(0);
        let url = server.url();
        super::super::conformance::run_all(|| async {
            let prefix = format!("t{}:", n.fetch_add(1, Ordering::Relaxed));
            let s = RedisStore::connect(options(url.clone(), prefix)).unwrap();
            assert!(s.wait_subscribed(Duration::from_secs(5)).await);
            s
        })
        .await;
    }

    /// Two stores on one Redis stand for two replicas: a decision through one
    /// wakes a waiter on the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_decision_on_one_replica_wakes_the_other() {
        let server = Server::start();
        let a = Arc::new(RedisStore::connect(options(server.url(), "x:".into())).unwrap());
        let b = RedisStore::connect(options(server.url(), "x:".into())).unwrap();
        assert!(a.wait_subscribed(Duration::from_secs(5)).await);
        let req = super::super::conformance::open_request("fp-wake");
        let Opened::Created(ap) = a.open(req).await.unwrap() else { panic!() };
        let w = a.waiters().register(&ap.id);
        let n = w.notify().notified();
        tokio::pin!(n);
        n.as_mut().enable();
        let vote = Vote {
            approver: "alice".into(),
            verdict: Verdict::Approve,
            reason: None,
            channel: Channel::AdminApi,
            now: ap.created_at,
        };
        assert!(matches!(b.decide(&ap.id, vote).await.unwrap(), DecideOutcome::Decided(_)));
        tokio::time::timeout(Duration::from_secs(2), n).await.expect("replica a was woken");
        assert_eq!(a.get(&ap.id).await.unwrap().unwrap().status, Status::Approved);
    }

    /// Write access to Redis alone cannot approve: a status flipped by hand is
    /// not forwarded, and a request swapped by hand does not verify.
    #[tokio::test]
    async fn forged_decisions_and_requests_do_not_verify() {
        let server = Server::start();
        let s = RedisStore::connect(options(server.url(), "f:".into())).unwrap();
        let Opened::Created(ap) = s.open(super::super::conformance::open_request("fp-forge")).await.unwrap() else {
            panic!()
        };
        let client = redis::Client::open(server.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let key = s.record_key(&ap.id);
        let _: () = c
            .hset_multiple(&key, &[("status", "approved"), ("decided_at", &ap.created_at.0.to_string())])
            .await
            .unwrap();
        let claim = s.claim_grant(&ap.id, Duration::from_secs(60), ap.created_at).await;
        assert!(matches!(claim, Err(StoreError::Corrupt { .. })), "{claim:?}");
        let _: () = c.hset(&key, "req", "{}").await.unwrap();
        assert!(matches!(s.get(&ap.id).await, Err(StoreError::Corrupt { .. })));
        // A vote pushed by hand does not count either.
        let Opened::Created(b) = s.open(super::super::conformance::open_request("fp-vote")).await.unwrap() else {
            panic!()
        };
        let _: () = c.rpush(s.votes_key(&b.id), "mallory\u{1f}00").await.unwrap();
        assert!(matches!(s.get(&b.id).await, Err(StoreError::Corrupt { .. })));
    }

    /// `rediss://`: a real TLS connection to redis-server, trusting a CA made in
    /// the test; a client that trusts another CA is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rediss_with_a_private_ca() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let make_ca = || {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = p.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca, ca_key) = make_ca();
        let (other_ca, _) = make_ca();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, body: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        let (ca_file, cert_file, key_file) =
            (w("ca.pem", ca.pem()), w("server.pem", cert.pem()), w("server.key", key.serialize_pem()));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(&cert_file)
            .arg("--tls-key-file")
            .arg(&key_file)
            .arg("--tls-ca-cert-file")
            .arg(&ca_file)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server (tls) did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let url = format!("rediss://localhost:{port}/0");
        let mut opts = options(url.clone(), "tls:".into());
        opts.ca_pem = Some(ca.pem().into_bytes());
        let s = RedisStore::connect(opts).unwrap();
        assert!(s.wait_subscribed(Duration::from_secs(5)).await, "no TLS subscription");
        let Opened::Created(a) = s.open(super::super::conformance::open_request("fp-tls")).await.unwrap() else {
            panic!()
        };
        assert_eq!(s.get(&a.id).await.unwrap().unwrap().id, a.id);

        let mut wrong = options(url, "tls:".into());
        wrong.ca_pem = Some(other_ca.pem().into_bytes());
        let w = RedisStore::connect(wrong).unwrap();
        assert!(matches!(w.get(&a.id).await, Err(StoreError::Unavailable(_))), "a server the client does not trust");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Redis down: operations fail within the timeout; back up: they work again
    /// without a new store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fails_fast_while_redis_is_down_and_recovers() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let s = RedisStore::connect(options(format!("redis://127.0.0.1:{port}/0"), "d:".into())).unwrap();
        let t = std::time::Instant::now();
        assert!(matches!(s.ping().await, Err(StoreError::Unavailable(_))));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if s.ping().await.is_ok() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "did not recover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://:hunter2@10.0.0.1:6379/0"), "redis://***@10.0.0.1:6379/0");
        assert_eq!(redact_url("rediss://user:pw@host/0"), "rediss://***@host/0");
        assert_eq!(redact_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
    }
}
