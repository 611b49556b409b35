"""The Python SDK against the real `approvalplane serve`.

The server's hold_timeout is 1 s, so every wait longer than that goes through
the SDK's GET ?wait= long-poll loop after the first POST. People decide through
the admin API on the control listener, as the approver `alice`.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import pytest

import approvalplane
from approvalplane import (
    ApprovalPlane,
    AsyncApprovalPlane,
    Conflict,
    Decision,
    NotFound,
    TransportError,
    Unauthorized,
    arequest_approval,
    request_approval,
)

SDK_TIMEOUT = 15.0
APPROVER_ID = "alice"  # the approver of route `ops` in conftest.py
Server = Any  # conftest.Server


def in_background(fn: Callable[..., Decision], *args: Any, **kwargs: Any) -> tuple[ThreadPoolExecutor, Future]:
    pool = ThreadPoolExecutor(max_workers=1)
    return pool, pool.submit(fn, *args, **kwargs)


def seen_by_admin(server: Server, justification: str) -> dict[str, Any]:
    """The pending approval that carries `justification` (unique per test)."""
    return server.admin.wait_for_approval(lambda a: a.get("justification") == justification, timeout=10)


def test_allowed_by_policy_answers_at_once(server: Server, unique: str) -> None:
    started = time.monotonic()
    d = request_approval("read_record", {"record": unique}, base_url=server.url, token=server.token)
    assert time.monotonic() - started < 3
    assert d.approved is True
    assert d.status == "approved" and d.final and not d.pending
    assert d.decided_by == "policy"
    assert d.reason == "reading a record is safe"
    assert d.approval_id and d.approval_id.startswith("apr_")
    assert d.approval["approved"] is True and d.approval["action"] == "read_record"


def test_approved_by_a_person_while_waiting(server: Server, unique: str) -> None:
    pool, fut = in_background(
        request_approval,
        "issue_refund",
        {"customer": "cus_4193", "amount": 2400.00, "order": unique},
        risk="high",
        policy_hints=["refund", "over_threshold"],
        justification=unique,
        timeout=SDK_TIMEOUT,
        base_url=server.url,
        token=server.token,
    )
    with pool:
        pending = seen_by_admin(server, unique)
        assert pending["status"] == "pending" and pending["action"] == "issue_refund"
        time.sleep(1.5)  # longer than hold_timeout: the SDK is long-polling with GET by now
        assert not fut.done(), "request_approval returned before anyone decided"
        server.admin.approve(pending["id"], "verified with the customer")
        d = fut.result(timeout=SDK_TIMEOUT)
    assert d.approved is True
    assert d.status == "approved"
    assert d.decided_by == APPROVER_ID
    assert d.reason == "verified with the customer"
    assert d.approval_id == pending["id"]
    assert d.approval["justification"] == unique
    assert d.approval["risk"] == "high"


def test_rejected_with_a_reason(server: Server, unique: str) -> None:
    pool, fut = in_background(
        request_approval,
        "issue_refund",
        {"customer": "cus_1", "amount": 99999, "order": unique},
        justification=unique,
        timeout=SDK_TIMEOUT,
        base_url=server.url,
        token=server.token,
    )
    with pool:
        pending = seen_by_admin(server, unique)
        server.admin.reject(pending["id"], "customer already refunded")
        d = fut.result(timeout=SDK_TIMEOUT)
    assert d.approved is False
    assert d.status == "rejected"
    assert d.reason == "customer already refunded"
    assert d.decided_by == APPROVER_ID
    assert d.approval_id == pending["id"]
    assert "customer already refunded" in d.message and APPROVER_ID in d.message


def test_expired_is_not_a_rejection(server: Server, unique: str) -> None:
    started = time.monotonic()
    d = request_approval("short_lived", {"n": unique}, timeout=SDK_TIMEOUT, base_url=server.url,
                         token=server.token)
    elapsed = time.monotonic() - started
    assert d.status == "expired", d
    assert d.approved is False
    assert d.decided_by is None
    assert 1.5 <= elapsed < 10, elapsed  # the rule's expires_after is 2s


def test_client_timeout_returns_pending_then_resumes(server: Server, unique: str) -> None:
    started = time.monotonic()
    d = request_approval("issue_refund", {"order": unique}, justification=unique, timeout=1.5,
                         base_url=server.url, token=server.token)
    elapsed = time.monotonic() - started
    assert d.status == "pending" and d.pending and not d.final
    assert d.approved is False
    assert d.decided_by is None
    assert d.reason == d.message and "not approved" in d.reason, "an agent always has a why to say"
    assert 1.2 <= elapsed < 5, elapsed

    # timeout=0 asks once and answers at once: the same pending approval.
    again = request_approval("issue_refund", {"order": unique}, justification=unique, timeout=0,
                             base_url=server.url, token=server.token)
    assert again.pending and again.approval_id == d.approval_id

    assert d.approval_id is not None
    server.admin.approve(d.approval_id)
    with ApprovalPlane(server.url, server.token) as client:
        resumed = client.wait_for_decision(d.approval_id, timeout=SDK_TIMEOUT)
    assert resumed.approved and resumed.approval_id == d.approval_id


def test_identical_retry_attaches_to_the_same_approval(server: Server, unique: str) -> None:
    payload = {"customer": "cus_9", "amount": 2400, "order": unique}
    with ApprovalPlane(server.url, server.token) as client:
        first = client.request_approval("issue_refund", payload, timeout=0)
        # Same action and payload, keys in another order: the same approval.
        second = client.request_approval("issue_refund", dict(reversed(list(payload.items()))), timeout=0)
        assert first.pending and second.pending
        assert second.approval_id == first.approval_id

        assert first.approval_id is not None
        server.admin.approve(first.approval_id, "ok")
        # After the decision (within grant_ttl) a retry gets the decided approval.
        third = client.request_approval("issue_refund", payload, timeout=SDK_TIMEOUT)
    assert third.approved and third.approval_id == first.approval_id
    assert third.decided_by == APPROVER_ID


def test_idempotency_key(server: Server, unique: str) -> None:
    key = f"idem-{unique}"
    with ApprovalPlane(server.url, server.token) as client:
        a = client.request_approval("issue_refund", {"amount": 1, "order": unique}, timeout=0,
                                    idempotency_key=key)
        b = client.request_approval("issue_refund", {"amount": 1, "order": unique}, timeout=0,
                                    idempotency_key=key)
        assert a.pending and b.approval_id == a.approval_id
        with pytest.raises(Conflict) as info:
            client.request_approval("issue_refund", {"amount": 2, "order": unique}, timeout=0,
                                    idempotency_key=key)
    assert info.value.status_code == 409
    assert info.value.error_type == "idempotency_conflict"


def test_idempotency_key_is_bound_to_action_and_payload(server: Server, unique: str) -> None:
    key = f"idem-action-{unique}"
    payload = {"amount": 1, "order": unique}
    with ApprovalPlane(server.url, server.token) as client:
        a = client.request_approval("issue_refund", payload, timeout=0, idempotency_key=key)
        # Another action under the same key is refused, never answered with the
        # first call's approval.
        with pytest.raises(Conflict) as info:
            client.request_approval("read_record", payload, timeout=0, idempotency_key=key)
        assert info.value.error_type == "idempotency_conflict"
        # The same call under another key (or none) is the same action: one approval.
        b = client.request_approval("issue_refund", payload, timeout=0, idempotency_key=f"{key}-other")
        c = client.request_approval("issue_refund", payload, timeout=0)
    assert a.pending and b.approval_id == a.approval_id and c.approval_id == a.approval_id


def test_a_denied_call_reserves_no_idempotency_key(server: Server, unique: str) -> None:
    key = f"idem-denied-{unique}"
    with ApprovalPlane(server.url, server.token) as client:
        denied = client.request_approval("drop_database", {"db": unique}, timeout=0, idempotency_key=key)
        assert denied.status == "denied"
        # The corrected call may use the same key: nothing was opened under it.
        fixed = client.request_approval("issue_refund", {"order": unique}, timeout=0, idempotency_key=key)
    assert fixed.pending


def test_policy_denial_is_a_decision(server: Server, unique: str) -> None:
    d = request_approval("drop_database", {"db": unique}, base_url=server.url, token=server.token)
    assert d.approved is False
    assert d.status == "denied"
    assert d.decided_by == "policy"
    assert d.rule == "api.drop"
    assert d.reason and "never allowed" in d.reason
    assert d.approval_id is None
    assert d.message == d.reason


@pytest.mark.parametrize("token", ["not-the-agent-token", None])
def test_bad_or_missing_token_raises(server: Server, unique: str, token: str | None,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPROVALPLANE_TOKEN", raising=False)
    with pytest.raises(Unauthorized) as info:
        request_approval("read_record", {"r": unique}, base_url=server.url, token=token)
    assert info.value.status_code == 401
    assert info.value.error_type == "agent_unauthorized"
    assert isinstance(info.value, approvalplane.ApprovalPlaneError)


def test_nothing_listening_raises_transport_error(unique: str, free_port: int) -> None:
    url = f"http://127.0.0.1:{free_port}"
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        request_approval("issue_refund", {"o": unique}, base_url=url, token="t", timeout=SDK_TIMEOUT)
    assert time.monotonic() - started < 5
    assert url in str(info.value)
    with pytest.raises(TransportError):
        asyncio.run(arequest_approval("issue_refund", {"o": unique}, base_url=url, token="t"))


def test_base_url_and_token_from_the_environment(server: Server, unique: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPROVALPLANE_URL", server.url + "/")
    monkeypatch.setenv("APPROVALPLANE_TOKEN", server.token)
    d = request_approval("read_record", {"r": unique})
    assert d.approved and d.decided_by == "policy"


def test_another_agents_approval_is_not_found(server: Server, unique: str) -> None:
    mine = request_approval("issue_refund", {"order": unique}, timeout=0, base_url=server.url,
                            token=server.token)
    assert mine.approval_id is not None
    with ApprovalPlane(server.url, server.other_token) as other:
        with pytest.raises(NotFound):
            other.get_approval(mine.approval_id)
    with ApprovalPlane(server.url, server.token) as me:
        assert me.get_approval(mine.approval_id).pending


def test_async_request_approval(server: Server, unique: str) -> None:
    async def scenario() -> tuple[Decision, Decision]:
        def approve_when_seen() -> None:
            pending = seen_by_admin(server, unique)
            time.sleep(1.2)
            server.admin.approve(pending["id"])

        asked = arequest_approval("issue_refund", {"order": unique}, justification=unique,
                                  timeout=SDK_TIMEOUT, base_url=server.url, token=server.token)
        decision, _ = await asyncio.gather(asked, asyncio.to_thread(approve_when_seen))
        async with AsyncApprovalPlane(server.url, server.token) as client:
            denied = await client.request_approval("drop_database", {"db": unique})
        return decision, denied

    decision, denied = asyncio.run(scenario())
    assert decision.approved and decision.decided_by == APPROVER_ID
    assert denied.status == "denied" and not denied.approved
