//! The conformance suite every [`ApprovalStore`] passes. Each backend's tests call
//! [`run_all`] with a factory that returns a fresh, empty store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::approval::{Approval, Channel, Entrance, Risk, Status, StoredRequest, Verdict};
use crate::clock::Timestamp;

const T0: Timestamp = Timestamp(1_800_000_000_000);
const TTL: Duration = Duration::from_secs(900);
const REJECT: Duration = Duration::from_secs(600);
const FWD: Reuse = Reuse::Forward { grant_ttl: TTL, reject_memory: REJECT };

pub fn approval(fingerprint: &str, quorum: u32) -> Approval {
    Approval {
        id: Approval::new_id_for(fingerprint),
        status: Status::Pending,
        route: "finance-oncall".into(),
        routes: vec!["finance-oncall".into()],
        agent: "support-agent".into(),
        action: "issue_refund".into(),
        risk: Risk::High,
        summary: serde_json::Map::new(),
        justification: Some("duplicate charge".into()),
        rule_ids: vec!["stripe.refund.large".into()],
        body_sha256: "00".repeat(32),
        created_at: T0,
        decided_by: None,
        decided_at: None,
        reason: None,
        approvals: vec![],
        quorum,
        kind: Entrance::Http,
        upstream: Some("stripe".into()),
        target: Some("POST /stripe/v1/refunds".into()),
        risk_reason: "over $500".into(),
        policy_bundle: "sha256:00".into(),
        expires_at: T0.plus(Duration::from_secs(3600)),
        escalate_at: None,
        escalated_to: vec![],
        decided_via: None,
    }
}

fn request() -> StoredRequest {
    StoredRequest {
        upstream: "stripe".into(),
        method: "POST".into(),
        path_and_query: "/v1/refunds".into(),
        headers: vec![("content-type".into(), "application/x-www-form-urlencoded".into())],
        body: Bytes::from_static(b"charge=ch_1&amount=240000"),
    }
}

/// A pending proxied request's open, for backend-specific tests.
pub fn open_request(fp: &str) -> OpenRequest {
    open_req(fp, 1, T0)
}

fn open_req(fp: &str, quorum: u32, now: Timestamp) -> OpenRequest {
    OpenRequest { fingerprint: fp.into(), approval: approval(fp, quorum), request: Some(request()), reuse: FWD, now }
}

fn vote(who: &str, v: Verdict, now: Timestamp) -> Vote {
    Vote { approver: who.into(), verdict: v, reason: Some("ok".into()), channel: Channel::AdminApi, now }
}

async fn created<S: ApprovalStore>(s: &S, fp: &str, quorum: u32) -> Approval {
    match s.open(open_req(fp, quorum, T0)).await.unwrap() {
        Opened::Created(a) => a,
        o => panic!("expected Created, got {o:?}"),
    }
}

pub async fn run_all<S, F, Fut>(make: F)
where
    S: ApprovalStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    identical_requests_attach(make().await).await;
    decide_happens_once(make().await).await;
    quorum_counts_distinct_approvers(make().await).await;
    grant_is_used_once(make().await).await;
    rejection_is_remembered(make().await).await;
    finish_and_escalate(make().await).await;
    listing_pages_oldest_first(make().await).await;
    listing_follows_every_transition(make().await).await;
    ask_reuse_returns_decided(make().await).await;
    concurrent_votes_have_one_winner(Arc::new(make().await)).await;
    waiters_are_woken(Arc::new(make().await)).await;
    shutdown_and_purge(make().await).await;
    claim_once_remembers_for_its_ttl(make().await).await;
    meta_values_live_for_their_ttl(make().await).await;
    set_meta_once_keeps_the_first_value(make().await).await;
}

async fn meta_values_live_for_their_ttl<S: ApprovalStore>(s: S) {
    let ttl = Duration::from_secs(60);
    assert_eq!(s.get_meta("slack:apr_1", T0).await.unwrap(), None);
    s.set_meta("slack:apr_1", "C1/1700000000.000100", ttl, T0).await.unwrap();
    assert_eq!(s.get_meta("slack:apr_1", T0).await.unwrap().as_deref(), Some("C1/1700000000.000100"));
    s.set_meta("slack:apr_1", "C1/2", ttl, T0).await.unwrap();
    assert_eq!(s.get_meta("slack:apr_1", T0).await.unwrap().as_deref(), Some("C1/2"), "overwritten");
    assert_eq!(s.get_meta("slack:apr_1", T0.plus(ttl)).await.unwrap(), None, "expired");
}

async fn set_meta_once_keeps_the_first_value<S: ApprovalStore>(s: S) {
    let ttl = Duration::from_secs(60);
    assert_eq!(s.set_meta_once("idem:k", "fp-a", ttl, T0).await.unwrap(), None, "set");
    assert_eq!(s.set_meta_once("idem:k", "fp-b", ttl, T0).await.unwrap().as_deref(), Some("fp-a"));
    assert_eq!(s.get_meta("idem:k", T0).await.unwrap().as_deref(), Some("fp-a"), "not overwritten");
    assert_eq!(s.set_meta_once("idem:k", "fp-c", ttl, T0.plus(ttl)).await.unwrap(), None, "expired: set again");
    // Concurrent callers: exactly one sets, the others see its value.
    let (a, b, c, d) = tokio::join!(
        s.set_meta_once("idem:race", "1", ttl, T0),
        s.set_meta_once("idem:race", "2", ttl, T0),
        s.set_meta_once("idem:race", "3", ttl, T0),
        s.set_meta_once("idem:race", "4", ttl, T0),
    );
    let got = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
    assert_eq!(got.iter().filter(|g| g.is_none()).count(), 1, "{got:?}");
    let first = s.get_meta("idem:race", T0).await.unwrap().unwrap();
    assert!(got.iter().flatten().all(|v| *v == first), "{got:?}");
}

async fn claim_once_remembers_for_its_ttl<S: ApprovalStore>(s: S) {
    let ttl = Duration::from_secs(300);
    assert!(s.claim_once("sig:abc", ttl, T0).await.unwrap());
    assert!(!s.claim_once("sig:abc", ttl, T0.plus(Duration::from_secs(299))).await.unwrap());
    assert!(s.claim_once("sig:other", ttl, T0).await.unwrap());
    assert!(s.claim_once("sig:abc", ttl, T0.plus(ttl)).await.unwrap(), "forgotten after the ttl");
}

async fn identical_requests_attach<S: ApprovalStore>(s: S) {
    let a = created(&s, "fp1", 1).await;
    match s.open(open_req("fp1", 1, T0)).await.unwrap() {
        Opened::Attached(b) => assert_eq!(b.id, a.id),
        o => panic!("{o:?}"),
    }
    let other = created(&s, "fp2", 1).await;
    assert_ne!(other.id, a.id);
    assert_eq!(s.get(&a.id).await.unwrap().unwrap().status, Status::Pending);
    assert!(s.get("apr_00000000000000000000").await.unwrap().is_none());
}

async fn decide_happens_once<S: ApprovalStore>(s: S) {
    let a = created(&s, "fp", 1).await;
    let first = s.decide(&a.id, vote("alice", Verdict::Approve, T0)).await.unwrap();
    let DecideOutcome::Decided(d) = first else { panic!("{first:?}") };
    assert_eq!((d.status, d.decided_by.as_deref()), (Status::Approved, Some("alice")));
    assert_eq!(d.approvals, ["alice"]);
    let again = s.decide(&a.id, vote("bob", Verdict::Reject, T0)).await.unwrap();
    assert!(matches!(again, DecideOutcome::AlreadyFinal(ref x) if x.status == Status::Approved), "{again:?}");
    assert_eq!(
        s.decide("apr_00000000000000000000", vote("a", Verdict::Approve, T0)).await.unwrap(),
        DecideOutcome::NotFound
    );
}

async fn quorum_counts_distinct_approvers<S: ApprovalStore>(s: S) {
    let a = created(&s, "fp", 2).await;
    assert!(matches!(s.decide(&a.id, vote("alice", Verdict::Approve, T0)).await.unwrap(), DecideOutcome::Counted(_)));
    assert!(matches!(
        s.decide(&a.id, vote("alice", Verdict::Approve, T0)).await.unwrap(),
        DecideOutcome::AlreadyVoted(_)
    ));
    let d = s.decide(&a.id, vote("bob", Verdict::Approve, T0)).await.unwrap();
    let DecideOutcome::Decided(d) = d else { panic!("{d:?}") };
    assert_eq!(d.approvals, ["alice", "bob"]);
    // One reject rejects, even after approvals.
    let b = created(&s, "fp-b", 2).await;
    s.decide(&b.id, vote("alice", Verdict::Approve, T0)).await.unwrap();
    let r = s.decide(&b.id, vote("bob", Verdict::Reject, T0)).await.unwrap();
    assert!(matches!(r, DecideOutcome::Decided(ref x) if x.status == Status::Rejected), "{r:?}");
}

async fn grant_is_used_once<S: ApprovalStore>(s: S) {
    let a = created(&s, "fp", 1).await;
    assert!(matches!(s.claim_grant(&a.id, TTL, T0).await.unwrap(), Claim::NotApproved(_)));
    s.decide(&a.id, vote("alice", Verdict::Approve, T0)).await.unwrap();
    // An identical request attaches to the approved, unused grant.
    assert!(matches!(s.open(open_req("fp", 1, T0)).await.unwrap(), Opened::Attached(ref x) if x.id == a.id));
    let Claim::Granted(_, req) = s.claim_grant(&a.id, TTL, T0).await.unwrap() else { panic!() };
    assert_eq!(req, request());
    assert!(matches!(s.claim_grant(&a.id, TTL, T0).await.unwrap(), Claim::Used(_)));
    // A connect failure gives it back, with the bytes.
    s.release_grant(&a.id, req).await.unwrap();
    let Claim::Granted(_, again) = s.claim_grant(&a.id, TTL, T0).await.unwrap() else { panic!() };
    assert_eq!(again, request());
    // Once used, an identical request starts a new approval.
    assert!(matches!(s.open(open_req("fp", 1, T0)).await.unwrap(), Opened::Created(ref x) if x.id != a.id));
    // A grant lapses after grant_ttl.
    let b = created(&s, "fp-b", 1).await;
    s.decide(&b.id, vote("alice", Verdict::Approve, T0)).await.unwrap();
    assert!(matches!(s.claim_grant(&b.id, TTL, T0.plus(TTL)).await.unwrap(), Claim::Lapsed(_)));
    assert!(matches!(s.open(open_req("fp-b", 1, T0.plus(TTL))).await.unwrap(), Opened::Created(_)));
}

async fn rejection_is_remembered<S: ApprovalStore>(s: S) {
    let a = created(&s, "fp", 1).await;
    s.decide(&a.id, vote("bob", Verdict::Reject, T0)).await.unwrap();
    let later = T0.plus(REJECT - Duration::from_secs(1));
    assert!(matches!(s.open(open_req("fp", 1, later)).await.unwrap(), Opened::RecentlyRejected(ref x) if x.id == a.id));
    assert!(matches!(s.open(open_req("fp", 1, T0.plus(REJECT))).await.unwrap(), Opened::Created(_)));
}

async fn finish_and_escalate<S: ApprovalStore>(s: S) {
    let a = created(&s, "fp", 1).await;
    let esc = s.escalate(&a.id, &["finance-leads".into()], T0).await.unwrap().unwrap();
    assert_eq!(esc.escalated_to, ["finance-leads"]);
    assert!(s.escalate(&a.id, &["finance-leads".into()], T0).await.unwrap().is_none(), "escalates once");
    let e = s.finish(&a.id, Finish::Expired, T0).await.unwrap().unwrap();
    assert_eq!(e.status, Status::Expired);
    assert!(s.finish(&a.id, Finish::Abandoned, T0).await.unwrap().is_none());
    assert!(matches!(
        s.decide(&a.id, vote("alice", Verdict::Approve, T0)).await.unwrap(),
        DecideOutcome::AlreadyFinal(_)
    ));
    // After an expiry an identical request starts a new approval.
    assert!(matches!(s.open(open_req("fp", 1, T0)).await.unwrap(), Opened::Created(_)));
}

async fn listing_pages_oldest_first<S: ApprovalStore>(s: S) {
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let mut r = open_req(&format!("fp{i}"), 1, T0);
        r.approval.created_at = Timestamp(T0.0 + 5 - i);
        let Opened::Created(a) = s.open(r).await.unwrap() else { panic!() };
        ids.push(a.id);
    }
    ids.reverse();
    s.decide(&ids[0], vote("alice", Verdict::Approve, T0)).await.unwrap();
    let p = s.list(&ListQuery { status: Some(Status::Pending), after: None, limit: 2 }).await.unwrap();
    assert_eq!(p.approvals.iter().map(|a| a.id.clone()).collect::<Vec<_>>(), ids[1..3]);
    let p2 = s.list(&ListQuery { status: Some(Status::Pending), after: p.next.clone(), limit: 2 }).await.unwrap();
    assert_eq!(p2.approvals.iter().map(|a| a.id.clone()).collect::<Vec<_>>(), ids[3..5]);
    assert!(p2.next.is_none());
    let all = s.list(&ListQuery { status: None, after: None, limit: 1000 }).await.unwrap();
    assert_eq!(all.approvals.len(), 5);
    let counts = s.pending_counts().await.unwrap();
    assert_eq!(counts.get("finance-oncall"), Some(&4));
}

/// Every page of `status`, followed by cursor, `limit` at a time.
async fn listed<S: ApprovalStore>(s: &S, status: Option<Status>, limit: usize) -> Vec<String> {
    let (mut out, mut after) = (Vec::new(), None);
    loop {
        let p = s.list(&ListQuery { status, after, limit }).await.unwrap();
        assert!(p.approvals.len() <= limit);
        out.extend(p.approvals.into_iter().map(|a| a.id));
        match p.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

async fn listing_follows_every_transition<S: ApprovalStore>(s: S) {
    let mut ids = Vec::new();
    for i in 0..7u64 {
        let mut r = open_req(&format!("tr{i}"), if i == 3 { 2 } else { 1 }, T0);
        r.approval.created_at = Timestamp(T0.0 + i);
        let Opened::Created(a) = s.open(r).await.unwrap() else { panic!() };
        ids.push(a.id);
    }
    s.decide(&ids[0], vote("alice", Verdict::Approve, T0)).await.unwrap();
    s.decide(&ids[1], vote("bob", Verdict::Reject, T0)).await.unwrap();
    s.finish(&ids[2], Finish::Expired, T0).await.unwrap();
    // One vote of a quorum of two, and an escalation: both still pending.
    s.decide(&ids[3], vote("alice", Verdict::Approve, T0)).await.unwrap();
    s.escalate(&ids[4], &["exec-oncall".to_string()], T0).await.unwrap();
    s.finish(&ids[5], Finish::Abandoned, T0).await.unwrap();
    for limit in [1, 2, 1000] {
        assert_eq!(
            listed(&s, Some(Status::Pending), limit).await,
            [ids[3].clone(), ids[4].clone(), ids[6].clone()],
            "limit {limit}"
        );
        assert_eq!(listed(&s, None, limit).await, ids, "limit {limit}");
        assert_eq!(listed(&s, Some(Status::Approved), limit).await, [ids[0].clone()]);
        assert_eq!(listed(&s, Some(Status::Rejected), limit).await, [ids[1].clone()]);
        assert_eq!(listed(&s, Some(Status::Expired), limit).await, [ids[2].clone()]);
    }
    // The quorum completes: the approval leaves the pending list.
    s.decide(&ids[3], vote("bob", Verdict::Approve, T0)).await.unwrap();
    assert_eq!(listed(&s, Some(Status::Pending), 1).await, [ids[4].clone(), ids[6].clone()]);
    assert_eq!(listed(&s, Some(Status::Approved), 1).await, [ids[0].clone(), ids[3].clone()]);
    // A cursor of a page still works after the approval it names was decided.
    let p = s.list(&ListQuery { status: Some(Status::Pending), after: None, limit: 1 }).await.unwrap();
    s.decide(&ids[4], vote("alice", Verdict::Approve, T0)).await.unwrap();
    let rest = s.list(&ListQuery { status: Some(Status::Pending), after: p.next, limit: 10 }).await.unwrap();
    assert_eq!(rest.approvals.iter().map(|a| &a.id).collect::<Vec<_>>(), [&ids[6]]);
    let counts = s.pending_counts().await.unwrap();
    assert_eq!(counts.values().sum::<u64>(), 1, "{counts:?}");
}

async fn ask_reuse_returns_decided<S: ApprovalStore>(s: S) {
    let ask = |now| OpenRequest {
        fingerprint: "ask".into(),
        approval: approval("ask", 1),
        request: None,
        reuse: Reuse::Ask { grant_ttl: TTL },
        now,
    };
    let Opened::Created(a) = s.open(ask(T0)).await.unwrap() else { panic!() };
    s.decide(&a.id, vote("bob", Verdict::Reject, T0)).await.unwrap();
    assert!(
        matches!(s.open(ask(T0)).await.unwrap(), Opened::Attached(ref x) if x.id == a.id && x.status == Status::Rejected)
    );
    assert!(matches!(s.open(ask(T0.plus(TTL))).await.unwrap(), Opened::Created(_)));
}

async fn concurrent_votes_have_one_winner<S: ApprovalStore>(s: Arc<S>) {
    for round in 0..50 {
        let a = created(&*s, &format!("race{round}"), 1).await;
        let mut tasks = Vec::new();
        for (i, v) in [Verdict::Approve, Verdict::Reject, Verdict::Approve, Verdict::Reject].into_iter().enumerate() {
            let s = s.clone();
            let id = a.id.clone();
            tasks.push(tokio::spawn(async move { s.decide(&id, vote(&format!("p{i}"), v, T0)).await.unwrap() }));
        }
        let mut winners = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), DecideOutcome::Decided(_)) {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}");
        let mut grants = Vec::new();
        for _ in 0..4 {
            let s = s.clone();
            let id = a.id.clone();
            grants.push(tokio::spawn(async move { s.claim_grant(&id, TTL, T0).await.unwrap() }));
        }
        let mut granted = 0;
        for g in grants {
            if matches!(g.await.unwrap(), Claim::Granted(..)) {
                granted += 1;
            }
        }
        let approved = s.get(&a.id).await.unwrap().unwrap().status == Status::Approved;
        assert_eq!(granted, usize::from(approved), "round {round}");
    }
}

async fn waiters_are_woken<S: ApprovalStore>(s: Arc<S>) {
    let a = created(&*s, "fp", 1).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let s2 = s.clone();
    let id = a.id.clone();
    let waiter = tokio::spawn(async move {
        let w = s2.waiters().register(&id);
        let n = w.notify().notified();
        tokio::pin!(n);
        n.as_mut().enable();
        let _ = tx.send(());
        loop {
            if s2.get(&id).await.unwrap().unwrap().status != Status::Pending {
                return;
            }
            n.as_mut().await;
            n.set(w.notify().notified());
            n.as_mut().enable();
        }
    });
    rx.await.unwrap();
    s.decide(&a.id, vote("alice", Verdict::Approve, T0)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").unwrap();
    assert!(s.waiters().is_empty(), "registrations are dropped");
}

async fn shutdown_and_purge<S: ApprovalStore>(s: S) {
    let a = created(&s, "fp", 1).await;
    let b = created(&s, "fp2", 1).await;
    s.decide(&b.id, vote("alice", Verdict::Approve, T0)).await.unwrap();
    s.shutdown(T0).await.unwrap();
    let a = s.get(&a.id).await.unwrap().unwrap();
    // Memory stores interrupt pending approvals; shared stores leave them pending.
    assert!(matches!(a.status, Status::Interrupted | Status::Pending), "{:?}", a.status);
    let still_pending = a.status == Status::Pending;
    assert_eq!(listed(&s, Some(Status::Pending), 10).await.len(), usize::from(still_pending));
    let n = s.purge(T0.plus(Duration::from_secs(86_400)), Duration::from_secs(3600)).await.unwrap();
    assert!(n >= 1);
    assert!(s.get(&b.id).await.unwrap().is_none());
    // A purged approval is gone from every listing.
    assert!(!listed(&s, None, 10).await.contains(&b.id));
    assert!(listed(&s, Some(Status::Approved), 10).await.is_empty());
}
