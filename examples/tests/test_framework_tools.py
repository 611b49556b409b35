"""The framework examples against the real binary: the same refund tool, wrapped by
LangGraph (`langgraph_tool/agent.py`, a scripted chat model) and by the OpenAI Agents
SDK (`openai_agents/agent.py`, the SDK's ScriptedModel). Each run's last line is what
the model said after the tool's result."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

Server = Any  # conftest.Server

SCRIPTS = pytest.mark.parametrize("script", ["langgraph_tool/agent.py", "openai_agents/agent.py"],
                                  ids=["langgraph", "openai_agents"])


def last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


@SCRIPTS
def test_tool_waits_for_approval_then_refunds(server: Server, customer: str, script: str) -> None:
    proc = server.run(script, [f"Refund $2,400 to {customer}, charged twice for order 6735"])
    pending = server.pending_for(customer)
    assert pending["action"] == "issue_refund" and pending["route"] == "finance-oncall"
    assert pending["justification"] == "charged twice for order 6735"
    assert pending["risk"] == "high"
    time.sleep(2.5)  # longer than hold_timeout: the tool is long-polling now
    assert proc.poll() is None, "the agent went on before anyone decided"
    server.admin.approve(pending["id"], "duplicate confirmed")
    out = server.finish(proc)
    assert re.search(rf"^\[payments\] refund re_\w+: \$2,400\.00 to {customer}$", out, re.M), out
    final = last_line(out)
    assert final.startswith("The refund went through. DONE: refunded $2,400.00"), final
    assert "Approved by alice" in final and pending["id"] in final


@SCRIPTS
def test_rejection_reaches_the_model_and_nothing_is_paid(server: Server, customer: str, script: str) -> None:
    proc = server.run(script, [f"Refund $1,200 to {customer}, customer is unhappy"])
    pending = server.pending_for(customer)
    server.admin.reject(pending["id"], "outside the refund window")
    out = server.finish(proc)
    assert "[payments]" not in out, out
    final = last_line(out)
    assert final.startswith("I did not issue the refund. NOT DONE (rejected)"), final
    assert "outside the refund window" in final and "Rejected by alice" in final


@SCRIPTS
def test_small_refund_is_allowed_by_policy_at_once(server: Server, customer: str, script: str) -> None:
    proc = server.run(script, [f"Refund $25 to {customer}, late delivery"])
    out = server.finish(proc)
    assert re.search(rf"^\[payments\] refund re_\w+: \$25\.00 to {customer}$", out, re.M), out
    assert "Approved by policy" in last_line(out)


@SCRIPTS
def test_denied_and_unreachable_refunds_pay_nothing(server: Server, customer: str, free_port: int,
                                                    script: str) -> None:
    out = server.finish(server.run(script, [f"Refund $50,000 to {customer}, goodwill"]))
    assert "[payments]" not in out, out
    assert last_line(out).startswith("I did not issue the refund. NOT DONE (denied)"), out
    out = server.finish(server.run(script, [f"Refund $40 to {customer}, late delivery"],
                                   APPROVALPLANE_URL=f"http://127.0.0.1:{free_port}"))
    assert "[payments]" not in out, out
    assert "could not ask for approval" in last_line(out), out
