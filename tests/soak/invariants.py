"""The soak's invariant checker.

It compares three independent views of one soak run:

  * the upstream's receipts (`upstream.jsonl`, written by `upstream.py` before it
    answers anything): what really left the proxies;
  * the audit chains of every replica (the `*.jsonl` chain files of each
    `audit.path`, every process's chain): what the proxies say they decided and did;
  * the agents' and the approver's views (`agents.jsonl`, `approver.jsonl`): what
    each HTTP call was answered.

and reports every violation of:

  1. authorized   every receipt has an `allow` decision record, or a `grant_used`
                  record of an approval whose `approval_decided` record says
                  `approved`;
  2. once         no approval has two `grant_used` (or two `forwarded`) records
                  across the replicas, no approval is decided both ways, and no
                  request reached the upstream more often than it was authorized;
  3. recorded     every receipt has a `forwarded` record, except a forward cut by
                  a crash (see CRASH-CUT below), counted separately;
  4. chains       `approvalplane audit verify <dir>` exits 0 for every replica;
  5. denied       no request the rules deny (path `/admin/...`, or a marker the
                  agents sent as a denied request) reached the upstream;
  6. agents       every response an agent got with an upstream receipt id names a
                  receipt that exists, carries the agent's marker and is claimed by
                  no other response; every 2xx from a proxy route carries one
                  (INTERFACE.md: a 2xx always means the request was forwarded);
                  denied requests never got a 2xx;
  7. decisions    every decision the admin API confirmed (200) has its
                  `approval_decided` record.

CRASH-CUT. The proxy writes the authorizing record before any byte goes upstream:
an allowed request's `decision` record with `write` (it survives a process kill),
an approved one's `grant_used` record with `fdatasync`. The `forwarded` record can
only be written after the upstream answered. A replica SIGKILLed between the two
therefore leaves a receipt with an authorizing record and no `forwarded` record,
and no lie in the log: the chain simply ends there without a `shutdown` record.
A receipt is accepted as crash-cut only when all of this holds:
  * its authorizing record has no `forwarded` record (matched by chain and request
    id), and is not used by another receipt;
  * that record's chain ended without a `shutdown` record, and the soak SIGKILLed
    that replica after the chain started;
  * the upstream logged the receipt no later than the kill (plus `slack` seconds),
    and no earlier than the authorizing record (minus `slack` seconds);
  * the upstream's answer was due no more than `slack` seconds before the kill
    (receipt time plus the delay it was served with): a forward answered well
    before the kill had time to be recorded, and its missing record is a violation.
  * or, instead of the last point: the upstream answered while that replica's
    audit disk was full, and the kill came before the disk was freed. The proxy
    keeps such a `forwarded` record in memory and writes it once the log takes
    it again; a kill during the outage loses it with the process. The
    authorizing record, written before the forward, is still in the chain.
Any other receipt without a `forwarded` record is a violation.

Run it on the artifacts of a kept soak run:   python invariants.py WORKDIR
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

CHECKS = {
    1: "authorized: every receipt has an allow decision or a used, approved approval",
    2: "once: no approval forwarded or decided twice",
    3: "recorded: every receipt has a forwarded record (crash-cut counted apart)",
    4: "chains: audit verify exits 0 for every replica",
    5: "denied: no denied request reached the upstream",
    6: "agents: every forwarded response matches exactly one receipt",
    7: "decisions: every confirmed decision is recorded",
}

Verify = Callable[[Path], "tuple[int, str]"]


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of a file (a torn last line is skipped)."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            out.append(json.loads(line))
    return out


@dataclass
class Chain:
    id: str
    replica: str  # the soak's name for the replica (its audit dir)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def start(self) -> float:
        return parse_ts(self.records[0]["ts"]) if self.records else 0.0

    @property
    def end(self) -> float:
        return parse_ts(self.records[-1]["ts"]) if self.records else 0.0

    @property
    def clean(self) -> bool:
        """Ended by a shutdown record (a SIGKILLed process never writes one)."""
        return any(r.get("kind") == "shutdown" for r in self.records)


def load_chains(audit_dirs: dict[str, Path]) -> list[Chain]:
    chains: dict[str, Chain] = {}
    for replica, d in sorted(audit_dirs.items()):
        for f in sorted(Path(d).glob("*.jsonl")):
            for rec in read_jsonl(f):
                c = chains.setdefault(rec["chain"], Chain(rec["chain"], replica))
                c.records.append(rec)
    for c in chains.values():
        c.records.sort(key=lambda r: r["seq"])
    return sorted(chains.values(), key=lambda c: (c.replica, c.start))


@dataclass
class Violation:
    check: int
    what: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.what}"


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    crash_cut: list[dict[str, Any]] = field(default_factory=list)
    verified: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def add(self, check: int, what: str) -> None:
        self.violations.append(Violation(check, what))

    def by_check(self) -> Counter:
        return Counter(v.check for v in self.violations)

    @property
    def ok(self) -> bool:
        return not self.violations


def run_verify(binary: Path) -> Verify:
    def verify(d: Path) -> tuple[int, str]:
        cp = subprocess.run([str(binary), "audit", "verify", str(d)], capture_output=True, text=True, timeout=300)
        return cp.returncode, cp.stdout + cp.stderr
    return verify


def verified_records(output: str) -> int | None:
    """The record count `audit verify` printed (one chain, or several)."""
    m = re.search(r"verified (\d+) records in (\d+) chains", output)
    if m:
        return int(m.group(1))
    counts = [int(x) for x in re.findall(r"verified (\d+) records through", output)]
    return sum(counts) if counts else None


def check(*, receipts: list[dict[str, Any]], audit_dirs: dict[str, Path], agents: list[dict[str, Any]],
          approver: list[dict[str, Any]], kills: list[dict[str, Any]], verify: Verify | None,
          upstream: str = "echo", deny_prefixes: Iterable[str] = ("/admin/",), slack: float = 1.0,
          disk_outages: Iterable[dict[str, Any]] = ()) -> Report:
    """Checks one run. `kills`: [{"replica": name, "t": unix seconds}] for every SIGKILL;
    `disk_outages`: [{"replica": name, "start": t, "end": t}] for every full audit disk."""
    rep = Report()
    chains = load_chains(audit_dirs)
    records = [(c, r) for c in chains for r in c.records]

    def target_of(rcpt: dict[str, Any]) -> str:
        return f"{rcpt['method']} /{upstream}{rcpt['path'].split('?', 1)[0]}"

    def key_of_record(r: dict[str, Any]) -> tuple[str, str]:
        return (r.get("target") or "", r.get("body_sha256") or "")

    # --- what the audit says ------------------------------------------------------
    decided: dict[str, list[dict[str, Any]]] = defaultdict(list)  # approval id -> deciding records
    requested: set[str] = set()
    allows: dict[tuple[str, str], list[tuple[Chain, dict]]] = defaultdict(list)
    grants: dict[tuple[str, str], list[tuple[Chain, dict]]] = defaultdict(list)
    grants_by_approval: dict[str, list[tuple[Chain, dict]]] = defaultdict(list)
    forwarded: dict[tuple[str, str], dict[str, Any]] = {}  # (chain, request id) -> record
    fwd_by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    fwd_by_approval: dict[str, list[dict[str, Any]]] = defaultdict(list)
    kinds: Counter = Counter()
    for c, r in records:
        k = r.get("kind")
        kinds[k] += 1
        if k == "approval_requested":
            requested.add(r["approval_id"])
        elif k == "approval_decided" and r.get("status") in ("approved", "rejected"):
            decided[r["approval_id"]].append(r)
        elif k == "decision" and r.get("decision") == "allow" and r.get("entrance") == "http":
            allows[key_of_record(r)].append((c, r))
        elif k == "grant_used":
            grants[key_of_record(r)].append((c, r))
            grants_by_approval[r["approval_id"]].append((c, r))
        elif k == "forwarded":
            if (c.id, r["request_id"]) in forwarded:
                rep.add(2, f"request {r['request_id']} has two forwarded records in chain {c.id}")
            forwarded[(c.id, r["request_id"])] = r
            fwd_by_key[key_of_record(r)].append(r)
            if r.get("approval_id"):
                fwd_by_approval[r["approval_id"]].append(r)
    approved = {a for a, recs in decided.items() if any(x["status"] == "approved" for x in recs)}
    rep.stats["audit_kinds"] = dict(kinds)
    rep.stats["chains"] = [{"replica": c.replica, "chain": c.id, "records": len(c.records), "clean": c.clean}
                           for c in chains]

    # --- 2: once ------------------------------------------------------------------
    for aid, gl in grants_by_approval.items():
        if len(gl) > 1:
            where = ", ".join(f"{c.replica}/{c.id}#{r['seq']}" for c, r in gl)
            rep.add(2, f"approval {aid} has {len(gl)} grant_used records ({where})")
    for aid, fl in fwd_by_approval.items():
        if len(fl) > 1:
            rep.add(2, f"approval {aid} has {len(fl)} forwarded records")
    for aid, recs in decided.items():
        statuses = {x["status"] for x in recs}
        if len(statuses) > 1:
            rep.add(2, f"approval {aid} was decided both ways: {sorted(statuses)}")

    # --- 1: authorized --------------------------------------------------------------
    for aid, gl in grants_by_approval.items():
        if aid not in approved:
            st = sorted({x["status"] for x in decided.get(aid, [])}) or ["no approval_decided record"]
            rep.add(1, f"approval {aid} was used (grant_used {gl[0][0].replica}/{gl[0][0].id}#{gl[0][1]['seq']}) "
                       f"but is not recorded as approved: {', '.join(st)}")
        if aid not in requested:
            rep.add(1, f"approval {aid} was used but its approval_requested record is missing")

    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rc in receipts:
        by_key[(target_of(rc), rc["sha256"])].append(rc)

    kill_times: dict[str, list[float]] = defaultdict(list)
    for k in kills:
        kill_times[k["replica"]].append(float(k["t"]))

    outages: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for o in disk_outages:
        outages[o["replica"]].append((float(o["start"]), float(o["end"])))

    def lost_in_outage(replica: str, answered: float, kt: float) -> bool:
        """The answer came while the replica's audit disk was full, and the kill
        before it was freed: the pending `forwarded` record died with the process."""
        return any(start - slack <= answered <= kt <= end + slack for start, end in outages.get(replica, []))

    def kill_of(c: Chain) -> float | None:
        """When the soak SIGKILLed the process that wrote chain `c` (None: it was not)."""
        if c.clean:
            return None
        after = [t for t in kill_times.get(c.replica, []) if t >= c.start]
        return min(after) if after else None

    for key, rl in sorted(by_key.items()):
        target, sha = key
        al = allows.get(key, [])
        # Every grant_used counts here; one of an approval not recorded as approved is
        # reported once, above, by its approval id.
        gl = grants.get(key, [])
        used_approvals = {r["approval_id"] for _, r in gl}
        authorized = len(al) + len(used_approvals)
        if len(rl) > authorized:
            ids = ", ".join(str(x["rid"]) for x in rl)
            if authorized == 0:
                rep.add(1, f"{target} (body {sha[:12]}) reached the upstream {len(rl)}x (receipts {ids}) "
                           f"with no allow decision and no used approval")
            else:
                # More receipts than authorizations: something went out twice.
                rep.add(2, f"{target} (body {sha[:12]}) reached the upstream {len(rl)}x (receipts {ids}) "
                           f"but was authorized {authorized}x ({len(al)} allow, {len(used_approvals)} approvals)")

        # --- 3: recorded ---------------------------------------------------------
        auths = al + gl
        closed = [(c, r) for c, r in auths if (c.id, r["request_id"]) in forwarded
                  and forwarded[(c.id, r["request_id"])].get("outcome") != "connect_failed"]
        open_ = [(c, r) for c, r in auths if (c.id, r["request_id"]) not in forwarded]
        # Receipts beyond the closed authorizations must each be a crash-cut forward.
        # (Receipts beyond the authorizations are reported above, under 1 or 2.)
        needed = max(0, min(len(rl), authorized) - len(closed))
        if needed:
            pool = [(c, r, kill_of(c)) for c, r in open_]
            pool = [(c, r, kt) for c, r, kt in pool if kt is not None]
            matched, left = [], []
            for rc in sorted(rl, key=lambda x: x["t"]):
                fit = [i for i, (c, r, kt) in enumerate(pool)
                       if parse_ts(r["ts"]) - slack <= rc["t"] <= kt + slack
                       and (rc["t"] + rc.get("delay", 0.0) >= kt - slack
                            or lost_in_outage(c.replica, rc["t"] + rc.get("delay", 0.0), kt))]
                if fit:
                    c, r, kt = pool.pop(min(fit, key=lambda i: pool[i][2]))
                    matched.append((rc, c, r, kt))
                else:
                    left.append(rc)
            for rc, c, r, kt in matched[:needed]:
                rep.crash_cut.append({"rid": rc["rid"], "target": target, "replica": c.replica, "chain": c.id,
                                      "record": f"{r['kind']} #{r['seq']}", "request_id": r["request_id"],
                                      "receipt_t": rc["t"], "kill_t": kt})
            if len(matched) < needed:
                why = "no kill explains it" if open_ else "no authorizing record is left open"
                for rc in left[:needed - len(matched)]:
                    rep.add(3, f"receipt {rc['rid']} ({target}, body {sha[:12]}) has no forwarded record ({why})")

    for key, fl in sorted(fwd_by_key.items()):
        ok_fwd = [f for f in fl if f.get("outcome") == "ok"]
        n = len(by_key.get(key, []))
        if len(ok_fwd) > n:
            rep.add(3, f"{key[0]} (body {key[1][:12]}): {len(ok_fwd)} forwarded records with outcome ok "
                       f"but {n} receipts")

    # --- 5: denied ----------------------------------------------------------------
    denied_markers = {a["marker"] for a in agents if a.get("cls") == "denied"}
    for rc in receipts:
        path = rc["path"].split("?", 1)[0]
        if any(path.startswith(p) for p in deny_prefixes) or rc.get("marker") in denied_markers:
            rep.add(5, f"receipt {rc['rid']}: denied request {rc['method']} {rc['path']} reached the upstream")

    # --- 6: agents ----------------------------------------------------------------
    by_rid = {rc["rid"]: rc for rc in receipts}
    claimed: dict[int, dict[str, Any]] = {}
    for a in agents:
        st = a.get("status")
        rid = a.get("receipt")
        if st is not None and 200 <= st < 300 and rid is None:
            rep.add(6, f"{a['agent']} got {st} for {a['cls']} {a['marker']} (attempt {a['attempt']}) "
                       f"without an upstream receipt")
        if a.get("cls") == "denied" and st is not None and 200 <= st < 300:
            rep.add(6, f"{a['agent']} got {st} for denied {a['marker']}")
        if rid is None:
            continue
        rc = by_rid.get(int(rid))
        if rc is None:
            rep.add(6, f"{a['agent']} got receipt {rid} for {a['marker']}, which the upstream never logged")
            continue
        if rc.get("marker") != a["marker"]:
            rep.add(6, f"{a['agent']} got receipt {rid} for {a['marker']}, but it carried {rc.get('marker')}")
        if int(rid) in claimed:
            rep.add(6, f"receipt {rid} answered two agent calls: {claimed[int(rid)]['marker']} "
                       f"attempt {claimed[int(rid)]['attempt']} and {a['marker']} attempt {a['attempt']}")
        claimed[int(rid)] = a

    # --- 7: decisions ---------------------------------------------------------------
    for d in approver:
        if d.get("status_code") != 200:
            continue
        want = "approved" if d["decision"] == "approve" else "rejected"
        if not any(x["status"] == want for x in decided.get(d["approval_id"], [])):
            rep.add(7, f"the admin API confirmed {d['decision']} of {d['approval_id']} on {d['replica']} "
                       f"at {d['t']:.3f} but no approval_decided record says {want}")

    # --- 4: chains ------------------------------------------------------------------
    if verify is not None:
        for replica, d in sorted(audit_dirs.items()):
            code, out = verify(Path(d))
            rep.verified[replica] = {"exit": code, "records": verified_records(out), "output": out.strip()}
            if code != 0:
                rep.add(4, f"audit verify {d} exited {code}: {out.strip()[-2000:]}")
    return rep


def load_run(workdir: Path) -> dict[str, Any]:
    """The inputs of `check` from a soak run's directory."""
    meta = json.loads((workdir / "run.json").read_text())
    return {
        "receipts": read_jsonl(workdir / "upstream.jsonl"),
        "audit_dirs": {k: Path(v) for k, v in meta["audit_dirs"].items()},
        "agents": read_jsonl(workdir / "agents.jsonl"),
        "approver": read_jsonl(workdir / "approver.jsonl"),
        "kills": [f for f in meta["faults"] if f["kind"] == "kill"],
        "disk_outages": disk_outages(meta["faults"]),
    }


def disk_outages(faults: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Full-disk windows per replica, from the soak's `disk_full`/`disk_freed` notes
    (a window still open at the end lasts forever)."""
    out: list[dict[str, Any]] = []
    open_: dict[str, float] = {}
    for f in sorted(faults, key=lambda f: float(f["t"])):
        for r in f.get("replicas", []):
            if f["kind"] == "disk_full":
                open_[r] = float(f["t"])
            elif f["kind"] == "disk_freed" and r in open_:
                out.append({"replica": r, "start": open_.pop(r), "end": float(f["t"])})
    out.extend({"replica": r, "start": t, "end": float("inf")} for r, t in open_.items())
    return out


def print_report(rep: Report, out=sys.stdout) -> None:
    counts = rep.by_check()
    print("invariants:", file=out)
    for n, text in CHECKS.items():
        print(f"  {n}. {text:<78} violations: {counts.get(n, 0)}", file=out)
    for v in rep.violations[:200]:
        print(f"  VIOLATION {v}", file=out)
    if len(rep.violations) > 200:
        print(f"  ... and {len(rep.violations) - 200} more", file=out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: invariants.py WORKDIR", file=sys.stderr)
        return 2
    workdir = Path(argv[1])
    meta = json.loads((workdir / "run.json").read_text())
    rep = check(**load_run(workdir), verify=run_verify(Path(meta["binary"])))
    print_report(rep)
    print(f"crash-cut forwards: {len(rep.crash_cut)}; violations: {len(rep.violations)}")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
