"""Operations: metrics, graceful shutdown, reload and structured logs.

  * /metrics parses with the Prometheus client's parser for the Content-Type it
    is served with, and the counters, gauges and histograms move as expected
    through allowed, denied and held -> approved requests;
  * SIGTERM with requests in every state: in-flight forwards (allowed, and
    approved) finish, a request arriving during the drain is refused, held
    requests get a defined answer (503 shutting_down with Retry-After), their
    approvals are recorded as interrupted, the chain ends with a shutdown
    record and a final checkpoint, the process exits 0 within
    server.shutdown_grace, and the audit log verifies;
  * SIGHUP: an approver and a rule change for new requests, a held request
    keeps its decision, broken edits are refused while the old configuration
    stays active, and secrets given as *_file are read again;
  * `serve --log-format json` writes JSON lines with request and approval ids,
    and never a token.
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import threading
import time
from typing import Any, Callable

import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus_text

from conftest import (HTTP_TIMEOUT, ApprovalPlane, echo_responder, free_port, require_binary, to_toml,
                      wait_for_tcp, wait_until)

AGENT_TOKEN = "agent-token-4f1c9a7e"
ALICE_TOKEN = "alice-token-8b2d6e0f"
BOB_TOKEN = "bob-token-3c7a1d95"
UPSTREAM_KEY = "Bearer sk_live_upstream_9e8d7c6b"

SECRETS = {"AGENT_TOKEN": AGENT_TOKEN, "ALICE_TOKEN": ALICE_TOKEN, "BOB_TOKEN": BOB_TOKEN,
           "UPSTREAM_AUTH": UPSTREAM_KEY}
AUTH = {"Authorization": f"Bearer {AGENT_TOKEN}"}

RULES_V1 = """\
package approvalplane

allow contains {"id": "reads", "reason": "reads pass"} if {
	input.kind == "http"
	input.request.method == "GET"
	not input.request.path == "/denied"
}

deny contains {"id": "denied", "reason": "never"} if {
	input.kind == "http"
	input.request.path == "/denied"
}

approval contains {"id": "refund", "reason": "refunds need finance", "route": "finance",
	"risk": "high", "action": "refund"} if {
	input.kind == "http"
	input.request.method == "POST"
	input.request.path == "/refund"
}

approval contains {"id": "wire", "reason": "wires need finance", "route": "finance",
	"risk": "critical", "action": "wire"} if {
	input.kind == "api"
	input.action == "wire"
}
"""


def base_config(upstream_url: str, **server: Any) -> dict[str, Any]:
    return {
        "server": {"hold_timeout": "30s", **server},
        "upstream": [{"name": "echo", "url": upstream_url, "inject_header": "Authorization",
                      "inject_value_env": "UPSTREAM_AUTH"}],
        "agent": [{"id": "bot", "token_env": "AGENT_TOKEN"}],
        "approver": [{"id": "alice", "token_env": "ALICE_TOKEN"}, {"id": "bob", "token_env": "BOB_TOKEN"}],
        "routes": {"finance": {"approvers": ["alice"]}},
        "policy": {"rules": "rules", "default": "deny"},
        "audit": {"path": "audit"},
    }


class Background:
    """Runs one HTTP call in a thread; `.result()` is the response or the exception."""

    def __init__(self, fn: Callable[[], requests.Response]):
        self._out: dict[str, Any] = {}
        self.started = time.monotonic()
        self.finished: float | None = None
        self._t = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._t.start()

    def _run(self, fn):
        try:
            self._out["r"] = fn()
        except Exception as exc:  # noqa: BLE001 - reported by result()
            self._out["e"] = exc
        self.finished = time.monotonic()

    def done(self) -> bool:
        return not self._t.is_alive()

    def result(self, timeout: float = 40.0) -> requests.Response:
        self._t.join(timeout)
        assert not self._t.is_alive(), f"the request did not finish within {timeout}s"
        if "e" in self._out:
            raise self._out["e"]
        return self._out["r"]


def records(ap: ApprovalPlane, kind: str | None = None) -> list[dict[str, Any]]:
    return [r for r in ap.audit_records() if kind is None or r["kind"] == kind]


def pending_ids(ap: ApprovalPlane, token: str) -> set[str]:
    return {a["id"] for a in ap.admin(token).list("pending")}


# --------------------------------------------------------------------------
# (a) metrics
# --------------------------------------------------------------------------


class Scrape:
    """One /metrics scrape, parsed by the parser for its Content-Type."""

    def __init__(self, ap: ApprovalPlane, accept: str | None = None):
        headers = {"Accept": accept} if accept else {}
        r = requests.get(ap.control_url + "/metrics", headers=headers, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, ap.context(f"/metrics answered {r.status_code}: {r.text[:500]}")
        ctype = r.headers.get("Content-Type", "")
        self.content_type = ctype
        if ctype.startswith("application/openmetrics-text"):
            assert "version=1.0.0" in ctype, ctype
            families = list(parse_openmetrics(r.text))  # strict: needs `# EOF`, TYPE before samples
        elif ctype.startswith("text/plain"):
            assert "version=0.0.4" in ctype, ctype
            families = list(parse_prometheus_text(r.text))
        else:
            pytest.fail(f"/metrics is served as {ctype!r}, not a Prometheus text format")
        self.families = {f.name: f for f in families}
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, dict(s.labels), s.value) for f in families for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels` (0 if none)."""
        return sum(v for n, ls, v in self.samples
                   if n == name and all(ls.get(k) == want for k, want in labels.items()))

    def has(self, name: str, **labels: str) -> bool:
        return any(n == name and all(ls.get(k) == want for k, want in labels.items())
                   for n, ls, _ in self.samples)


def test_metrics_parse_and_move_through_a_flow(approvalplane, fake_upstream):
    up = fake_upstream()
    ap = approvalplane(base_config(up.url), rules={"main.rego": RULES_V1}, secrets=SECRETS)
    m0 = Scrape(ap)
    # Prometheus text unless the scraper asks for OpenMetrics, as Prometheus does.
    assert m0.content_type.startswith("text/plain"), m0.content_type
    om = Scrape(ap, accept="application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert om.content_type.startswith("application/openmetrics-text"), om.content_type
    assert {n: f.type for n, f in om.families.items()} == {n: f.type for n, f in m0.families.items()}
    for family, kind in (("approvalplane_decisions", "counter"), ("approvalplane_pending_approvals", "gauge"),
                         ("approvalplane_approval_latency_seconds", "histogram"),
                         ("approvalplane_upstream_latency_seconds", "histogram"),
                         ("approvalplane_held_requests", "gauge")):
        assert family in m0.families and m0.families[family].type == kind, \
            f"{family} is not exported as a {kind}: {sorted(m0.families)}"
    dec = "approvalplane_decisions_total"
    up_count = "approvalplane_upstream_latency_seconds_count"
    lat_count = "approvalplane_approval_latency_seconds_count"

    # allowed
    r = requests.get(ap.proxy_url + "/echo/ok", headers=AUTH, timeout=HTTP_TIMEOUT)
    assert r.status_code == 200
    m1 = Scrape(ap)
    assert m1.value(dec, upstream="echo", decision="allow") == m0.value(dec, upstream="echo", decision="allow") + 1
    assert m1.value(up_count, upstream="echo") == m0.value(up_count, upstream="echo") + 1
    assert m1.value("approvalplane_upstream_latency_seconds_bucket", upstream="echo", le="+Inf") == \
        m1.value(up_count, upstream="echo")

    # denied: counted, never forwarded
    r = requests.get(ap.proxy_url + "/echo/denied", headers=AUTH, timeout=HTTP_TIMEOUT)
    assert r.status_code == 403 and r.json()["error"]["type"] == "policy_denied"
    m2 = Scrape(ap)
    assert m2.value(dec, upstream="echo", decision="deny") == m0.value(dec, upstream="echo", decision="deny") + 1
    assert m2.value(up_count, upstream="echo") == m1.value(up_count, upstream="echo")
    assert m2.value(dec, upstream="echo", decision="allow") == m1.value(dec, upstream="echo", decision="allow")

    # held -> approved
    held = Background(lambda: requests.post(ap.proxy_url + "/echo/refund", data=b"amount=1", headers=AUTH,
                                            timeout=40))
    alice = ap.admin(ALICE_TOKEN)
    approval = alice.wait_for_approval()
    # The approval is listed a moment before its request starts being held.
    m3 = wait_until(lambda: (lambda m: m if m.value("approvalplane_held_requests") == 1 else None)(Scrape(ap)),
                    5, interval=0.02, message="approvalplane_held_requests never showed the held request")
    assert m3.value(dec, upstream="echo", decision="require_approval") == \
        m0.value(dec, upstream="echo", decision="require_approval") + 1
    assert m3.value("approvalplane_pending_approvals", route="finance") == 1
    assert m3.value("approvalplane_held_requests") == 1
    assert m3.value(up_count, upstream="echo") == m2.value(up_count, upstream="echo")
    assert m3.value(lat_count, route="finance") == m0.value(lat_count, route="finance")

    alice.approve(approval["id"])
    r = held.result()
    assert r.status_code == 200, r.text
    m4 = Scrape(ap)
    assert m4.value("approvalplane_pending_approvals", route="finance") == 0
    assert m4.value("approvalplane_held_requests") == 0
    assert m4.value(lat_count, route="finance", status="approved") == \
        m0.value(lat_count, route="finance", status="approved") + 1
    assert m4.value("approvalplane_approval_latency_seconds_bucket", route="finance", status="approved",
                    le="+Inf") == m4.value(lat_count, route="finance", status="approved")
    assert m4.value(up_count, upstream="echo") == m0.value(up_count, upstream="echo") + 2
    total = sum(m4.value(dec, decision=d) - m0.value(dec, decision=d) for d in ("allow", "deny", "require_approval"))
    assert total == 3, "every request is counted exactly once"
    assert m4.value("approvalplane_audit_healthy") == 1
    assert m4.value("approvalplane_audit_records") > m0.value("approvalplane_audit_records")


# --------------------------------------------------------------------------
# (b) SIGTERM
# --------------------------------------------------------------------------


def test_sigterm_answers_every_request_and_closes_the_chain(approvalplane, fake_upstream):
    grace = 4.0

    def slow(req):
        if req.path_only == "/slow" or b"slow=1" in req.body:
            time.sleep(1.0)
        return echo_responder(req)

    up = fake_upstream(slow)
    ap = approvalplane(base_config(up.url, shutdown_grace=f"{grace:g}s"),
                       rules={"main.rego": RULES_V1}, secrets=SECRETS)
    alice = ap.admin(ALICE_TOKEN)

    # An approved request whose one forward is in flight to a slow upstream.
    approved = Background(lambda: requests.post(ap.proxy_url + "/echo/refund", data=b"amount=8&slow=1",
                                                headers=AUTH, timeout=40))
    alice.approve(alice.wait_for_approval()["id"])
    wait_until(lambda: up.matching("POST", "/refund"), 5, interval=0.02,
               message="the approved refund did not reach the upstream")
    # A held proxied request and a held request_approval call.
    held = Background(lambda: requests.post(ap.proxy_url + "/echo/refund", data=b"amount=7", headers=AUTH,
                                            timeout=40))
    wait_until(lambda: len(pending_ids(ap, ALICE_TOKEN)) == 1, 10, message="the refund is not pending")
    asked = Background(lambda: requests.post(ap.proxy_url + "/v1/approvals", headers=AUTH, timeout=40,
                                             json={"action": "wire", "payload": {"amount": 5}, "wait": 30}))
    wait_until(lambda: len(pending_ids(ap, ALICE_TOKEN)) == 2, 10, message="the wire is not pending")
    held_ids = pending_ids(ap, ALICE_TOKEN)
    # An allowed request in flight to a slow upstream.
    inflight = Background(lambda: requests.get(ap.proxy_url + "/echo/slow", headers=AUTH, timeout=40))
    wait_until(lambda: up.matching("GET", "/slow"), 5, interval=0.02, message="/slow did not reach the upstream")
    assert not approved.done(), "the approved forward finished before SIGTERM; the upstream is not slow enough"
    # An approved request whose agent has not come back yet: its grant dies with the
    # memory store, and is recorded as withdrawn.
    r = requests.post(ap.proxy_url + "/echo/refund", data=b"amount=6", timeout=10,
                      headers=dict(AUTH, Prefer="wait=0"))
    assert r.status_code == 409, r.text
    unused_id = r.json()["error"]["approval_id"]
    alice.approve(unused_id)

    t0 = time.monotonic()
    ap.signal(signal.SIGTERM)
    time.sleep(0.3)
    # A request arriving during the drain is not forwarded.
    try:
        late = requests.get(ap.proxy_url + "/echo/late", headers=AUTH, timeout=10)
        assert late.status_code == 503 and late.json()["error"]["type"] == "shutting_down", late.text
    except requests.ConnectionError:
        pass  # the listener is already closed: also a refusal

    try:
        rc = ap.proc.wait(timeout=grace + 5)
    except subprocess.TimeoutExpired:
        ap.fail(f"still running {grace + 5:.0f}s after SIGTERM")
    elapsed = time.monotonic() - t0
    assert rc == 0, ap.context(f"exit code {rc} after SIGTERM")
    assert elapsed <= grace + 2, f"exited {elapsed:.1f}s after SIGTERM; shutdown_grace is {grace}s"

    r = inflight.result(5)
    assert r.status_code == 200 and r.json()["path"] == "/slow", f"in-flight forward: {r.status_code} {r.text}"
    r = approved.result(5)
    assert r.status_code == 200 and r.json()["body"] == "amount=8&slow=1", \
        f"in-flight approved forward: {r.status_code} {r.text}"
    r = held.result(5)
    assert held.finished - t0 < grace, "the held request was not answered at once"
    assert r.status_code == 503, f"held request: {r.status_code} {r.text}"
    assert r.json()["error"]["type"] == "shutting_down" and r.headers.get("Retry-After"), r.headers
    r = asked.result(5)
    if r.status_code == 503:
        assert r.json()["error"]["type"] == "shutting_down" and r.headers.get("Retry-After")
    else:
        assert r.status_code == 200 and r.json()["status"] == "interrupted", f"{r.status_code} {r.text}"
    assert not up.matching(path="/late"), "a request that arrived during the drain was forwarded"
    assert [r.body for r in up.matching("POST", "/refund")] == [b"amount=8&slow=1"], \
        "only the approved refund may reach the upstream, once"

    recs = records(ap)
    ended = {r["approval_id"]: r for r in recs if r["kind"] == "approval_ended"}
    for aid in held_ids:
        assert aid in ended and ended[aid]["status"] == "interrupted", f"{aid} is not recorded as interrupted"
    assert ended[unused_id]["status"] == "approved" and "withdrawn" in ended[unused_id]["reason"], ended[unused_id]
    (shutdown,) = [r for r in recs if r["kind"] == "shutdown"]
    assert set(shutdown["interrupted"]) == held_ids
    forwards = [r for r in recs if r["kind"] == "forwarded"]
    slow_fw = [r for r in forwards if r.get("target", "").endswith("/slow")]
    assert len(slow_fw) == 1 and slow_fw[0]["status"] == 200, "the in-flight forward is not recorded"
    (grant,) = [r for r in recs if r["kind"] == "grant_used"]
    refund_fw = [r for r in forwards if r.get("request_id") == grant["request_id"]]
    assert len(refund_fw) == 1 and refund_fw[0]["status"] == 200, "the approved forward is not recorded"
    last = recs[-1]
    assert last["kind"] == "checkpoint" and last["through_seq"] >= shutdown["seq"], \
        f"the chain does not end with a checkpoint over the shutdown record: {last}"
    code, out = ap.audit_verify()
    assert code == 0, f"audit verify exited {code}:\n{out}"


# --------------------------------------------------------------------------
# (c) SIGHUP
# --------------------------------------------------------------------------

RULES_V2 = """\
package approvalplane

deny contains {"id": "reads.frozen", "reason": "reads are frozen"} if {
	input.kind == "http"
	input.request.method == "GET"
}

deny contains {"id": "refunds.frozen", "reason": "refunds are frozen"} if {
	input.kind == "http"
	input.request.method == "POST"
	input.request.path == "/refund"
}

approval contains {"id": "payout", "reason": "payouts need finance", "route": "finance",
	"risk": "high", "action": "payout"} if {
	input.kind == "http"
	input.request.method == "POST"
	input.request.path == "/payout"
}
"""


def reload(ap: ApprovalPlane, kind: str) -> dict[str, Any]:
    """SIGHUP, then wait for the reload's record (`policy_loaded` or `policy_rejected`)."""
    before = len([r for r in records(ap) if r.get("trigger") == "sighup"])
    ap.signal(signal.SIGHUP)
    new = wait_until(lambda: [r for r in records(ap) if r.get("trigger") == "sighup"][before:], 30,
                     message=lambda: ap.context("no record of the SIGHUP reload"))
    assert [r["kind"] for r in new] == [kind], ap.context(f"SIGHUP gave {[r['kind'] for r in new]}, not {kind}")
    assert ap.running()
    return new[0]


def test_sighup_reloads_approvers_and_rules_and_refuses_broken_edits(approvalplane, fake_upstream):
    up = fake_upstream()
    cfg = base_config(up.url)
    cfg["policy"]["watch_interval"] = "0s"  # only SIGHUP reloads here
    ap = approvalplane(cfg, rules={"main.rego": RULES_V1}, secrets=SECRETS)
    alice, bob = ap.admin(ALICE_TOKEN), ap.admin(BOB_TOKEN)

    assert requests.get(ap.proxy_url + "/echo/read", headers=AUTH, timeout=HTTP_TIMEOUT).status_code == 200
    held = Background(lambda: requests.post(ap.proxy_url + "/echo/refund", data=b"amount=3", headers=AUTH,
                                            timeout=40))
    a1 = alice.wait_for_approval()["id"]
    assert bob.list() == [], "bob is not an approver of finance yet"

    # The change: finance is bob's now, reads and refunds are denied, payouts
    # need finance; and a listen address that only a restart can change.
    v2 = copy.deepcopy(ap.config)
    v2["routes"]["finance"]["approvers"] = ["bob"]
    old_listen = v2["server"]["listen"]
    v2["server"]["listen"] = f"127.0.0.1:{free_port()}"
    ap.config_path.write_text(to_toml(v2))
    (ap.rules_dir / "main.rego").write_text(RULES_V2)
    loaded = reload(ap, "policy_loaded")
    assert "warn" in ap.stderr_text().lower() and "server.listen" in ap.stderr_text(), \
        ap.context("a changed server.listen is not reported as needing a restart")
    assert not wait_for_tcp("127.0.0.1", int(v2["server"]["listen"].rsplit(":", 1)[1]), 0.5)

    # New requests follow the new rules (on the old listener).
    r = requests.get(f"http://{old_listen}/echo/read", headers=AUTH, timeout=HTTP_TIMEOUT)
    assert r.status_code == 403 and r.json()["error"]["rule"] == "reads.frozen", r.text
    r = requests.post(ap.proxy_url + "/echo/refund", data=b"amount=4", headers=AUTH, timeout=HTTP_TIMEOUT)
    assert r.status_code == 403 and r.json()["error"]["rule"] == "refunds.frozen", r.text
    # ... and go to the new approvers.
    r = requests.post(ap.proxy_url + "/echo/payout", data=b"amount=5", headers={**AUTH, "Prefer": "wait=0"},
                      timeout=HTTP_TIMEOUT)
    assert r.status_code == 409, r.text
    payout = r.json()["error"]["approval_id"]
    assert payout in {a["id"] for a in bob.list()}
    assert payout not in {a["id"] for a in alice.list()}

    # The held refund keeps its decision (still held, not denied) and its
    # route; the route's approvers are read when deciding: bob's now.
    assert not held.done(), "the held request was answered by the reload"
    assert alice.raw("POST", f"/v1/admin/approvals/{a1}/decision",
                     json={"decision": "approve"}).status_code == 403
    assert bob.get(a1)["status"] == "pending"
    assert bob.get(a1)["rule_ids"] == ["refund"]
    bob.approve(a1)
    r = held.result()
    assert r.status_code == 200, r.text
    assert len(up.matching("POST", "/refund")) == 1

    # A broken rule is refused; the previous bundle stays active.
    (ap.rules_dir / "main.rego").write_text(RULES_V2 + "\nallow contains x if {\n")
    rejected = reload(ap, "policy_rejected")
    assert rejected["policy_bundle"] == loaded["policy_bundle"]
    r = requests.get(ap.proxy_url + "/echo/read", headers=AUTH, timeout=HTTP_TIMEOUT)
    assert r.status_code == 403 and r.json()["error"]["rule"] == "reads.frozen"
    (ap.rules_dir / "main.rego").write_text(RULES_V2)

    # A broken config is refused; approvers and rules stay as they were.
    v3 = copy.deepcopy(v2)
    v3["routes"]["finance"]["approvers"] = ["alice"]
    v3["server"]["no_such_key"] = True
    ap.config_path.write_text(to_toml(v3))
    reload(ap, "policy_rejected")
    assert payout in {a["id"] for a in bob.list()}
    assert alice.list() == []
    r = requests.get(ap.proxy_url + "/echo/read", headers=AUTH, timeout=HTTP_TIMEOUT)
    assert r.status_code == 403 and r.json()["error"]["rule"] == "reads.frozen"
    assert "refused" in ap.stderr_text()

    assert ap.stop() == 0
    code, out = ap.audit_verify()
    assert code == 0, out


def test_sighup_rereads_file_secrets(approvalplane, fake_upstream):
    """Secrets given as *_file (how Kubernetes Secret volumes update) change on SIGHUP."""
    up = fake_upstream()
    cfg = base_config(up.url)
    cfg["upstream"][0] = {"name": "echo", "url": up.url, "inject_header": "Authorization",
                          "inject_value_file": "secrets/upstream-auth"}
    cfg["approver"][0] = {"id": "alice", "token_file": "secrets/alice-token"}
    cfg["policy"]["watch_interval"] = "0s"
    ap = approvalplane(cfg, rules={"main.rego": RULES_V1}, secrets=SECRETS,
                       files={"secrets/upstream-auth": "Bearer sk_live_old\n", "secrets/alice-token": "alice-old\n"})
    assert requests.get(ap.proxy_url + "/echo/a", headers=AUTH, timeout=HTTP_TIMEOUT).status_code == 200
    assert up.requests[-1].header("Authorization") == "Bearer sk_live_old"
    assert ap.admin("alice-old").raw("GET", "/v1/admin/approvals").status_code == 200

    (ap.workdir / "secrets" / "upstream-auth").write_text("Bearer sk_live_new\n")
    (ap.workdir / "secrets" / "alice-token").write_text("alice-new\n")
    reload(ap, "policy_loaded")
    assert requests.get(ap.proxy_url + "/echo/b", headers=AUTH, timeout=HTTP_TIMEOUT).status_code == 200
    assert up.requests[-1].header("Authorization") == "Bearer sk_live_new"
    assert ap.admin("alice-old").raw("GET", "/v1/admin/approvals").status_code == 401
    assert ap.admin("alice-new").raw("GET", "/v1/admin/approvals").status_code == 200

    # A secret file that disappears is refused; the old values stay.
    (ap.workdir / "secrets" / "alice-token").unlink()
    reload(ap, "policy_rejected")
    assert ap.admin("alice-new").raw("GET", "/v1/admin/approvals").status_code == 200
    assert "sk_live_new" not in ap.stderr_text() + ap.audit_text()


# --------------------------------------------------------------------------
# (d) JSON logs
# --------------------------------------------------------------------------


def start_with_args(factory, config: dict[str, Any], *extra: str, **kwargs: Any) -> ApprovalPlane:
    """Like the `approvalplane` fixture, with extra `serve` arguments."""
    ap = factory(config, start=False, **kwargs)
    with open(ap.stdout_path, "wb") as out, open(ap.stderr_path, "wb") as err:
        ap.proc = subprocess.Popen(
            [str(require_binary()), "serve", "--config", str(ap.config_path), *extra],
            cwd=str(ap.workdir), env=ap.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True)
    factory.instances.append(ap)
    ap.wait_healthy()
    return ap


def test_json_logs_carry_ids_and_no_secrets(approvalplane, fake_upstream):
    up = fake_upstream()
    dead = fake_upstream(name="dead")
    dead_url = dead.url
    dead.stop()
    cfg = base_config(up.url)
    cfg["upstream"].append({"name": "gone", "url": dead_url, "inject_header": "Authorization",
                            "inject_value_env": "UPSTREAM_AUTH", "connect_timeout": "2s"})
    ap = start_with_args(approvalplane, cfg, "--log-format", "json",
                         rules={"main.rego": RULES_V1}, secrets=SECRETS)
    alice = ap.admin(ALICE_TOKEN)

    assert requests.get(ap.proxy_url + "/echo/ok", headers=AUTH, timeout=HTTP_TIMEOUT).status_code == 200
    r = requests.post(ap.proxy_url + "/echo/refund", data=b"amount=9", headers={**AUTH, "Prefer": "wait=0"},
                      timeout=HTTP_TIMEOUT)
    assert r.status_code == 409
    approval_id = r.json()["error"]["approval_id"]
    alice.approve(approval_id, reason="checked")
    assert requests.post(ap.proxy_url + "/echo/refund", data=b"amount=9", headers=AUTH,
                         timeout=HTTP_TIMEOUT).status_code == 200
    # A failed forward: the agent gets a request id it can quote.
    r = requests.get(ap.proxy_url + "/gone/x", headers=AUTH, timeout=HTTP_TIMEOUT)
    assert r.status_code == 502
    request_id = r.headers.get("X-Request-Id")
    assert request_id, "a refusal carries no X-Request-Id"
    # Credentials in places a careless logger would print.
    requests.get(ap.proxy_url + f"/echo/ok?token={AGENT_TOKEN}", headers=AUTH, timeout=HTTP_TIMEOUT)
    requests.get(ap.proxy_url + "/echo/ok", auth=("bot", AGENT_TOKEN), timeout=HTTP_TIMEOUT)
    requests.get(ap.proxy_url + "/echo/ok", headers={"Authorization": f"Bearer {AGENT_TOKEN}x"},
                 timeout=HTTP_TIMEOUT)
    requests.get(ap.control_url + "/v1/admin/approvals", headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
                 timeout=HTTP_TIMEOUT)
    assert ap.stop() == 0

    lines = [line for line in ap.stderr_text().splitlines() if line.strip()]
    assert lines, "serve --log-format json wrote nothing to stderr"
    events = []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            pytest.fail(f"a stderr line is not JSON: {line!r}")
        assert isinstance(ev, dict) and ev.get("timestamp") and ev.get("level"), line
        events.append(ev)
    assert any(ev.get("approval.id") == approval_id for ev in events), \
        f"no log line names approval.id {approval_id}:\n" + "\n".join(lines)
    assert any(ev.get("request.id") == request_id for ev in events), \
        f"no log line names request.id {request_id}:\n" + "\n".join(lines)
    text = ap.stderr_text() + ap.stdout_text()
    for secret in (AGENT_TOKEN, ALICE_TOKEN, BOB_TOKEN, UPSTREAM_KEY, UPSTREAM_KEY.split()[1]):
        assert secret not in text, f"a log line holds the secret {secret[:8]}..."
