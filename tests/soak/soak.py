"""The fault-and-load soak: two replicas on one Redis, a mixed agent load, faults, and
an invariant check at the end. Run it through `tests/soak/run`; see README.md.

Loopback only, every file under one temporary directory, every process it starts
stopped at the end (by its own pid), and it stops by itself after `--duration`
seconds of load plus a bounded drain.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import errno
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import invariants  # noqa: E402

REPO = HERE.parents[1]
AGENTS = ["bot1", "bot2", "bot3", "bot4"]
APPROVERS = ["alice", "bob"]
CLASS_WEIGHTS = {"allowed": 0.50, "denied": 0.15, "held": 0.35}

RULES = """\
package approvalplane

allow contains {"id": "soak.reads", "reason": "reads pass"} if {
	input.kind == "http"
	input.request.method == "GET"
	startswith(input.request.path, "/items/")
}

deny contains {"id": "soak.admin", "reason": "admin calls never pass"} if {
	input.kind == "http"
	startswith(input.request.path, "/admin/")
}

approval contains {"id": "soak.refund", "reason": "refunds need finance", "route": "finance",
	"risk": "high", "action": "refund", "expires_after": "40s",
	"summary": {"marker": input.request.parsed_body.marker}} if {
	input.kind == "http"
	input.request.method == "POST"
	input.request.path == "/refund"
}
"""

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception:  # noqa: BLE001 - keep polling through transient errors
            pass
        time.sleep(interval)
    return None


class Jsonl:
    """A thread-safe JSON-lines file."""

    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.rows: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        with self.lock:
            self.rows.append(row)
            self.f.write(json.dumps(row, sort_keys=True) + "\n")
            self.f.flush()

    def close(self) -> None:
        with self.lock:
            self.f.close()


# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------


class Processes:
    """Every process the soak starts, so that all of them are stopped at the end."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.closed = False

    def start(self, args: list[str], **kw) -> subprocess.Popen:
        with self.lock:
            if self.closed:
                raise RuntimeError("the soak is stopping: no new process")
            p = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
            self.procs.append(p)
            return p

    def stop_all(self) -> None:
        with self.lock:
            self.closed = True
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


class Redis:
    def __init__(self, procs: Processes, workdir: Path):
        self.procs = procs
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        out = open(self.dir / "redis.log", "ab")
        self.proc = self.procs.start(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""], stdout=out, stderr=out)
        if not wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close() or True, 15):
            raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


class Upstream:
    def __init__(self, procs: Processes, workdir: Path, python: str):
        self.port = free_port()
        self.log_path = workdir / "upstream.jsonl"
        out = open(workdir / "upstream.stderr.log", "ab")
        self.proc = procs.start([python, str(HERE / "upstream.py"), "--port", str(self.port),
                                 "--log", str(self.log_path)], stdout=out, stderr=out)
        if not wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close() or True, 15):
            raise RuntimeError("the recording upstream did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mode(self, **mode) -> None:
        r = requests.post(self.url + "/__soak/mode", json=mode, timeout=10)
        r.raise_for_status()


class Replica:
    def __init__(self, name: str, procs: Processes, workdir: Path, binary: Path, env: dict[str, str]):
        self.name = name
        self.procs = procs
        self.binary = binary
        self.env = env
        self.dir = workdir / name
        self.dir.mkdir()
        self.audit_dir = self.dir / "audit"
        self.audit_dir.mkdir()
        self.checkpoints = self.dir / "checkpoints"
        self.listen = f"127.0.0.1:{free_port()}"
        self.control = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.mounted = False

    @property
    def proxy_url(self) -> str:
        return f"http://{self.listen}"

    @property
    def control_url(self) -> str:
        return f"http://{self.control}"

    def mount_tmpfs(self, size_mb: int) -> str | None:
        """The audit dir on its own small tmpfs. Returns why not, when it cannot."""
        cp = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs",
                             str(self.audit_dir)], capture_output=True, text=True)
        if cp.returncode != 0:
            return (cp.stderr or cp.stdout).strip() or f"mount exited {cp.returncode}"
        self.mounted = True
        return None

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.audit_dir)], capture_output=True)
            self.mounted = False

    def write_config(self, upstream: Upstream, redis: Redis, keys: Path) -> Path:
        agents = "".join(f'[[agent]]\nid = "{a}"\ntoken_env = "{a.upper()}_TOKEN"\n\n' for a in AGENTS)
        approvers = "".join(f'[[approver]]\nid = "{a}"\ntoken_env = "{a.upper()}_TOKEN"\n\n' for a in APPROVERS)
        text = f"""\
[server]
listen = "{self.listen}"
control_listen = "{self.control}"
hold_timeout = "10s"
grant_ttl = "2m"
reject_memory = "10s"
shutdown_grace = "5s"

[[upstream]]
name = "echo"
url = "{upstream.url}"
connect_timeout = "2s"
response_timeout = "10s"

{agents}{approvers}[routes.finance]
approvers = ["alice", "bob"]

[policy]
rules = "rules"
default = "deny"

[store]
backend = "redis"
redis_url = "{redis.url}"
key_prefix = "soak:"
hmac_key_env = "STORE_HMAC_KEY"

[audit]
path = "{self.audit_dir}"
fail_mode = "closed"
signing_key_file = "{keys / 'audit.key'}"
checkpoint_copy = "{self.checkpoints}"
rotate_bytes = 1048576
checkpoint_every = 500
checkpoint_interval = "10s"
"""
        (self.dir / "rules").mkdir(exist_ok=True)
        (self.dir / "rules" / "soak.rego").write_text(RULES)
        path = self.dir / "approvalplane.toml"
        path.write_text(text)
        self.config = path
        return path

    def start(self) -> None:
        self.starts += 1
        out = open(self.dir / f"serve-{self.starts}.log", "ab")
        self.proc = self.procs.start([str(self.binary), "serve", "--config", str(self.config)],
                                     cwd=str(self.dir), env=self.env, stdout=out, stderr=out)

    def wait_healthy(self, timeout: float = 60, ready: bool = False) -> bool:
        path = "/readyz" if ready else "/healthz"

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited with {self.proc.returncode}")
            return requests.get(self.control_url + path, timeout=2).status_code == 200
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if up():
                    return True
            except RuntimeError:
                raise
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.1)
        return False

    def kill(self) -> float:
        t = time.time()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        return t

    def stop(self, timeout: float = 30) -> tuple[int | None, bool]:
        """SIGTERM; SIGKILL after `timeout`. Returns (exit code, killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return (self.proc.returncode if self.proc else None), False
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10), True


# ---------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------


def error_type(r: requests.Response) -> str | None:
    try:
        body = r.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("type")
    return None


class Load:
    """Agents (threads with their own tokens) and an approver, through both replicas."""

    def __init__(self, replicas: dict[str, Replica], tokens: dict[str, str], workdir: Path, seed: int,
                 workers_per_agent: int):
        self.replicas = replicas
        self.tokens = tokens
        self.agents_log = Jsonl(workdir / "agents.jsonl")
        self.approver_log = Jsonl(workdir / "approver.jsonl")
        self.stop_new = threading.Event()  # no new logical requests
        self.stop_hard = threading.Event()  # abandon everything
        self.seed = seed
        self.workers_per_agent = workers_per_agent
        self.threads: list[threading.Thread] = []
        self.logical: Counter = Counter()
        self.final: dict[str, Counter] = defaultdict(Counter)
        self.lock = threading.Lock()

    # one HTTP call, recorded ---------------------------------------------------
    def call(self, session: requests.Session, agent: str, cls: str, marker: str, attempt: int, replica: str,
             method: str, path: str, *, data: str | None = None, wait: int | None = None,
             timeout: float = 30) -> tuple[int | None, str | None, requests.Response | None]:
        headers = {"Authorization": f"Bearer {self.tokens[agent]}"}
        if data is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if wait is not None:
            headers["Prefer"] = f"wait={wait}"
        row: dict[str, Any] = {"agent": agent, "cls": cls, "marker": marker, "attempt": attempt,
                               "replica": replica, "t0": time.time()}
        r = None
        try:
            r = session.request(method, self.replicas[replica].proxy_url + path, data=data, headers=headers,
                                timeout=(3, timeout))
            row.update(status=r.status_code, etype=error_type(r) if r.status_code >= 300 else None,
                       request_id=r.headers.get("x-request-id"), receipt=r.headers.get("X-Soak-Receipt"))
            if row["etype"] is not None:
                try:
                    err = r.json()["error"]
                    row["approval_id"] = err.get("approval_id")
                    row["message"] = str(err.get("message", ""))[:300]
                except (ValueError, KeyError, TypeError):
                    pass
            if row["receipt"] is not None:
                row["receipt"] = int(row["receipt"])
        except requests.RequestException as exc:
            row.update(status=None, etype="connection_error", error=type(exc).__name__, receipt=None)
        row["t1"] = time.time()
        self.agents_log.write(row)
        return row["status"], row["etype"], r

    def finish(self, cls: str, outcome: str) -> None:
        with self.lock:
            self.final[cls][outcome] += 1

    @staticmethod
    def outcome(status: int | None, etype: str | None, receipt: Any) -> str:
        if status is None:
            return "connection_error"
        if receipt is not None:
            return f"forwarded_{status}"
        if etype:
            return f"{status}_{etype}"
        return f"{status}"

    # the three classes ---------------------------------------------------------
    def once(self, cls: str, attempts: int, rng: random.Random, sessions, agent: str, marker: str,
             method: str, path: str, data: str | None = None) -> None:
        """A request that is answered at once (allowed or denied): retried on the other
        replica only when nothing answered or the answer was a 503."""
        replica = rng.choice(list(self.replicas))
        for attempt in range(1, attempts + 1):
            status, etype, r = self.call(sessions[replica], agent, cls, marker, attempt, replica,
                                         method, path, data=data, timeout=20)
            receipt = r.headers.get("X-Soak-Receipt") if r is not None else None
            if status is None or status == 503:
                if self.stop_hard.is_set():
                    break
                replica = self.other(replica)
                time.sleep(rng.uniform(0.2, 1.0))
                continue
            self.finish(cls, self.outcome(status, etype, receipt))
            return
        self.finish(cls, "gave_up")

    def allowed(self, rng: random.Random, sessions, agent: str, marker: str) -> None:
        self.once("allowed", 5, rng, sessions, agent, marker, "GET", f"/echo/items/{marker}")

    def denied(self, rng: random.Random, sessions, agent: str, marker: str) -> None:
        self.once("denied", 3, rng, sessions, agent, marker, "POST", f"/echo/admin/{marker}",
                  data=f"marker={marker}")

    def held(self, rng: random.Random, sessions, agent: str, marker: str) -> None:
        """A refund that needs approval; retried like a real agent until it is decided."""
        body = f"marker={marker}&amount={rng.randint(1000, 900000)}"
        replica = rng.choice(list(self.replicas))
        started = time.monotonic()
        attempt = 0
        while not self.stop_hard.is_set() and time.monotonic() - started < 90:
            attempt += 1
            wait = rng.choice([0, 1, 3, 8])
            status, etype, r = self.call(sessions[replica], agent, "held", marker, attempt, replica,
                                         "POST", "/echo/refund", data=body, wait=wait, timeout=wait + 25)
            receipt = r.headers.get("X-Soak-Receipt") if r is not None else None
            if status == 409 and etype == "approval_pending":
                if rng.random() < 0.3:
                    replica = self.other(replica)
                time.sleep(rng.uniform(0.1, 0.8))
                continue
            if status is None or status == 503:
                replica = self.other(replica)
                time.sleep(rng.uniform(0.3, 1.2))
                continue
            self.finish("held", self.outcome(status, etype, receipt))
            return
        self.finish("held", "gave_up")

    def other(self, replica: str) -> str:
        return "B" if replica == "A" else "A"

    def worker(self, agent: str, n: int) -> None:
        rng = random.Random(f"{self.seed}-{agent}-{n}")
        sessions = {name: requests.Session() for name in self.replicas}
        i = 0
        while not self.stop_new.is_set():
            i += 1
            cls = rng.choices(list(CLASS_WEIGHTS), weights=list(CLASS_WEIGHTS.values()))[0]
            marker = f"{agent}-w{n}-{i}-{cls[0]}"
            with self.lock:
                self.logical[cls] += 1
            getattr(self, cls)(rng, sessions, agent, marker)
            time.sleep(rng.uniform(0.01, 0.08))

    # the approver ----------------------------------------------------------------
    def decide(self, replica: str, approver: str, aid: str, decision: str) -> int | None:
        payload = {"decision": decision}
        if decision == "reject":
            payload["reason"] = "soak says no"
        row = {"approval_id": aid, "decision": decision, "replica": replica, "approver": approver,
               "t": time.time()}
        try:
            r = requests.post(f"{self.replicas[replica].control_url}/v1/admin/approvals/{aid}/decision",
                              json=payload, headers={"Authorization": f"Bearer {self.tokens[approver]}"},
                              timeout=15)
            row["status_code"] = r.status_code
            if r.status_code != 200:
                row["etype"] = error_type(r) or r.text[:200]
        except requests.RequestException as exc:
            row["status_code"] = None
            row["etype"] = type(exc).__name__
        row["t1"] = time.time()
        self.approver_log.write(row)
        return row["status_code"]

    def approver(self) -> None:
        rng = random.Random(f"{self.seed}-approver")
        plan: dict[str, tuple[float, str, int]] = {}  # id -> (due, verdict, tries)
        done: set[str] = set()
        pool = cf.ThreadPoolExecutor(4)
        while not self.stop_hard.is_set():
            replica = rng.choice(list(self.replicas))
            try:
                r = requests.get(self.replicas[replica].control_url + "/v1/admin/approvals",
                                 params={"status": "pending"},
                                 headers={"Authorization": f"Bearer {self.tokens['alice']}"}, timeout=10)
                pending = r.json()["approvals"] if r.status_code == 200 else []
            except (requests.RequestException, ValueError, KeyError):
                pending = []
            now = time.monotonic()
            for a in pending:
                if a["id"] not in plan and a["id"] not in done:
                    x = rng.random()
                    verdict = "approve" if x < 0.70 else "reject" if x < 0.95 else "skip"
                    plan[a["id"]] = (now + rng.uniform(0.2, 4.0), verdict, 0)
            for aid, (due, verdict, tries) in list(plan.items()):
                if due > now:
                    continue
                del plan[aid]
                if verdict == "skip":
                    done.add(aid)  # left to expire
                    continue
                target = rng.choice(list(self.replicas))
                if rng.random() < 0.1:
                    # Both replicas at once, as two approvers: exactly one may win.
                    other = "reject" if verdict == "approve" else "approve"
                    f1 = pool.submit(self.decide, "A", "alice", aid, verdict)
                    f2 = pool.submit(self.decide, "B", "bob", aid, other)
                    codes = [f1.result(), f2.result()]
                else:
                    codes = [self.decide(target, rng.choice(APPROVERS), aid, verdict)]
                if any(c in (200, 409, 404) for c in codes):
                    done.add(aid)
                elif tries < 20:
                    plan[aid] = (now + 1.0, verdict, tries + 1)
            time.sleep(0.3)
        pool.shutdown(wait=True)

    def start(self) -> None:
        for agent in AGENTS:
            for n in range(self.workers_per_agent):
                t = threading.Thread(target=self.worker, args=(agent, n), name=f"{agent}-{n}", daemon=True)
                t.start()
                self.threads.append(t)
        self.approver_thread = threading.Thread(target=self.approver, name="approver", daemon=True)
        self.approver_thread.start()

    def drain(self, timeout: float) -> bool:
        """Stops new requests; waits for the ones under way (held ones until decided)."""
        self.stop_new.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        clean = not any(t.is_alive() for t in self.threads)
        self.stop_hard.set()
        for t in self.threads:
            t.join(30)
        self.approver_thread.join(30)
        return clean


# ---------------------------------------------------------------------------
# faults
# ---------------------------------------------------------------------------


class Faults:
    def __init__(self, workdir: Path, replicas: dict[str, Replica], redis: Redis, upstream: Upstream,
                 disk_ok: bool):
        self.replicas = replicas
        self.redis = redis
        self.upstream = upstream
        self.disk_ok = disk_ok
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.workdir = workdir

    def note(self, kind: str, **kw) -> dict[str, Any]:
        ev = {"kind": kind, "t": time.time(), **kw}
        ev["at"] = round(ev["t"] - T0, 1)
        with self.lock:
            self.events.append(ev)
        log(f"fault: {kind} {kw if kw else ''}")
        return ev

    def kill_restart(self, name: str, down: float = 3.0) -> None:
        rep = self.replicas[name]
        t = rep.kill()
        with self.lock:
            self.events.append({"kind": "kill", "replica": name, "t": t, "at": round(t - T0, 1),
                                "signal": "SIGKILL"})
        log(f"fault: SIGKILL replica {name}")
        time.sleep(down)
        rep.start()
        ok = rep.wait_healthy(60)
        self.note("restart", replica=name, healthy=ok)

    def redis_restart(self, down: float = 3.0) -> None:
        self.redis.stop()
        self.note("redis_stopped", signal="SIGTERM")
        time.sleep(down)
        self.redis.start()
        self.note("redis_started")

    def upstream_mode(self, **mode) -> None:
        self.upstream.mode(**mode)
        self.note("upstream_mode", **mode)

    def disk_full(self, names: list[str], seconds: float) -> None:
        if not self.disk_ok:
            self.note("disk_full_skipped", replicas=names, why="no tmpfs for the audit dirs")
            return
        junk = []
        for n in names:
            p = self.replicas[n].audit_dir / "soak-fill.junk"
            with open(p, "wb", buffering=0) as f:
                chunk = b"\0" * (1 << 20)
                while True:
                    try:
                        f.write(chunk)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
            # Smaller pieces, until not even a record fits.
            with open(p, "ab", buffering=0) as f:
                for size in (65536, 4096, 256, 16, 1):
                    while True:
                        try:
                            f.write(b"\0" * size)
                        except OSError:
                            break
            junk.append(p)
        self.note("disk_full", replicas=names, seconds=seconds)
        time.sleep(seconds)
        for p in junk:
            p.unlink()
        self.note("disk_freed", replicas=names)


FAULT_KINDS = ("kill", "redis", "slow", "failing", "disk")


def schedule(duration: float, skip: set[str] = frozenset()) -> list[tuple[float, str, Callable[[Faults], None]]]:
    """When each fault starts, as a fraction of the load's duration (minus the skipped kinds)."""
    plan = [p for p in _schedule(duration) if p[1].split()[0] not in skip]
    return [(at, what.split(" ", 1)[1], fn) for at, what, fn in plan]


def _schedule(duration: float) -> list[tuple[float, str, Callable[[Faults], None]]]:
    d = duration
    slow = max(4.0, 0.10 * d)
    failing = max(4.0, 0.10 * d)
    return [
        (0.10, "kill SIGKILL replica A, restart after 3 s", lambda f: f.kill_restart("A")),
        (0.20, "slow upstream slow (2 s per answer)", lambda f: f.upstream_mode(mode="slow", delay=2.0)),
        (0.20 + slow / d, "slow upstream normal", lambda f: f.upstream_mode(mode="normal")),
        (0.35, "redis restart Redis (SIGTERM, 3 s down)", lambda f: f.redis_restart()),
        (0.43, "failing upstream failing (500s and resets)",
         lambda f: f.upstream_mode(mode="failing", p500=0.5, preset=0.3)),
        (0.43 + failing / d, "failing upstream normal", lambda f: f.upstream_mode(mode="normal")),
        (0.60, "disk audit disk full on A and B for 5 s", lambda f: f.disk_full(["A", "B"], 5.0)),
        (0.68, "slow upstream slow (2 s per answer)", lambda f: f.upstream_mode(mode="slow", delay=2.0)),
        (0.72, "kill SIGKILL replica A while the upstream is slow", lambda f: f.kill_restart("A")),
        (0.68 + slow / d, "slow upstream normal", lambda f: f.upstream_mode(mode="normal")),
        (0.86, "disk audit disk full on B for 4 s", lambda f: f.disk_full(["B"], 4.0)),
    ]


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


def summary_tables(load: Load, receipts: list[dict[str, Any]], faults: list[dict[str, Any]],
                   rep: invariants.Report) -> str:
    lines = []
    attempts = defaultdict(Counter)
    for a in load.agents_log.rows:
        key = "connection_error" if a["status"] is None else (
            f"{a['status']} {a['etype']}" if a.get("etype") else
            ("2xx (forwarded)" if 200 <= a["status"] < 300 else f"{a['status']} relayed from upstream"
             if a.get("receipt") is not None else str(a["status"])))
        attempts[a["cls"]][key] += 1
    lines.append("requests per class (logical requests; then every HTTP attempt by answer):")
    lines.append(f"  {'class':<8} {'sent':>6} {'attempts':>9} {'2xx':>6}  refused / other")
    for cls in CLASS_WEIGHTS:
        c = attempts[cls]
        ok = c.get("2xx (forwarded)", 0)
        rest = ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]) if k != "2xx (forwarded)")
        lines.append(f"  {cls:<8} {load.logical[cls]:>6} {sum(c.values()):>9} {ok:>6}  {rest}")
    lines.append("  final outcome per logical request:")
    for cls in CLASS_WEIGHTS:
        f = load.final[cls]
        lines.append(f"    {cls:<8} " + ", ".join(f"{k}: {v}" for k, v in sorted(f.items(), key=lambda kv: -kv[1])))
    dec = Counter((d["decision"], d.get("status_code")) for d in load.approver_log.rows)
    lines.append("  approver decisions (decision, HTTP status): "
                 + ", ".join(f"{k[0]}/{k[1]}: {v}" for k, v in sorted(dec.items(), key=str)))
    modes = Counter((r["mode"], r["answer"]) for r in receipts)
    lines.append(f"upstream receipts: {len(receipts)} ("
                 + ", ".join(f"{m}/{a}: {v}" for (m, a), v in sorted(modes.items())) + ")")
    resets = sum(1 for r in receipts if r["answer"] == "reset")
    bad_gw = [a for a in load.agents_log.rows if a.get("etype") == "upstream_unreachable"]
    lines.append(f"  502 upstream_unreachable answers: {len(bad_gw)}, of which saying \"not delivered\": "
                 f"{sum(1 for a in bad_gw if 'not delivered' in a.get('message', ''))}; requests the upstream "
                 f"read and logged, then reset: {resets}")
    lines.append("faults injected:")
    for ev in faults:
        extra = {k: v for k, v in ev.items() if k not in ("kind", "t", "at")}
        stamp = time.strftime("%H:%M:%S", time.gmtime(ev["t"])) + f".{int(ev['t'] * 1000) % 1000:03d}Z"
        lines.append(f"  +{ev['at']:6.1f}s  {stamp}  {ev['kind']:<18} {json.dumps(extra) if extra else ''}")
    kinds = rep.stats.get("audit_kinds", {})
    lines.append("audit records by kind: " + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())))
    lines.append("audit chains verified:")
    for name, v in sorted(rep.verified.items()):
        chains = [c for c in rep.stats.get("chains", []) if c["replica"] == name]
        lines.append(f"  replica {name}: audit verify exit {v['exit']}, {v['records']} records verified "
                     f"in {len(chains)} chains ({sum(1 for c in chains if not c['clean'])} ended by SIGKILL)")
    lines.append(f"crash-cut forwards (receipt + authorizing record, replica SIGKILLed before the forwarded "
                 f"record): {len(rep.crash_cut)}")
    for c in rep.crash_cut:
        lines.append(f"  receipt {c['rid']} {c['target']} on {c['replica']} ({c['record']}, {c['request_id']}), "
                     f"received {c['kill_t'] - c['receipt_t']:.2f}s before the kill")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=300, help="seconds of load (default 300)")
    ap.add_argument("--binary", default=str(REPO / "target" / "release" / "approvalplane"))
    ap.add_argument("--workers", type=int, default=3, help="threads per agent (4 agents)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the run directory (kept anyway on violations)")
    ap.add_argument("--workdir", default=None, help="parent of the run directory (default: the system temp dir)")
    ap.add_argument("--tmpfs-mb", type=int, default=64, help="size of each replica's audit tmpfs")
    ap.add_argument("--skip", action="append", default=[], choices=FAULT_KINDS,
                    help="leave out one kind of fault (repeatable), to narrow down a violation")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    binary = Path(args.binary).resolve()
    if not os.access(binary, os.X_OK):
        print(f"soak: no approvalplane binary at {binary}", file=sys.stderr)
        return 2
    if shutil.which("redis-server") is None:
        print("soak: redis-server is not installed (scripts/install-deps installs it)", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="approvalplane-soak-", dir=args.workdir))
    log(f"run directory {workdir}; seed {seed}; load {args.duration:.0f}s; binary {binary}")
    procs = Processes()
    replicas: dict[str, Replica] = {}
    violations = True

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    try:
        tokens = {a: f"{a}-token-{secrets.token_hex(8)}" for a in AGENTS + APPROVERS}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "LANG": "C.UTF-8",
               "TZ": "UTC", "NO_COLOR": "1", "RUST_LOG": os.environ.get("RUST_LOG", "info"),
               "STORE_HMAC_KEY": secrets.token_hex(16),
               **{f"{k.upper()}_TOKEN": v for k, v in tokens.items()}}
        keys = workdir / "keys"
        cp = subprocess.run([str(binary), "audit", "keygen", "--out", str(keys)], capture_output=True, text=True)
        if cp.returncode != 0:
            raise RuntimeError(f"audit keygen failed: {cp.stderr}")

        redis = Redis(procs, workdir)
        redis.start()
        upstream = Upstream(procs, workdir, sys.executable)
        disk_ok = True
        for name in ("A", "B"):
            rep = replicas[name] = Replica(name, procs, workdir, binary, env)
            why = rep.mount_tmpfs(args.tmpfs_mb)
            if why:
                disk_ok = False
                log(f"NOTE: cannot mount a tmpfs for replica {name}'s audit dir ({why}); the audit-disk "
                    f"fault will be skipped and reported as skipped")
            rep.write_config(upstream, redis, keys)
        cp = subprocess.run([str(binary), "config", "check", "--config", str(replicas["A"].config)],
                            capture_output=True, text=True, env=env)
        if cp.returncode != 0:
            raise RuntimeError(f"config check failed: {cp.stdout}{cp.stderr}")
        for rep in replicas.values():
            rep.start()
        for rep in replicas.values():
            if not rep.wait_healthy(60, ready=True):
                raise RuntimeError(f"replica {rep.name} did not become ready")
        log(f"replicas A ({replicas['A'].proxy_url}) and B ({replicas['B'].proxy_url}) ready; "
            f"redis {redis.url}; upstream {upstream.url}; audit on tmpfs: {disk_ok}")

        load = Load(replicas, tokens, workdir, seed, args.workers)
        faults = Faults(workdir, replicas, redis, upstream, disk_ok)
        load.start()
        start = time.monotonic()
        plan = sorted(schedule(args.duration, set(args.skip)), key=lambda x: x[0])
        if args.skip:
            log(f"faults left out: {', '.join(sorted(set(args.skip)))}")
        fault_threads = []
        next_report = 10.0
        while True:
            el = time.monotonic() - start
            if el >= args.duration:
                break
            while plan and plan[0][0] * args.duration <= el:
                _, what, fn = plan.pop(0)
                t = threading.Thread(target=fn, args=(faults,), name=what, daemon=True)
                t.start()
                fault_threads.append(t)
            if el >= next_report:
                next_report += 10
                rows = load.agents_log.rows
                log(f"load: {dict(load.logical)} logical, {len(rows)} attempts, "
                    f"{sum(1 for r in rows if r.get('receipt') is not None)} forwarded; "
                    f"{len(load.approver_log.rows)} decisions")
            time.sleep(0.1)
        for t in fault_threads:
            t.join(90)
        upstream.mode(mode="normal")
        log("load stops: draining (held requests wait for their decision, up to 60s)")
        drained = load.drain(60)
        log(f"drained {'cleanly' if drained else 'with requests abandoned'}")

        exits = {}
        for name, rep in replicas.items():
            code, killed = rep.stop(30)
            exits[name] = code
            if killed:
                faults.events.append({"kind": "kill", "replica": name, "t": time.time(), "at": 0,
                                      "signal": "SIGKILL after SIGTERM timed out"})
        log(f"replicas stopped: exit codes {exits}")
        redis.stop()
        procs.stop_all()
        load.agents_log.close()
        load.approver_log.close()

        # The chains leave the tmpfs before it is unmounted; the checker reads the copies.
        saved = {}
        for name, rep in replicas.items():
            dst = workdir / f"audit-{name}"
            shutil.copytree(rep.audit_dir, dst, ignore=shutil.ignore_patterns("soak-fill.junk"))
            rep.unmount()
            saved[name] = dst
        meta = {"binary": str(binary), "seed": seed, "duration": args.duration,
                "audit_dirs": {k: str(v) for k, v in saved.items()}, "faults": faults.events,
                "checkpoints": {k: str(r.checkpoints) for k, r in replicas.items()}, "exits": exits}
        (workdir / "run.json").write_text(json.dumps(meta, indent=1))

        def verify(d: Path) -> tuple[int, str]:
            name = d.name.split("-", 1)[1]
            cmd = [str(binary), "audit", "verify", str(d), "--key", str(keys / "audit.pub"),
                   "--checkpoints", str(replicas[name].checkpoints)]
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            return cp.returncode, cp.stdout + cp.stderr

        inputs = invariants.load_run(workdir)
        rep = invariants.check(**inputs, verify=verify)
        print()
        print(f"=== soak summary (seed {seed}, {args.duration:.0f}s of load, run directory {workdir}) ===")
        print(summary_tables(load, inputs["receipts"], faults.events, rep))
        invariants.print_report(rep)
        bad_exit = {k: v for k, v in exits.items() if v != 0}
        if bad_exit:
            print(f"NOTE: replicas exited with {bad_exit} on SIGTERM (expected 0)")
        print(f"VIOLATIONS: {len(rep.violations)}")
        (workdir / "summary.json").write_text(json.dumps({
            "seed": seed, "logical": dict(load.logical), "final": {k: dict(v) for k, v in load.final.items()},
            "receipts": len(inputs["receipts"]), "faults": faults.events,
            "violations": [str(v) for v in rep.violations], "crash_cut": rep.crash_cut,
            "verified": {k: {"exit": v["exit"], "records": v["records"]} for k, v in rep.verified.items()},
            "exits": exits}, indent=1))
        violations = not rep.ok
        return 1 if violations else 0
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); stopping everything")
        violations = False  # nothing was checked; keep the directory only when asked to
        return 130
    finally:
        procs.stop_all()
        for rep in replicas.values():
            rep.unmount()
        if args.keep or violations:
            log(f"run directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
