"""How the SDK reads answers, with a scripted server (httpx.MockTransport).

These cover answers the real binary is hard to provoke on demand (503 with
Retry-After, broken JSON, inconsistent objects, a server that never holds),
and check that none of them ever becomes an approval.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable, List

import httpx
import pytest

from approvalplane import (
    ApprovalPlane,
    AsyncApprovalPlane,
    ConfigurationError,
    Conflict,
    ProtocolError,
    ServerError,
    Unavailable,
)

BASE = "http://approvalplane.test"


def approval(status: str, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": "apr_0123456789abcdef0123",
        "status": status,
        "approved": status == "approved",
        "decided_by": None,
        "reason": None,
    }
    obj.update(extra)
    return obj


Handler = Callable[[httpx.Request], httpx.Response]


class Script:
    """Answers requests from a list of handlers, recording each request."""

    def __init__(self, *handlers: Handler) -> None:
        self.handlers = list(handlers)
        self.requests: List[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        handler = self.handlers.pop(0) if len(self.handlers) > 1 else self.handlers[0]
        return handler(request)


def client(script: Script, **kwargs: Any) -> ApprovalPlane:
    return ApprovalPlane(BASE, "agent-token", transport=httpx.MockTransport(script), **kwargs)


def reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Handler:
    def handler(_: httpx.Request) -> httpx.Response:
        if isinstance(body, (dict, list)):
            return httpx.Response(status, json=body, headers=headers)
        return httpx.Response(status, content=body, headers=headers)

    return handler


def test_request_shape_headers_and_poll_loop() -> None:
    script = Script(
        reply(200, approval("pending")),
        reply(200, approval("pending")),
        reply(200, approval("approved", decided_by="alice", reason="fine")),
    )
    with client(script, poll_wait=0.5) as c:
        d = c.request_approval("issue_refund", {"amount": 2400}, risk="high", policy_hints=["refund"],
                               justification="duplicate charge", timeout=10, idempotency_key="k-1")
    assert d.approved and d.decided_by == "alice" and d.reason == "fine"
    post, get1, get2 = script.requests
    assert post.method == "POST" and post.url.path == "/v1/approvals"
    assert post.headers["authorization"] == "Bearer agent-token"
    assert post.headers["idempotency-key"] == "k-1"
    assert post.headers["content-type"] == "application/json"
    body = json.loads(post.content)
    assert body == {"action": "issue_refund", "payload": {"amount": 2400}, "risk": "high",
                    "policy_hints": ["refund"], "justification": "duplicate charge", "wait": 0.5}
    for g in (get1, get2):
        assert g.method == "GET" and g.url.path == "/v1/approvals/apr_0123456789abcdef0123"
        assert g.url.params["wait"] == "0.5"
        assert g.headers["authorization"] == "Bearer agent-token"


def test_optional_fields_are_left_out() -> None:
    script = Script(reply(200, approval("approved", decided_by="policy")))
    with client(script) as c:
        assert c.request_approval("read_record").approved
    body = json.loads(script.requests[0].content)
    assert set(body) == {"action", "wait"}


def test_unavailable_with_retry_after() -> None:
    err = {"error": {"type": "store_unavailable", "message": "The approval store is unavailable."}}
    script = Script(reply(503, err, {"Retry-After": "5", "X-Request-Id": "req_1"}))
    with client(script) as c, pytest.raises(Unavailable) as info:
        c.request_approval("issue_refund", {"a": 1})
    e = info.value
    assert e.status_code == 503 and e.error_type == "store_unavailable" and e.retry_after == 5.0
    assert e.request_id == "req_1" and "req_1" in str(e)


def test_error_while_polling_raises_and_never_approves() -> None:
    err = {"error": {"type": "shutting_down", "message": "The proxy is shutting down."}}
    script = Script(reply(200, approval("pending")), reply(503, err, {"Retry-After": "2"}))
    with client(script, poll_wait=0.2) as c, pytest.raises(Unavailable):
        c.request_approval("issue_refund", {"a": 1}, timeout=5)


def test_conflict() -> None:
    err = {"error": {"type": "idempotency_conflict", "message": "key reused"}}
    with client(Script(reply(409, err))) as c, pytest.raises(Conflict) as info:
        c.request_approval("issue_refund", {"a": 1}, idempotency_key="k")
    assert info.value.error_type == "idempotency_conflict"


@pytest.mark.parametrize("status,body,exc", [
    (200, b"<html>ok</html>", ProtocolError),  # not JSON
    (200, [1, 2], ProtocolError),  # not an object
    (200, {"status": "approved", "approved": True}, ProtocolError),  # no id
    (200, approval("pending", approved=True), ProtocolError),  # approved flag without the status
    (200, approval("approved", approved=False), ProtocolError),  # the status without the flag
    (200, {"id": "apr_1", "status": "approved"}, ProtocolError),  # no flag at all
    (500, b"<html>Internal Server Error</html>", ServerError),
    (302, b"", ServerError),  # redirects are not followed
])
def test_malformed_answers_raise(status: int, body: Any, exc: type) -> None:
    with client(Script(reply(status, body))) as c, pytest.raises(exc):
        c.request_approval("issue_refund", {"a": 1})


def test_other_agents_id_is_checked() -> None:
    with client(Script(reply(200, approval("approved", id="apr_other")))) as c, \
            pytest.raises(ProtocolError):
        c.get_approval("apr_0123456789abcdef0123")


def test_a_server_that_never_holds_is_not_hammered() -> None:
    script = Script(reply(200, approval("pending")))
    started = time.monotonic()
    with client(script, poll_wait=5) as c:
        d = c.request_approval("issue_refund", {"a": 1}, timeout=2.5)
    elapsed = time.monotonic() - started
    assert d.pending and not d.approved
    assert 2.3 <= elapsed < 4
    assert len(script.requests) <= 5, len(script.requests)


def test_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPROVALPLANE_URL", "ftp://example")
    with pytest.raises(ConfigurationError):
        ApprovalPlane()
    monkeypatch.setenv("APPROVALPLANE_URL", "http://127.0.0.1:8080/")
    assert ApprovalPlane().base_url == "http://127.0.0.1:8080"
    with client(Script(reply(200, approval("approved")))) as c:
        with pytest.raises(ConfigurationError):
            c.request_approval("", {})
        with pytest.raises(ConfigurationError):
            c.request_approval("x", {"n": float("nan")})
        with pytest.raises(ConfigurationError):
            c.request_approval("x", policy_hints="refund")  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            c.request_approval("x", timeout=-1)


def test_async_client_reads_answers_the_same_way() -> None:
    script = Script(
        reply(200, approval("pending")),
        reply(200, approval("rejected", decided_by="bob", reason="no")),
    )

    async def run() -> Any:
        async with AsyncApprovalPlane(BASE, "t", transport=httpx.MockTransport(script), poll_wait=0.2) as c:
            return await c.request_approval("issue_refund", {"a": 1}, timeout=5)

    d = asyncio.run(run())
    assert d.status == "rejected" and not d.approved and d.reason == "no" and d.decided_by == "bob"
    assert [r.method for r in script.requests] == ["POST", "GET"]
