"""examples/while_loop/agent.py against the real binary."""

from __future__ import annotations

import re
import time
from typing import Any

SCRIPT = "while_loop/agent.py"
Server = Any  # conftest.Server


def refunds_paid(out: str) -> list[tuple[str, str]]:
    """(amount, customer) of every `[payments] refund` line."""
    return re.findall(r"^\[payments\] refund re_\w+: \$([\d,.]+) to (\S+)$", out, re.M)


def test_small_refund_passes_large_one_waits_for_approval(server: Server, customer: str) -> None:
    small, large = customer + "_small", customer
    proc = server.run(SCRIPT, [f"{small}:40:late delivery", f"{large}:2400:charged twice"])
    pending = server.pending_for(large)
    assert pending["action"] == "issue_refund" and pending["route"] == "finance-oncall"
    assert pending["justification"] == "charged twice"
    time.sleep(2.5)  # longer than hold_timeout: the agent is long-polling now
    assert proc.poll() is None, "the agent went on before anyone decided"
    server.admin.approve(pending["id"], "checked the duplicate charge")
    out = server.finish(proc)
    assert refunds_paid(out) == [("40.00", small), ("2,400.00", large)], out
    assert "Approved by policy" in out
    assert "Approved by alice" in out and "checked the duplicate charge" in out


def test_rejected_and_denied_refunds_are_not_paid(server: Server, customer: str) -> None:
    huge, large = customer + "_huge", customer
    proc = server.run(SCRIPT, [f"{huge}:50000:goodwill", f"{large}:900:damaged item"])
    pending = server.pending_for(large)
    server.admin.reject(pending["id"], "item was returned undamaged")
    out = server.finish(proc)
    assert refunds_paid(out) == [], out
    assert f"did NOT refund {huge} (denied)" in out and "never issued by an agent" in out
    assert f"did NOT refund {large} (rejected)" in out and "item was returned undamaged" in out


def test_unreachable_server_refunds_nothing(server: Server, customer: str, free_port: int) -> None:
    proc = server.run(SCRIPT, [f"{customer}:40:late delivery"],
                      APPROVALPLANE_URL=f"http://127.0.0.1:{free_port}")
    out = server.finish(proc)
    assert refunds_paid(out) == [], out
    assert "could not ask for approval" in out
