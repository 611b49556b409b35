"""Acceptance: the official `mcp` Python client drives ApprovalPlane's MCP server.

`request_approval` is called over Streamable HTTP (`/mcp`, both the
2026-07-28 discovery path and the 2025-11-25 handshake) and over stdio
(`approvalplane mcp`, a front end of the running `serve`), through
pending -> approved and through rejected.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from conftest import require_binary, wait_until

AGENT_ID = "support-agent"
AGENT_TOKEN = "mcp-agent-token-41c2"
ALICE_TOKEN = "alice-admin-token-mcp-9a"
HOLD_TIMEOUT = "30s"

RULES = {
    "api.rego": """\
package approvalplane

approval contains {
	"id": "refund.large",
	"reason": "refunds over $500 need finance on-call",
	"route": "finance-oncall",
	"risk": "high",
	"summary": {"amount": sprintf("%v", [input.payload.amount])},
} if {
	input.kind == "api"
	input.action == "issue_refund"
	input.payload.amount > 500
}

allow contains {"id": "refund.small", "reason": "small refunds are routine"} if {
	input.kind == "api"
	input.action == "issue_refund"
	input.payload.amount <= 500
}
""",
}

SECRETS = {"SUPPORT_AGENT_TOKEN": AGENT_TOKEN, "ALICE_TOKEN": ALICE_TOKEN}


def config() -> dict[str, Any]:
    return {
        "server": {"hold_timeout": HOLD_TIMEOUT},
        "upstream": [{"name": "echo", "url": "http://127.0.0.1:9"}],
        "agent": [{"id": AGENT_ID, "token_env": "SUPPORT_AGENT_TOKEN"}],
        "approver": [{"id": "alice", "token_env": "ALICE_TOKEN"}],
        "routes": {"finance-oncall": {"approvers": ["alice"]}},
        "policy": {"rules": "rules", "default": "deny"},
        "audit": {"path": "audit"},
    }


@pytest.fixture
def ap(approvalplane):
    return approvalplane(config(), rules=RULES, secrets=SECRETS)


def http_client(ap, mode: str = "auto") -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, timeout=60.0)
    return Client(streamable_http_client(ap.proxy_url + "/mcp", http_client=http), mode=mode)


def stdio_client(ap) -> Client:
    params = StdioServerParameters(
        command=str(require_binary()),
        args=["mcp", "--config", str(ap.config_path)],
        env={**ap.env},
        cwd=str(ap.workdir),
    )
    return Client(params)


def structured(result) -> dict[str, Any]:
    assert result.structured_content is not None, result
    return result.structured_content


def texts(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def approve_when_pending(admin, decide: str, reason: str | None = None) -> dict[str, Any]:
    def find():
        for a in admin.list("pending"):
            if a["action"] == "issue_refund":
                return a
        return None

    a = await asyncio.to_thread(wait_until, find, 15.0)
    if decide == "approve":
        await asyncio.to_thread(admin.approve, a["id"])
    else:
        await asyncio.to_thread(admin.reject, a["id"], reason)
    return a


async def flow(client: Client, ap, amount: int, decide: str) -> tuple[Any, dict[str, Any]]:
    admin = ap.admin(ALICE_TOKEN)
    async with client as c:
        tools = await c.list_tools()
        names = {t.name for t in tools.tools}
        assert {"request_approval", "get_approval"} <= names
        progress: list[Any] = []

        async def on_progress(p, total, message):
            progress.append((p, message))

        call = asyncio.create_task(c.call_tool(
            "request_approval",
            {"action": "issue_refund", "payload": {"amount": amount, "charge": "ch_1"},
             "risk": "high", "justification": "duplicate charge"},
            progress_callback=on_progress,
        ))
        decided = await approve_when_pending(admin, decide, "customer already refunded")
        result = await asyncio.wait_for(call, 30)
        return result, decided


def check_approved(result, decided):
    assert result.is_error is False, texts(result)
    s = structured(result)
    assert s["approved"] is True and s["status"] == "approved"
    assert s["id"] == decided["id"]
    assert s["decided_by"] == "alice"
    assert json.loads(result.content[0].text)["id"] == decided["id"]


def check_rejected(result, decided):
    assert result.is_error is True
    s = structured(result)
    assert s["approved"] is False and s["status"] == "rejected"
    text = texts(result)
    assert "alice" in text and "customer already refunded" in text and decided["id"] in text
    assert "do not retry" in text.lower()


def test_http_discover_pending_then_approved(ap):
    result, decided = asyncio.run(flow(http_client(ap), ap, 2400, "approve"))
    check_approved(result, decided)


def test_http_legacy_handshake_rejected(ap):
    result, decided = asyncio.run(flow(http_client(ap, mode="legacy"), ap, 2400, "reject"))
    check_rejected(result, decided)


def test_http_small_refund_approved_at_once(ap):
    async def go():
        async with http_client(ap) as c:
            return await c.call_tool("request_approval", {"action": "issue_refund", "payload": {"amount": 20}})
    r = asyncio.run(go())
    assert r.is_error is False and structured(r)["approved"] is True


def test_http_wrong_token_refused(ap):
    async def go():
        http = httpx2.AsyncClient(headers={"Authorization": "Bearer nope"}, timeout=10.0)
        async with Client(streamable_http_client(ap.proxy_url + "/mcp", http_client=http)) as c:
            await c.list_tools()
    with pytest.raises(Exception):
        asyncio.run(go())


def test_stdio_pending_then_approved(ap):
    result, decided = asyncio.run(flow(stdio_client(ap), ap, 2400, "approve"))
    check_approved(result, decided)


def test_stdio_rejected(ap):
    result, decided = asyncio.run(flow(stdio_client(ap), ap, 2400, "reject"))
    check_rejected(result, decided)


def test_stdio_binds_no_port_and_writes_no_audit(ap):
    before = sorted(p.name for p in ap.audit_dir.glob("*.jsonl"))
    async def go():
        async with stdio_client(ap) as c:
            return await c.call_tool("request_approval", {"action": "issue_refund", "payload": {"amount": 5}})
    r = asyncio.run(go())
    assert structured(r)["approved"] is True
    after = sorted(p.name for p in ap.audit_dir.glob("*.jsonl"))
    assert before == after, "approvalplane mcp wrote its own audit chain"
