"""Acceptance: the official `mcp` client calls a real MCP server through the
gateway at `/mcp/{name}`.

The server is built with the `mcp` package (mcp_tool_server.py), reached once
as a Streamable-HTTP upstream and once as a stdio child. An allowed call
passes through unchanged; a gated call is held and executes after approval; a
rejected call returns isError with the reason and never reaches the server.
The audit log records the proxy, the API and MCP with the same record shapes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import requests
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import free_port, wait_for_tcp, wait_until

SERVER = Path(__file__).with_name("mcp_tool_server.py")
AGENT_TOKEN = "gw-agent-token-77d1"
ALICE_TOKEN = "alice-admin-token-gw-21"

RULES = {
    "mcp.rego": """\
package approvalplane

allow contains {"id": "mcp.reads", "reason": "harmless tools"} if {
	input.kind == "mcp"
	input.mcp.tool in {"echo", "show_env"}
}

approval contains {
	"id": "mcp.delete",
	"reason": "deleting a repository needs a person",
	"route": "eng-oncall",
	"risk": "critical",
	"summary": {"repo": input.mcp.arguments.repo},
} if {
	input.kind == "mcp"
	input.mcp.tool == "delete_repo"
}

allow contains {"id": "api.ok", "reason": "asks are fine"} if input.kind == "api"

allow contains {"id": "http.get", "reason": "reads"} if {
	input.kind == "http"
	input.request.method == "GET"
}
""",
}


def calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(l) for l in log.read_text().splitlines() if l.strip()]


@pytest.fixture
def http_tool_server(tmp_path):
    port = free_port()
    log = tmp_path / "http-calls.jsonl"
    proc = subprocess.Popen([sys.executable, str(SERVER), str(log), "http", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_for_tcp("127.0.0.1", port, 20), "the MCP tool server did not start"
    yield f"http://127.0.0.1:{port}/mcp", log
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def gw(approvalplane, http_tool_server, fake_upstream, tmp_path):
    url, http_log = http_tool_server
    stdio_log = tmp_path / "stdio-calls.jsonl"
    up = fake_upstream()
    ap = approvalplane({
        "server": {"hold_timeout": "30s"},
        "upstream": [{"name": "echo", "url": up.url}],
        "agent": [{"id": "dev-agent", "token_env": "DEV_AGENT_TOKEN"}],
        "approver": [{"id": "alice", "token_env": "ALICE_TOKEN"}],
        "routes": {"eng-oncall": {"approvers": ["alice"]}},
        "policy": {"rules": "rules", "default": "deny"},
        "audit": {"path": "audit"},
        "mcp_server": [
            {"name": "tools", "url": url},
            {"name": "local", "command": [sys.executable, str(SERVER), str(stdio_log), "stdio"],
             "env": {"TOOL_TOKEN": "TOOL_TOKEN_FOR_MCP"}},
        ],
    }, rules=RULES, secrets={"DEV_AGENT_TOKEN": AGENT_TOKEN, "ALICE_TOKEN": ALICE_TOKEN,
                             "TOOL_TOKEN_FOR_MCP": "s3cret-tool-token"})
    ap.http_log = http_log
    ap.stdio_log = stdio_log
    return ap


def client(ap, name: str, mode: str = "auto") -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, timeout=60.0)
    return Client(streamable_http_client(f"{ap.proxy_url}/mcp/{name}", http_client=http), mode=mode)


def text(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def decide_when_pending(ap, decision: str, reason: str | None = None) -> dict[str, Any]:
    admin = ap.admin(ALICE_TOKEN)
    a = await asyncio.to_thread(admin.wait_for_approval, lambda a: a["action"].endswith("delete_repo") or
                                a["summary"].get("repo") is not None, "pending", 20.0)
    if decision == "approve":
        await asyncio.to_thread(admin.approve, a["id"])
    else:
        await asyncio.to_thread(admin.reject, a["id"], reason)
    return a


async def scenario(ap, name: str, log: Path, mode: str = "auto") -> None:
    async with client(ap, name, mode) as c:
        tools = {t.name for t in (await c.list_tools()).tools}
        assert {"echo", "delete_repo"} <= tools

        # Allowed: passes unchanged.
        r = await c.call_tool("echo", {"text": "hello"})
        assert r.is_error is False and text(r) == "echo: hello"
        assert calls(log)[-1] == {"tool": "echo", "args": {"text": "hello"}}

        # Gated: held, executes after approval.
        call = asyncio.create_task(c.call_tool("delete_repo", {"repo": "acme/web"}))
        await asyncio.sleep(0.5)
        assert not call.done()
        assert not any(x["tool"] == "delete_repo" for x in calls(log))
        await decide_when_pending(ap, "approve")
        r = await asyncio.wait_for(call, 30)
        assert r.is_error is False, text(r)
        assert text(r) == "deleted acme/web"
        assert [x for x in calls(log) if x["tool"] == "delete_repo"] == [
            {"tool": "delete_repo", "args": {"repo": "acme/web"}}]

        # Rejected: isError with the reason; never reaches the server.
        call = asyncio.create_task(c.call_tool("delete_repo", {"repo": "acme/api"}))
        a = await decide_when_pending(ap, "reject", "that repo is production")
        r = await asyncio.wait_for(call, 30)
        assert r.is_error is True
        assert "that repo is production" in text(r) and "alice" in text(r) and a["id"] in text(r)
        assert not any(x["args"].get("repo") == "acme/api" for x in calls(log))


def test_http_upstream_through_gateway(gw):
    asyncio.run(scenario(gw, "tools", gw.http_log))


def test_http_upstream_legacy_handshake(gw):
    asyncio.run(scenario(gw, "tools", gw.http_log, mode="legacy"))


def test_stdio_child_through_gateway(gw):
    asyncio.run(scenario(gw, "local", gw.stdio_log))


def test_stdio_child_legacy_and_cleared_environment(gw):
    async def go():
        async with client(gw, "local", "legacy") as c:
            return await c.call_tool("show_env", {})
    r = asyncio.run(go())
    names = set(json.loads(text(r)))
    assert "TOOL_TOKEN" in names
    assert "DEV_AGENT_TOKEN" not in names and "ALICE_TOKEN" not in names and "HOME" not in names


def test_wrong_token_changes_nothing(gw):
    r = requests.post(f"{gw.proxy_url}/mcp/tools", headers={"Authorization": "Bearer nope",
                      "Accept": "application/json, text/event-stream"},
                      json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                            "params": {"name": "echo", "arguments": {"text": "x"}}}, timeout=10)
    assert r.status_code == 401
    assert calls(gw.http_log) == []


def test_audit_records_all_three_entrances_alike(gw):
    asyncio.run(scenario(gw, "tools", gw.http_log))
    r = requests.get(f"{gw.proxy_url}/echo/hello", headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, timeout=10)
    assert r.status_code == 200
    r = requests.post(f"{gw.proxy_url}/v1/approvals", headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
                      json={"action": "send_email", "payload": {"to": "x"}}, timeout=10)
    assert r.status_code == 200

    def decisions():
        recs = [x for x in gw.audit_records() if x["kind"] == "decision"]
        by = {}
        for x in recs:
            by.setdefault(x.get("entrance"), []).append(x)
        return by if {"http", "api", "mcp"} <= set(by) else None

    by = wait_until(decisions, 10)
    shapes = {e: {frozenset(k for k in x if k not in {"payload_json", "error", "approval_id"}) for x in v}
              for e, v in by.items() if e in {"http", "api", "mcp"}}
    common = set.intersection(*(set.union(*map(set, s)) for s in shapes.values()))
    for e, s in shapes.items():
        for keys in s:
            assert {"agent", "action", "body_sha256", "rule_ids", "policy_bundle", "entrance"} <= keys, (e, keys)
    assert common, shapes
    kinds = {x["kind"] for x in gw.audit_records() if x.get("entrance") == "mcp"}
    assert {"decision", "approval_requested", "approval_decided", "grant_used", "forwarded"} <= kinds, kinds
