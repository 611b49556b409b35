"""The invariant checker finds each violation it is meant to find.

No process runs here: every test writes a small, consistent run (receipts, audit
chains, agents' and approver's views), checks that it is clean, then breaks it in
one way and checks that exactly that invariant reports it.

    .venv/bin/python -m pytest tests/soak -q
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import invariants  # noqa: E402

T = 1_800_000_000.0  # the run's clock, unix seconds


def ts(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sha(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


class Run:
    """A tiny soak run: two replicas, one allowed GET, one approved refund, one denied call."""

    def __init__(self):
        self.chains: dict[str, list[dict]] = {}
        self.chain_replica: dict[str, str] = {}
        self.receipts: list[dict] = []
        self.agents: list[dict] = []
        self.approver: list[dict] = []
        self.kills: list[dict] = []
        self.outages: list[dict] = []
        self.verify_codes: dict[str, int] = {"A": 0, "B": 0}

    # building blocks -----------------------------------------------------------------
    def chain(self, cid: str, replica: str, t: float) -> str:
        self.chains[cid] = []
        self.chain_replica[cid] = replica
        self.rec(cid, t, "genesis", replica=replica)
        return cid

    def rec(self, cid: str, t: float, kind: str, **fields) -> dict:
        r = {"v": 1, "chain": cid, "seq": len(self.chains[cid]), "ts": ts(t), "kind": kind,
             "prev": "x", "hash": "y", **fields}
        self.chains[cid].append(r)
        return r

    def receipt(self, t: float, method: str, path: str, body: str, marker: str) -> int:
        rid = len(self.receipts) + 1
        self.receipts.append({"rid": rid, "t": t, "method": method, "path": path, "body": body,
                              "sha256": sha(body), "marker": marker, "mode": "normal", "answer": "ok"})
        return rid

    def agent(self, cls: str, marker: str, status: int | None, receipt: int | None = None, **kw) -> None:
        self.agents.append({"agent": "bot1", "cls": cls, "marker": marker, "attempt": 1, "replica": "A",
                            "status": status, "receipt": receipt, **kw})

    def allowed(self, cid: str, t: float, marker: str, rid_: str, forwarded: bool = True) -> int:
        target = f"GET /echo/items/{marker}"
        self.rec(cid, t, "decision", target=target, body_sha256=sha(""), request_id=rid_, decision="allow",
                 entrance="http", agent="bot1")
        rid = self.receipt(t + 0.01, "GET", f"/items/{marker}", "", marker)
        if forwarded:
            self.rec(cid, t + 0.02, "forwarded", target=target, body_sha256=sha(""), request_id=rid_,
                     outcome="ok", status=200, entrance="http")
        return rid

    def held(self, cid: str, t: float, marker: str, aid: str, rid_: str, decide_in: str | None = None,
             status: str = "approved", grant: bool = True, forwarded: bool = True) -> int | None:
        body = f"marker={marker}&amount=100"
        subj = {"target": "POST /echo/refund", "body_sha256": sha(body), "entrance": "http", "agent": "bot1"}
        self.rec(cid, t, "decision", **subj, request_id=rid_, decision="require_approval", approval_id=aid)
        self.rec(cid, t, "approval_requested", **subj, approval_id=aid)
        self.rec(decide_in or cid, t + 1, "approval_decided", **subj, approval_id=aid, status=status,
                 verdict="approve" if status == "approved" else "reject", decided_by="alice")
        self.approver.append({"approval_id": aid, "decision": "approve" if status == "approved" else "reject",
                              "replica": "B", "status_code": 200, "t": t + 1})
        if not grant:
            return None
        self.rec(cid, t + 2, "grant_used", **subj, request_id=rid_ + "r", approval_id=aid)
        rid = self.receipt(t + 2.01, "POST", "/refund", body, marker)
        if forwarded:
            self.rec(cid, t + 2.02, "forwarded", **subj, request_id=rid_ + "r", approval_id=aid, outcome="ok",
                     status=200)
        return rid

    def shutdown(self, cid: str, t: float) -> None:
        self.rec(cid, t, "shutdown", reason="sigterm", interrupted=[])

    # the checker --------------------------------------------------------------------
    def check(self, tmp: Path) -> invariants.Report:
        dirs = {"A": tmp / "audit-A", "B": tmp / "audit-B"}
        for d in dirs.values():
            d.mkdir(exist_ok=True)
            for f in d.glob("*.jsonl"):
                f.unlink()
        for cid, recs in self.chains.items():
            path = dirs[self.chain_replica[cid]] / f"{cid}-{0:020}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in recs))

        def verify(d: Path) -> tuple[int, str]:
            n = sum(len(r) for c, r in self.chains.items() if self.chain_replica[c] == d.name[-1])
            code = self.verify_codes[d.name[-1]]
            return code, (f"verified {n} records in 2 chains" if code == 0 else "TAMPERED seq 3\nFAILED: 1 finding(s)")

        return invariants.check(receipts=self.receipts, audit_dirs=dirs, agents=self.agents,
                                approver=self.approver, kills=self.kills, verify=verify,
                                disk_outages=self.outages)


def clean_run() -> Run:
    run = Run()
    a = run.chain("chainA1", "A", T)
    b = run.chain("chainB1", "B", T)
    r1 = run.allowed(a, T + 1, "m-allow", "req_1")
    run.agent("allowed", "m-allow", 200, r1)
    r2 = run.held(a, T + 2, "m-held", "apr_1", "req_2", decide_in=b)
    run.agent("held", "m-held", 409, etype="approval_pending")
    run.agent("held", "m-held", 200, r2)
    run.rec(b, T + 3, "decision", target="POST /echo/admin/m-deny", body_sha256=sha("marker=m-deny"),
            request_id="req_3", decision="deny", entrance="http")
    run.agent("denied", "m-deny", 403, etype="policy_denied")
    run.shutdown(a, T + 10)
    run.shutdown(b, T + 10)
    return run


def violations(rep: invariants.Report) -> dict[int, int]:
    return dict(rep.by_check())


def test_a_clean_run_has_no_violation(tmp_path):
    rep = clean_run().check(tmp_path)
    assert rep.ok, [str(v) for v in rep.violations]
    assert rep.verified["A"]["records"] == 8 and rep.verified["B"]["records"] == 4
    assert rep.crash_cut == []


# 1: authorized ------------------------------------------------------------------------

def test_a_receipt_without_any_decision_is_found(tmp_path):
    run = clean_run()
    run.receipt(T + 5, "GET", "/items/ghost", "", "ghost")
    rep = run.check(tmp_path)
    assert violations(rep) == {1: 1}
    assert "GET /echo/items/ghost" in str(rep.violations[0])


def test_a_grant_used_for_a_rejected_approval_is_found(tmp_path):
    run = clean_run()
    run.held("chainA1", T + 4, "m-rej", "apr_2", "req_4", status="rejected")
    rep = run.check(tmp_path)
    assert violations(rep) == {1: 1}
    assert "apr_2" in str(rep.violations[0]) and "rejected" in str(rep.violations[0])


def test_a_grant_used_without_a_decision_record_is_found(tmp_path):
    run = clean_run()
    run.held("chainA1", T + 4, "m-nodec", "apr_3", "req_5")
    ch = run.chains["chainA1"]
    ch[:] = [r for r in ch if not (r["kind"] == "approval_decided" and r["approval_id"] == "apr_3")]
    run.approver = [d for d in run.approver if d["approval_id"] != "apr_3"]
    rep = run.check(tmp_path)
    assert violations(rep) == {1: 1}
    assert "no approval_decided record" in str(rep.violations[0])


def test_a_deny_decision_does_not_authorize(tmp_path):
    run = clean_run()
    # The receipt of a GET whose only record is a deny.
    run.rec("chainB1", T + 5, "decision", target="GET /echo/items/m-x", body_sha256=sha(""),
            request_id="req_9", decision="deny", entrance="http")
    run.receipt(T + 5.1, "GET", "/items/m-x", "", "m-x")
    assert violations(run.check(tmp_path)) == {1: 1}


# 2: once ------------------------------------------------------------------------------

def test_an_approval_forwarded_twice_is_found(tmp_path):
    run = clean_run()
    body = "marker=m-held&amount=100"
    run.receipt(T + 6, "POST", "/refund", body, "m-held")
    rep = run.check(tmp_path)
    assert violations(rep) == {2: 1}
    assert "reached the upstream 2x" in str(rep.violations[0])


def test_two_grant_used_records_across_replicas_are_found(tmp_path):
    run = clean_run()
    g = next(r for r in run.chains["chainA1"] if r["kind"] == "grant_used")
    run.rec("chainB1", T + 5, "grant_used", **{k: v for k, v in g.items()
                                               if k not in ("v", "chain", "seq", "ts", "kind", "prev", "hash")})
    rep = run.check(tmp_path)
    assert 2 in violations(rep)
    assert any("2 grant_used records" in str(v) for v in rep.violations)


def test_an_approval_decided_both_ways_is_found(tmp_path):
    run = clean_run()
    d = next(r for r in run.chains["chainB1"] if r["kind"] == "approval_decided")
    fields = {k: v for k, v in d.items() if k not in ("v", "chain", "seq", "ts", "kind", "prev", "hash")}
    run.rec("chainA1", T + 5, "approval_decided", **{**fields, "status": "rejected", "verdict": "reject"})
    rep = run.check(tmp_path)
    assert violations(rep) == {2: 1}
    assert "decided both ways" in str(rep.violations[0])


# 3: recorded --------------------------------------------------------------------------

def test_a_receipt_without_a_forwarded_record_is_found(tmp_path):
    run = clean_run()
    run.allowed("chainA1", T + 5, "m-nofwd", "req_6", forwarded=False)
    rep = run.check(tmp_path)
    assert violations(rep) == {3: 1}
    assert "no kill explains it" in str(rep.violations[0])


def test_a_forward_cut_by_a_kill_is_counted_not_reported(tmp_path):
    run = clean_run()
    k = run.chain("chainA0", "A", T - 100)
    run.allowed(k, T - 50, "m-cut", "req_7", forwarded=False)
    run.held(k, T - 40, "m-cut2", "apr_4", "req_8", forwarded=False)
    run.receipts[-2]["t"], run.receipts[-2]["delay"] = T - 37.8, 2.0  # the GET, answered slowly
    run.kills.append({"replica": "A", "t": T - 37.5})  # 0.5 s after the grant's receipt
    rep = run.check(tmp_path)
    assert rep.ok, [str(v) for v in rep.violations]
    assert sorted(c["target"] for c in rep.crash_cut) == ["GET /echo/items/m-cut", "POST /echo/refund"]


def test_a_kill_long_after_the_answer_does_not_excuse_a_missing_record(tmp_path):
    run = clean_run()
    k = run.chain("chainA0", "A", T - 100)
    run.allowed(k, T - 50, "m-old", "req_7", forwarded=False)  # answered at once, 10 s before the kill
    run.kills.append({"replica": "A", "t": T - 40})
    assert violations(run.check(tmp_path)) == {3: 1}


def test_a_record_pending_for_a_full_disk_is_lost_only_to_a_kill_during_the_outage(tmp_path):
    run = clean_run()
    k = run.chain("chainA0", "A", T - 100)
    run.allowed(k, T - 50, "m-disk", "req_7", forwarded=False)  # answered at once, disk full since T - 55
    run.outages.append({"replica": "A", "start": T - 55, "end": T - 35})
    run.kills.append({"replica": "A", "t": T - 40})  # killed before the disk was freed
    rep = run.check(tmp_path)
    assert rep.ok, [str(v) for v in rep.violations]
    assert [c["target"] for c in rep.crash_cut] == ["GET /echo/items/m-disk"]
    # Killed after the disk was freed: the record had its chance to be written.
    run.outages[-1]["end"] = T - 45
    assert violations(run.check(tmp_path)) == {3: 1}


def test_disk_outages_are_read_from_the_fault_notes():
    faults = [{"kind": "disk_full", "t": 10, "replicas": ["A", "B"]}, {"kind": "disk_freed", "t": 15,
              "replicas": ["A", "B"]}, {"kind": "disk_full", "t": 20, "replicas": ["B"]}]
    assert invariants.disk_outages(faults) == [
        {"replica": "A", "start": 10.0, "end": 15.0}, {"replica": "B", "start": 10.0, "end": 15.0},
        {"replica": "B", "start": 20.0, "end": float("inf")}]


def test_a_kill_does_not_excuse_a_receipt_after_it(tmp_path):
    run = clean_run()
    k = run.chain("chainA0", "A", T - 100)
    run.allowed(k, T - 50, "m-late", "req_7", forwarded=False)
    run.receipts[-1]["t"] = T - 30  # received 10 s after the process died
    run.kills.append({"replica": "A", "t": T - 40})
    assert violations(run.check(tmp_path)) == {3: 1}


def test_a_kill_does_not_excuse_a_chain_that_shut_down_cleanly(tmp_path):
    run = clean_run()
    run.allowed("chainA1", T + 5, "m-lost", "req_6", forwarded=False)
    run.kills.append({"replica": "A", "t": T + 5.5})  # a kill, but chainA1 has its shutdown record
    assert violations(run.check(tmp_path)) == {3: 1}


def test_a_forwarded_ok_record_the_upstream_never_saw_is_found(tmp_path):
    run = clean_run()
    target = "GET /echo/items/m-phantom"
    run.rec("chainA1", T + 5, "decision", target=target, body_sha256=sha(""), request_id="req_p",
            decision="allow", entrance="http")
    run.rec("chainA1", T + 5, "forwarded", target=target, body_sha256=sha(""), request_id="req_p",
            outcome="ok", status=200, entrance="http")
    rep = run.check(tmp_path)
    assert violations(rep) == {3: 1}
    assert "outcome ok but 0 receipts" in str(rep.violations[0])


# 4: chains ----------------------------------------------------------------------------

def test_a_chain_that_does_not_verify_is_found(tmp_path):
    run = clean_run()
    run.verify_codes["B"] = 1
    rep = run.check(tmp_path)
    assert violations(rep) == {4: 1}
    assert "exited 1" in str(rep.violations[0])


# 5: denied ----------------------------------------------------------------------------

def test_a_denied_request_at_the_upstream_is_found(tmp_path):
    run = clean_run()
    run.receipt(T + 5, "POST", "/admin/m-deny", "marker=m-deny", "m-deny")
    rep = run.check(tmp_path)
    assert 5 in violations(rep)
    assert any("denied request POST /admin/m-deny" in str(v) for v in rep.violations)


# 6: agents ----------------------------------------------------------------------------

def test_a_2xx_without_a_receipt_is_found(tmp_path):
    run = clean_run()
    run.agent("held", "m-held", 200, None)
    rep = run.check(tmp_path)
    assert violations(rep) == {6: 1}
    assert "without an upstream receipt" in str(rep.violations[0])


def test_one_receipt_answering_two_agents_is_found(tmp_path):
    run = clean_run()
    run.agent("held", "m-held", 200, run.agents[2]["receipt"])
    rep = run.check(tmp_path)
    assert violations(rep) == {6: 1}
    assert "answered two agent calls" in str(rep.violations[0])


def test_a_receipt_with_another_marker_is_found(tmp_path):
    run = clean_run()
    run.agents[0]["marker"] = "someone-else"
    assert violations(run.check(tmp_path)) == {6: 1}


def test_an_unknown_receipt_is_found(tmp_path):
    run = clean_run()
    run.agent("allowed", "m-allow", 200, 999)
    assert violations(run.check(tmp_path)) == {6: 1}


# 7: decisions -------------------------------------------------------------------------

def test_a_confirmed_decision_without_its_record_is_found(tmp_path):
    run = clean_run()
    run.approver.append({"approval_id": "apr_9", "decision": "reject", "replica": "A", "status_code": 200,
                         "t": T + 7})
    rep = run.check(tmp_path)
    assert violations(rep) == {7: 1}
    assert "apr_9" in str(rep.violations[0])


def test_refused_decisions_need_no_record(tmp_path):
    run = clean_run()
    run.approver.append({"approval_id": "apr_9", "decision": "approve", "replica": "A", "status_code": 409,
                         "t": T + 7})
    assert run.check(tmp_path).ok


# the helpers ----------------------------------------------------------------------------

@pytest.mark.parametrize("out,n", [
    ("verified 12 records through seq 11, anchored through checkpoint 10\n", 12),
    ("chain a (1 files): verified 3 records through seq 2, x\nchain b (2 files): verified 4 records "
     "through seq 3, y\nverified 7 records in 2 chains\n", 7),
    ("FAILED: 1 finding(s)", None),
])
def test_verified_records_reads_the_cli_output(out, n):
    assert invariants.verified_records(out) == n


def test_a_torn_last_line_is_skipped(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": 2')
    assert invariants.read_jsonl(p) == [{"a": 1}]


def test_the_clean_run_is_not_changed_by_checking(tmp_path):
    run = clean_run()
    before = copy.deepcopy(run.chains)
    run.check(tmp_path)
    assert run.chains == before
