"""Replicas sharing one Redis (`store.backend = "redis"`).

Every test starts its own `redis-server` on a free port with a temporary
directory (append-only file on), and two `approvalplane serve` processes, A and
B, in front of one fake upstream that records what it receives:

  * a request held on A is released by a decision made on B, through B's admin
    API and through B's Slack endpoint: 200 runs, each release within 1 s;
  * 100 rounds of approve and reject sent to both replicas at once: exactly one
    decision wins each round, and exactly one forward happens per approval;
  * A is SIGKILLed with 100 approvals pending while their agents keep retrying:
    every approval stays visible and decidable through B, and every agent's
    retry (on B, or on the restarted A) gets exactly one forward;
  * Redis stops mid-test: risky calls get 503 `store_unavailable` and are not
    forwarded, allowed calls pass, `/readyz` is not ready; Redis comes back:
    the replicas recover by themselves and the pending approvals are intact;
  * timers survive a replica crash: an approval opened on A expires through B,
    recorded once.
"""

from __future__ import annotations

import concurrent.futures as cf
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import FakeUpstream, free_port, wait_for_tcp, wait_until
from test_slack_sdk import Signed, block_actions
from slack_fake import BOT_TOKEN, SlackFake

AGENT_TOKEN = "agent-token-5d2e8f1a"
ALICE_TOKEN = "alice-token-9c4b7e20"
BOB_TOKEN = "bob-token-61f0a3d8"
HMAC_KEY = "replicas-share-this-3b8e5c1f"
SIGNING_SECRET = "replica-signing-secret-7a1c"
AUTH = {"Authorization": f"Bearer {AGENT_TOKEN}"}
SECRETS = {"AGENT_TOKEN": AGENT_TOKEN, "ALICE_TOKEN": ALICE_TOKEN, "BOB_TOKEN": BOB_TOKEN,
           "STORE_HMAC_KEY": HMAC_KEY, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET}

RULES = """\
package approvalplane

allow contains {"id": "reads", "reason": "reads pass"} if {
	input.kind == "http"
	input.request.method == "GET"
}

approval contains {"id": "refund", "reason": "refunds need finance", "route": "finance",
	"risk": "high", "action": "refund"} if {
	input.kind == "http"
	input.request.method == "POST"
	input.request.path == "/refund"
}

approval contains {"id": "short", "reason": "expires fast", "route": "finance",
	"risk": "high", "action": "short", "expires_after": "2s"} if {
	input.kind == "http"
	input.request.method == "POST"
	input.request.path == "/short"
}
"""


class RedisServer:
    """A redis-server of the test's own, restartable on the same port and data."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        assert wait_for_tcp("127.0.0.1", self.port, 10), "redis-server did not start"
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path):
    r = RedisServer(tmp_path / "redis").start()
    yield r
    r.stop()


def config(upstream: FakeUpstream, redis_url: str, slack_api: str | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "server": {"hold_timeout": "20s", "public_url": "https://approvals.example.com"},
        "upstream": [{"name": "echo", "url": upstream.url}],
        "agent": [{"id": "bot", "token_env": "AGENT_TOKEN"}],
        "approver": [{"id": "alice", "token_env": "ALICE_TOKEN", "slack_user": "U0ALICE"},
                     {"id": "bob", "token_env": "BOB_TOKEN", "slack_user": "U0BOB"}],
        "routes": {"finance": {"approvers": ["alice", "bob"]}},
        "policy": {"rules": "rules", "default": "deny"},
        "store": {"backend": "redis", "redis_url": redis_url, "key_prefix": "ap:",
                  "hmac_key_env": "STORE_HMAC_KEY"},
    }
    if slack_api:
        cfg["routes"]["finance"]["slack_channel"] = "C0FINANCE"
        cfg["slack"] = {"bot_token_env": "SLACK_BOT_TOKEN", "signing_secret_env": "SLACK_SIGNING_SECRET",
                        "api_base": slack_api, "post_interval": "20ms"}
    return cfg


def replicas(approvalplane, upstream, redis_server, slack_api=None):
    cfg = config(upstream, redis_server.url, slack_api)
    a = approvalplane(cfg, rules={"rules.rego": RULES}, secrets=SECRETS)
    b = approvalplane(cfg, rules={"rules.rego": RULES}, secrets=SECRETS)
    for ap in (a, b):
        wait_until(lambda ap=ap: requests.get(ap.control_url + "/readyz", timeout=2).status_code == 200, 10,
                   message=lambda ap=ap: ap.context("not ready"))
    return a, b


def refund(ap, body: str, wait: int | None = None, timeout: float = 30) -> requests.Response:
    headers = dict(AUTH, **{"Content-Type": "application/x-www-form-urlencoded"})
    if wait is not None:
        headers["Prefer"] = f"wait={wait}"
    return requests.post(ap.proxy_url + "/echo/refund", data=body, headers=headers, timeout=timeout)


def pending_id(admin, body_marker: str, timeout: float = 10) -> str:
    """The id of the pending approval whose request body carries `body_marker`."""
    def probe():
        for a in admin.list("pending"):
            if a.get("summary", {}).get("marker") == body_marker or body_marker in str(a):
                return a["id"]
        return None
    return wait_until(probe, timeout, interval=0.02)


def held(ap, body: str) -> tuple[str, threading.Thread, dict[str, Any]]:
    """Sends a refund through `ap` in the background; returns its approval id."""
    out: dict[str, Any] = {}

    def run():
        try:
            out["r"] = refund(ap, body)
        except Exception as exc:  # noqa: BLE001 - asserted by the caller
            out["e"] = exc
        out["t"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return body, t, out


def wait_pending_ids(admin, n: int, timeout: float = 15, message=None) -> list[dict[str, Any]]:
    return wait_until(lambda: (lambda l: l if len(l) >= n else None)(admin.list("pending")), timeout,
                      interval=0.02, message=message or (lambda: f"fewer than {n} pending"))


def test_a_request_held_on_a_is_released_by_b_admin_api_and_slack(approvalplane, fake_upstream, redis_server):
    slack = SlackFake(channels={"C0FINANCE"})
    slack_up = fake_upstream(slack, name="slack")
    up = fake_upstream(name="echo")
    a, b = replicas(approvalplane, up, redis_server, slack_api=slack_up.url + "/api")
    alice_b = b.admin(ALICE_TOKEN)
    signed = Signed(b.control_url, SIGNING_SECRET)
    releases = []
    for i in range(200):
        body = f"charge=ch_{i}&amount={1000 + i}"
        _, t, out = held(a, body)
        pend = wait_pending_ids(alice_b, 1, message=lambda: a.context(f"run {i}: nothing pending on B; agent got {out.get('r') and out['r'].text} {out.get('e')!r}"))
        assert len(pend) == 1, pend
        aid = pend[0]["id"]
        started = time.monotonic()
        if i % 10 == 9:
            # Through B's Slack endpoint, signed as Slack signs.
            r = signed.send(block_actions("U0ALICE", "approve", aid, slack.issue_trigger()))
            assert r.status_code == 200, b.context(r.text)
        else:
            alice_b.approve(aid)
        t.join(10)
        assert "r" in out, a.context(f"run {i}: {out.get('e')!r}")
        assert out["r"].status_code == 200, a.context(f"run {i}: {out['r'].status_code} {out['r'].text}")
        releases.append(out["t"] - started)
        assert out["t"] - started < 1.0, f"run {i}: released after {out['t'] - started:.3f}s"
    got = Counter(r.body.decode() for r in up.requests if r.method == "POST")
    assert len(got) == 200 and set(got.values()) == {1}, "each approved request forwarded exactly once"
    releases.sort()
    print(f"release after decision on the other replica: p50 {releases[100] * 1000:.1f} ms, "
          f"max {releases[-1] * 1000:.1f} ms")
    for ap in (a, b):
        code, out = ap.audit_verify()
        assert code == 0, out


def test_concurrent_approve_and_reject_on_both_replicas_have_one_winner(approvalplane, fake_upstream,
                                                                        redis_server):
    up = fake_upstream(name="echo")
    a, b = replicas(approvalplane, up, redis_server)
    alice = {"a": a.admin(ALICE_TOKEN), "b": b.admin(ALICE_TOKEN)}
    bob = {"a": a.admin(BOB_TOKEN), "b": b.admin(BOB_TOKEN)}
    approved = 0
    pool = cf.ThreadPoolExecutor(8)
    for i in range(100):
        body = f"charge=race_{i}&amount=9000"
        _, t, out = held(a if i % 2 else b, body)
        aid = wait_pending_ids(alice["b"], 1)[0]["id"]
        barrier = threading.Barrier(4)

        def vote(client, decision):
            barrier.wait()
            path = f"/v1/admin/approvals/{aid}/decision"
            payload = {"decision": decision}
            if decision == "reject":
                payload["reason"] = "race"
            return client.raw("POST", path, json=payload).status_code

        futs = [pool.submit(vote, alice["a"], "approve"), pool.submit(vote, bob["b"], "reject"),
                pool.submit(vote, bob["a"], "reject"), pool.submit(vote, alice["b"], "approve")]
        codes = sorted(f.result() for f in futs)
        # Quorum 1: the first approve or reject decides; everything else is already_decided.
        assert codes.count(200) == 1 and codes.count(409) == 3, f"round {i}: {codes}"
        t.join(10)
        status = alice["a"].get(aid)["status"]
        assert out["r"].status_code == (200 if status == "approved" else 403), (i, status, out["r"].text)
        approved += status == "approved"
    pool.shutdown()
    got = Counter(r.body.decode() for r in up.requests if r.method == "POST")
    assert sum(got.values()) == approved and set(got.values()) <= {1}
    assert 0 < approved < 100, f"both verdicts should win sometimes ({approved} approvals)"


def test_sigkill_a_with_100_pending_and_retrying_agents(approvalplane, fake_upstream, redis_server):
    up = fake_upstream(name="echo")
    a, b = replicas(approvalplane, up, redis_server)
    alice_b = b.admin(ALICE_TOKEN)
    bodies = [f"charge=kill_{i}&amount={5000 + i}" for i in range(100)]
    with cf.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda body: refund(a, body, wait=0).status_code, bodies))
    assert set(codes) == {409}, Counter(codes)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    pend = wait_pending_ids(alice_b, 100)
    assert len(pend) == 100

    # The agents keep retrying: half on B, half on A once it is back.
    a2 = a  # the same directory and config, restarted
    a2.start()
    a2.wait_healthy()
    results: dict[str, requests.Response] = {}

    def retry(i_body):
        i, body = i_body
        target = b if i % 2 else a2
        while True:
            r = refund(target, body, wait=10)
            if r.status_code != 409 or r.json().get("error", {}).get("type") != "approval_pending":
                results[body] = r
                return

    with cf.ThreadPoolExecutor(100) as pool:
        futs = [pool.submit(retry, x) for x in enumerate(bodies)]
        # Every retry is attached to its approval; decide all of them through B.
        time.sleep(0.5)
        ids = [p["id"] for p in alice_b.list("pending")]
        assert len(ids) == 100, "no retry opened a second approval"
        r = requests.post(b.control_url + "/v1/admin/approvals/decision", timeout=30,
                          headers={"Authorization": f"Bearer {ALICE_TOKEN}"},
                          json={"ids": ids, "decision": "approve"})
        assert r.status_code == 200, r.text
        for f in futs:
            f.result(timeout=60)
    assert {body: r.status_code for body, r in results.items()} == {body: 200 for body in bodies}
    got = Counter(r.body.decode() for r in up.requests if r.method == "POST")
    assert got == Counter(bodies), "exactly one forward per approval, none lost"
    # Another retry is a new request needing a new approval: nothing is forwarded twice.
    assert refund(b, bodies[0], wait=0).status_code == 409
    assert len([r for r in up.requests if r.method == "POST"]) == 100


def test_redis_outage_fails_closed_and_recovers(approvalplane, fake_upstream, redis_server):
    up = fake_upstream(name="echo")
    a, b = replicas(approvalplane, up, redis_server)
    alice = b.admin(ALICE_TOKEN)
    assert refund(a, "charge=before&amount=1", wait=0).status_code == 409
    before = wait_pending_ids(alice, 1)[0]["id"]

    redis_server.stop()
    started = time.monotonic()
    r = refund(a, "charge=during&amount=2", wait=0, timeout=10)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "store_unavailable"
    assert r.headers.get("Retry-After")
    assert time.monotonic() - started < 3.0
    ok = requests.get(a.proxy_url + "/echo/balance", headers=AUTH, timeout=5)
    assert ok.status_code == 200, "allowed calls keep flowing"
    for ap in (a, b):
        wait_until(lambda ap=ap: requests.get(ap.control_url + "/readyz", timeout=3).status_code == 503, 5)
    assert not [r for r in up.requests if r.method == "POST"], "nothing risky was forwarded"

    redis_server.start()
    for ap in (a, b):
        wait_until(lambda ap=ap: requests.get(ap.control_url + "/readyz", timeout=3).status_code == 200, 10,
                   message=lambda ap=ap: ap.context("did not recover"))
    assert alice.get(before)["status"] == "pending", "the approval made before the outage is intact"
    _, t, out = held(a, "charge=before&amount=1")
    time.sleep(0.3)
    alice.approve(before)
    t.join(10)
    assert out["r"].status_code == 200, out["r"].text
    assert [r.body for r in up.requests if r.method == "POST"] == [b"charge=before&amount=1"]


def test_timers_fire_once_when_the_replica_that_set_them_dies(approvalplane, fake_upstream, redis_server):
    up = fake_upstream(name="echo")
    a, b = replicas(approvalplane, up, redis_server)
    headers = dict(AUTH, **{"Content-Type": "application/x-www-form-urlencoded", "Prefer": "wait=0"})
    r = requests.post(a.proxy_url + "/echo/short", data="x=1", headers=headers, timeout=10)
    assert r.status_code == 409
    aid = r.json()["error"]["approval_id"]
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    alice = b.admin(ALICE_TOKEN)
    wait_until(lambda: alice.get(aid)["status"] == "expired", 10, message=lambda: b.context("not expired"))
    time.sleep(1.5)
    ended = [x for ap in (a, b) for x in ap.audit_records()
             if x["kind"] == "approval_ended" and x.get("approval_id") == aid]
    assert len(ended) == 1, ended


def test_sigterm_leaves_held_approvals_pending_for_the_other_replica(approvalplane, fake_upstream, redis_server):
    up = fake_upstream(name="echo")
    a, b = replicas(approvalplane, up, redis_server)
    alice = b.admin(ALICE_TOKEN)
    body = "charge=drain&amount=700"
    _, t, out = held(a, body)
    aid = wait_pending_ids(alice, 1)[0]["id"]
    assert a.stop() == 0
    t.join(10)
    r = out["r"]
    assert r.status_code == 503 and r.json()["error"]["type"] == "shutting_down", r.text
    assert r.headers.get("Retry-After")
    assert alice.get(aid)["status"] == "pending", "the approval waits for another replica"
    alice.approve(aid)
    r = refund(b, body)
    assert r.status_code == 200, r.text
    assert [x.body for x in up.requests if x.method == "POST"] == [body.encode()]
    code, text = a.audit_verify()
    assert code == 0, text
    ended = [x for x in a.audit_records() if x["kind"] == "approval_ended"]
    assert not ended, "a shared store does not end approvals on shutdown"
