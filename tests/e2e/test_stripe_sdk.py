"""Acceptance: the official `stripe` Python SDK through ApprovalPlane.

The SDK (from PyPI), with its API base pointed at the proxy, gets a small
refund through at once. A $2,400 refund is held, and it completes after an
admin-API approval. The upstream is a local fake that records what it received.
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import stripe

AGENT_ID = "support-agent"
AGENT_TOKEN = "sk_test_agent_token"  # what the agent (the SDK) holds
REAL_KEY = "sk_live_real"  # what only the proxy holds
ALICE_TOKEN = "alice-admin-token-7f3b9c1d"

SDK_TIMEOUT = 60.0  # seconds; longer than hold_timeout so a held call is not cut by the SDK
HOLD_TIMEOUT = "30s"
AT_ONCE = 5.0  # an allowed call must come back well within this

RULES = {
    "stripe.rego": """\
package approvalplane

# A refund request to Stripe's v1 API.
refund_request if {
	input.kind == "http"
	input.upstream == "stripe"
	input.request.method == "POST"
	input.request.path == "/v1/refunds"
}

# Form values are strings; guard before converting (strict builtin errors).
refund_amount := to_number(input.request.parsed_body.amount) if {
	refund_request
	is_string(input.request.parsed_body.amount)
}

approval contains {
	"id": "stripe.refund.large",
	"reason": "refunds over $500.00 need finance on-call",
	"route": "finance-oncall",
	"risk": "high",
	"action": "issue_refund",
	"summary": {"amount": input.request.parsed_body.amount},
} if {
	refund_amount > 50000
}

allow contains {"id": "stripe.refund.small", "reason": "refunds up to $500.00 are routine"} if {
	refund_amount <= 50000
}

allow contains {"id": "stripe.read", "reason": "reads are harmless"} if {
	input.kind == "http"
	input.upstream == "stripe"
	input.request.method == "GET"
}
""",
}

APPROVAL_FIELDS = {
    "id", "status", "route", "routes", "agent", "action", "risk", "summary", "justification",
    "rule_ids", "body_sha256", "created_at", "decided_by", "decided_at", "reason", "approvals",
    "quorum",
}

SECRETS = {
    "STRIPE_AUTH": f"Bearer {REAL_KEY}",
    "SUPPORT_AGENT_TOKEN": AGENT_TOKEN,
    "ALICE_TOKEN": ALICE_TOKEN,
}


def stripe_config(upstream_url: str) -> dict[str, Any]:
    return {
        "server": {"hold_timeout": HOLD_TIMEOUT},
        "upstream": [{
            "name": "stripe",
            "url": upstream_url,
            "inject_header": "Authorization",
            "inject_value_env": "STRIPE_AUTH",
        }],
        "agent": [{"id": AGENT_ID, "token_env": "SUPPORT_AGENT_TOKEN"}],
        "approver": [{"id": "alice", "token_env": "ALICE_TOKEN"}],
        "routes": {"finance-oncall": {"approvers": ["alice"]}},
        "policy": {"rules": "rules", "default": "deny"},
        "audit": {"path": "audit"},
    }


# --------------------------------------------------------------------------
# SDK plumbing
# --------------------------------------------------------------------------


@dataclass
class SentRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


class RecordingRequestsClient(stripe.RequestsClient):
    """The SDK's own requests-based HTTP client, remembering what it sent."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.sent: list[SentRequest] = []
        self._sent_lock = threading.Lock()

    def request(self, method, url, headers, post_data=None):
        if isinstance(post_data, str):
            body = post_data.encode("utf-8")
        else:
            body = bytes(post_data or b"")
        with self._sent_lock:
            self.sent.append(SentRequest(method.upper(), url, dict(headers or {}), body))
        return super().request(method, url, headers, post_data)

    def last(self, method: str = "POST") -> SentRequest:
        with self._sent_lock:
            matches = [s for s in self.sent if s.method == method]
        assert matches, f"the SDK sent no {method} request"
        return matches[-1]


@pytest.fixture
def stripe_sdk():
    """Global stripe module settings for the test, restored afterwards.

    No retries (a retry would be a second request), no telemetry header (it
    would carry the previous request's id), the SDK's requests client with a
    timeout above the proxy's hold_timeout.
    """
    names = ("api_key", "api_base", "max_network_retries", "default_http_client",
             "enable_telemetry")
    saved = {n: getattr(stripe, n) for n in names}
    client = RecordingRequestsClient(timeout=SDK_TIMEOUT)
    stripe.enable_telemetry = False
    stripe.max_network_retries = 0
    stripe.default_http_client = client
    try:
        yield client
    finally:
        for n, v in saved.items():
            setattr(stripe, n, v)


class SdkCall(threading.Thread):
    """Runs one SDK call in the background and keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any], name: str = "sdk-call"):
        super().__init__(name=name, daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.started_at = 0.0
        self.ended_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
        finally:
            self.ended_at = time.monotonic()

    def begin(self) -> "SdkCall":
        self.start()
        return self

    def outcome(self) -> str:
        if self.is_alive():
            return "still running"
        if self.error is not None:
            return f"raised {describe_stripe_error(self.error)}"
        return f"returned {self.result!r}"[:2000]

    def finish(self, timeout: float, context: Callable[[str], str]) -> "SdkCall":
        self.join(timeout)
        if self.is_alive():
            pytest.fail(context(f"the SDK call did not return within {timeout}s after the decision"),
                        pytrace=False)
        return self


def describe_stripe_error(exc: BaseException) -> str:
    if isinstance(exc, stripe.StripeError):
        return (f"{type(exc).__name__} http_status={exc.http_status} "
                f"json_body={exc.json_body!r} http_body={str(exc.http_body)[:500]!r}")
    return repr(exc)


def sdk_call_now(fn: Callable[[], Any], ap) -> tuple[Any, float]:
    """Run an SDK call that must succeed; returns (result, seconds taken)."""
    t0 = time.monotonic()
    try:
        result = fn()
    except stripe.StripeError as exc:
        ap.fail(f"the SDK call failed: {describe_stripe_error(exc)}")
    return result, time.monotonic() - t0


def wait_until(probe: Callable[[], Any], timeout: float, message: Callable[[], str]) -> Any:
    """Poll `probe` every 0.1s until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s: {message()}", pytrace=False)
        time.sleep(0.1)


def form(body: bytes) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True)


def agent_id_of(approval: dict[str, Any]) -> Any:
    agent = approval.get("agent")
    return agent.get("id") if isinstance(agent, dict) else agent


def sha256_hex_of(value: Any) -> str:
    text = str(value or "").lower()
    return text[len("sha256:"):] if text.startswith("sha256:") else text


def assert_reached_upstream_as_sent(rec, sent: SentRequest) -> None:
    """The upstream got the SDK's request with the real key in place of the agent's."""
    url = urllib.parse.urlsplit(sent.url)
    assert url.path.startswith("/stripe/"), sent.url
    expected_path = url.path[len("/stripe"):] + (f"?{url.query}" if url.query else "")
    assert rec.method == sent.method
    assert rec.path == expected_path
    assert rec.header_values("Authorization") == [f"Bearer {REAL_KEY}"], rec.headers
    for name, value in rec.headers:
        assert AGENT_TOKEN not in value, f"the agent token reached the upstream in {name}"
    assert form(rec.body) == form(sent.body), "form fields differ from what the SDK sent"
    assert rec.body == sent.body, "body bytes differ from what the SDK sent"
    assert rec.header("Idempotency-Key") == sent.header("Idempotency-Key")
    assert (rec.header("Content-Type") or "").startswith("application/x-www-form-urlencoded")


def finish_and_verify_audit(ap) -> None:
    rc = ap.stop()
    assert rc == 0, ap.context(f"approvalplane serve exited with {rc} after SIGTERM, expected 0")
    code, output = ap.audit_verify()
    assert code == 0, ap.context(f"`audit verify {ap.audit_dir}` exited {code}:\n{output}")
    chains = sorted(ap.audit_dir.glob("*.jsonl"))
    assert chains, f"no chain file (*.jsonl) in {ap.audit_dir}"
    records = ap.audit_records()
    assert records, "the audit chain is empty"
    for rec in records:
        missing = {"v", "chain", "seq", "ts", "kind", "prev", "hash"} - set(rec)
        assert not missing, f"audit record lacks {missing}: {rec}"
    text = ap.audit_text()
    for secret in (REAL_KEY, AGENT_TOKEN, ALICE_TOKEN):
        assert secret not in text, f"a secret ({secret[:6]}...) appears in the audit log"


def start_proxy(approvalplane, fake_stripe):
    return approvalplane(stripe_config(fake_stripe.url), rules=RULES, secrets=SECRETS)


def point_sdk_at(ap) -> None:
    stripe.api_key = AGENT_TOKEN
    stripe.api_base = ap.proxy_url + "/stripe"


# --------------------------------------------------------------------------
# the fake itself (no proxy): it must speak what the SDK accepts
# --------------------------------------------------------------------------


def test_fake_stripe_speaks_the_sdk_wire_format(fake_stripe, stripe_sdk):
    stripe.api_key = REAL_KEY
    stripe.api_base = fake_stripe.url

    refund = stripe.Refund.create(charge="ch_direct", amount=2000, metadata={"order": "6735"})
    assert isinstance(refund, stripe.Refund)
    assert refund.id.startswith("re_")
    assert refund.amount == 2000 and refund.charge == "ch_direct"
    assert refund.status == "succeeded" and refund.currency == "usd"
    assert refund.metadata["order"] == "6735"
    assert refund.last_response.request_id.startswith("req_")

    (rec,) = fake_stripe.requests
    sent = stripe_sdk.last("POST")
    assert rec.body == sent.body
    assert rec.header("Authorization") == f"Bearer {REAL_KEY}"
    assert rec.header("Idempotency-Key") == sent.header("Idempotency-Key")

    again = stripe.Refund.retrieve(refund.id)
    assert again.id == refund.id and again.amount == 2000

    stripe.api_key = "sk_wrong"
    with pytest.raises(stripe.AuthenticationError) as info:
        stripe.Refund.create(charge="ch_direct", amount=2000)
    assert info.value.http_status == 401

    # a proxy-style refusal body maps onto a StripeError with the JSON kept
    fake_stripe.responder = lambda req: (403, [("Content-Type", "application/json")], {
        "error": {"type": "approval_rejected", "message": "rejected", "reason": "no",
                  "approval_id": "ap_1", "decided_by": "alice"}})
    stripe.api_key = REAL_KEY
    with pytest.raises(stripe.StripeError) as info:
        stripe.Refund.create(charge="ch_direct", amount=2000)
    assert info.value.http_status == 403
    assert info.value.json_body["error"]["type"] == "approval_rejected"


# --------------------------------------------------------------------------
# through the proxy
# --------------------------------------------------------------------------


def test_small_refund_goes_through_at_once(approvalplane, fake_stripe, stripe_sdk):
    ap = start_proxy(approvalplane, fake_stripe)
    point_sdk_at(ap)

    refund, took = sdk_call_now(lambda: stripe.Refund.create(charge="ch_small", amount=2000), ap)
    assert took < AT_ONCE, f"an allowed $20 refund took {took:.1f}s"
    assert refund.object == "refund" and refund.amount == 2000 and refund.status == "succeeded"

    sent = stripe_sdk.last("POST")
    assert sent.header("Authorization") == f"Bearer {AGENT_TOKEN}"
    assert sent.url == ap.proxy_url + "/stripe/v1/refunds"
    posts = fake_stripe.matching("POST", "/v1/refunds")
    assert len(posts) == 1, fake_stripe.describe()
    assert_reached_upstream_as_sent(posts[0], sent)
    assert posts[0].form_dict() == {"charge": "ch_small", "amount": "2000"}
    # the upstream's answer was relayed unchanged
    assert refund.id in fake_stripe.responder.refunds
    assert ap.admin(ALICE_TOKEN).list("pending") == []

    # reads are allowed too
    got, took = sdk_call_now(lambda: stripe.Refund.retrieve(refund.id), ap)
    assert took < AT_ONCE and got.id == refund.id and got.amount == 2000
    gets = fake_stripe.matching("GET", f"/v1/refunds/{refund.id}")
    assert len(gets) == 1 and gets[0].header_values("Authorization") == [f"Bearer {REAL_KEY}"]

    # the same through a StripeClient with base_addresses
    client = stripe.StripeClient(AGENT_TOKEN, base_addresses={"api": ap.proxy_url + "/stripe"},
                                 max_network_retries=0, http_client=stripe_sdk)
    t0 = time.monotonic()
    refund2 = client.v1.refunds.create(params={"charge": "ch_small2", "amount": 1500})
    assert time.monotonic() - t0 < AT_ONCE
    assert refund2.amount == 1500 and refund2.id != refund.id
    posts = fake_stripe.matching("POST", "/v1/refunds")
    assert len(posts) == 2, fake_stripe.describe()
    assert_reached_upstream_as_sent(posts[1], stripe_sdk.last("POST"))

    assert len(fake_stripe.requests) == 3, fake_stripe.describe()
    finish_and_verify_audit(ap)


def test_large_refund_is_held_until_approved_and_a_grant_is_used_once(
        approvalplane, fake_stripe, stripe_sdk):
    ap = start_proxy(approvalplane, fake_stripe)
    point_sdk_at(ap)
    alice = ap.admin(ALICE_TOKEN)
    assert alice.list("pending") == []

    def large_refund():
        return stripe.Refund.create(charge="ch_large", amount=240000)

    def wait_pending(call: SdkCall, exclude: set[str] = frozenset()) -> dict[str, Any]:
        def probe():
            assert call.is_alive(), ap.context(
                f"the SDK call ended before its approval was pending: {call.outcome()}\n"
                + fake_stripe.describe())
            return next((a for a in alice.list("pending") if a.get("id") not in exclude), None)

        return wait_until(probe, 15.0, message=lambda: ap.context(
            "no pending approval appeared for the held $2,400 refund"))

    # ---- 1. a $2,400 refund is held ------------------------------------
    call = SdkCall(large_refund, name="large-refund-1").begin()
    pending = wait_pending(call)
    first_id = pending["id"]
    sent = stripe_sdk.last("POST")
    assert dict(form(sent.body)) == {"charge": "ch_large", "amount": "240000"}

    missing = APPROVAL_FIELDS - set(pending)
    assert not missing, f"approval object lacks {sorted(missing)}: {pending}"
    assert pending["status"] == "pending"
    assert pending["route"] == "finance-oncall"
    assert "finance-oncall" in pending["routes"]
    assert pending["risk"] == "high"
    assert agent_id_of(pending) == AGENT_ID
    assert pending["action"] == "issue_refund"
    assert "stripe.refund.large" in pending["rule_ids"]
    assert pending["summary"].get("amount") == "240000"
    assert sha256_hex_of(pending["body_sha256"]) == hashlib.sha256(sent.body).hexdigest()
    assert pending["decided_by"] is None and pending["decided_at"] is None
    assert pending["approvals"] == []

    assert alice.get(first_id)["status"] == "pending"
    time.sleep(0.5)  # give a wrongly forwarded request time to show up
    assert call.is_alive(), f"the held call returned before any decision: {call.outcome()}"
    assert fake_stripe.matching("POST", "/v1/refunds") == [], \
        "the held refund reached the upstream before approval: " + fake_stripe.describe()

    # ---- 2. approved through the admin API: the held call completes -----
    decided = alice.decide(first_id, "approve", "verified duplicate charge with the customer")
    assert decided["id"] == first_id
    assert decided["status"] == "approved"
    assert decided["decided_by"] == "alice"
    assert decided["decided_at"]
    assert "alice" in decided["approvals"]

    call.finish(20.0, ap.context)
    assert call.error is None, ap.context(f"the approved refund failed: {call.outcome()}")
    refund = call.result
    assert refund.object == "refund" and refund.amount == 240000 and refund.status == "succeeded"
    assert refund.charge == "ch_large"

    posts = fake_stripe.matching("POST", "/v1/refunds")
    assert len(posts) == 1, fake_stripe.describe()
    assert posts[0].form_dict() == {"charge": "ch_large", "amount": "240000"}
    assert_reached_upstream_as_sent(posts[0], sent)
    assert refund.id in fake_stripe.responder.refunds

    again = alice.decide(first_id, "approve", expect=409)
    assert "already_decided" in str(again), again
    assert alice.get(first_id)["status"] == "approved"

    # ---- 3. the same refund again: a NEW approval, which alice rejects --
    call2 = SdkCall(large_refund, name="large-refund-2").begin()
    pending2 = wait_pending(call2, exclude={first_id})
    second_id = pending2["id"]
    assert second_id != first_id
    sent2 = stripe_sdk.last("POST")
    assert sent2.body == sent.body
    assert sent2.header("Idempotency-Key") != sent.header("Idempotency-Key")
    assert pending2["status"] == "pending" and pending2["action"] == "issue_refund"
    assert alice.get(first_id)["status"] == "approved"
    assert len(fake_stripe.matching("POST", "/v1/refunds")) == 1, \
        "the grant was used a second time: " + fake_stripe.describe()

    reason = "refund already issued for this charge"
    rejected = alice.decide(second_id, "reject", reason)
    assert rejected["status"] == "rejected"
    assert rejected["decided_by"] == "alice"
    assert rejected["reason"] == reason

    call2.finish(20.0, ap.context)
    err = call2.error
    assert isinstance(err, stripe.StripeError), \
        ap.context(f"expected a stripe error for the rejected refund, got: {call2.outcome()}")
    assert err.http_status == 403, describe_stripe_error(err)
    body = err.json_body or {}
    assert body.get("error", {}).get("type") == "approval_rejected", describe_stripe_error(err)
    assert body["error"].get("reason") == reason, describe_stripe_error(err)
    assert body["error"].get("approval_id") == second_id, describe_stripe_error(err)
    assert body["error"].get("decided_by") == "alice", describe_stripe_error(err)
    assert len(fake_stripe.matching("POST", "/v1/refunds")) == 1, fake_stripe.describe()

    # ---- 4. and once more right away: refused at once (reject_memory) ---
    t0 = time.monotonic()
    with pytest.raises(stripe.StripeError) as info:
        large_refund()
    assert time.monotonic() - t0 < AT_ONCE
    assert info.value.http_status == 403, describe_stripe_error(info.value)
    assert info.value.json_body["error"]["type"] == "approval_rejected", \
        describe_stripe_error(info.value)
    assert info.value.json_body["error"].get("approval_id") == second_id
    assert alice.list("pending") == []
    assert len(fake_stripe.matching("POST", "/v1/refunds")) == 1, fake_stripe.describe()

    finish_and_verify_audit(ap)
