"""A raw while-loop agent that asks ApprovalPlane before every refund.

No framework: a loop asks the "model" for the next step, runs the tool it names,
and feeds the result back. The model here is scripted so the example runs
offline; swap `scripted_model` for a real LLM call and nothing else changes.

The refund tool calls `request_approval` first and only pays out when
`decision.approved` is true. Small refunds are allowed by policy at once, large
ones wait for a person (see ../rules/refunds.rego), huge ones are denied.

    export APPROVALPLANE_URL=http://127.0.0.1:8080 APPROVALPLANE_TOKEN=agent-secret
    python examples/while_loop/agent.py                      # the default tickets
    python examples/while_loop/agent.py cus_4193:2400:"duplicate charge"

Each argument is a ticket CUSTOMER:AMOUNT:REASON. APPROVAL_TIMEOUT (seconds,
default 300) bounds the wait for a person.
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any, Callable, Dict, List

from approvalplane import ApprovalPlaneError, request_approval

DEFAULT_TICKETS = [
    {"customer": "cus_1001", "amount": 40.0, "reason": "late delivery"},
    {"customer": "cus_4193", "amount": 2400.0, "reason": "charged twice for order 6735"},
]


def payments_refund(customer: str, amount: float) -> str:
    """Stands in for the payment provider's refund call (the risky action)."""
    refund_id = "re_" + secrets.token_hex(6)
    print(f"[payments] refund {refund_id}: ${amount:,.2f} to {customer}", flush=True)
    return refund_id


def issue_refund(customer: str, amount: float, reason: str) -> str:
    """The tool: ask first, act only on an approval."""
    large = amount > 500
    decision = request_approval(
        action="issue_refund",
        payload={"customer": customer, "amount": amount},
        risk="high" if large else "low",
        policy_hints=["refund", "over_threshold"] if large else ["refund"],
        justification=reason,
        timeout=float(os.environ.get("APPROVAL_TIMEOUT", "300")),
    )
    if decision.approved:
        refund_id = payments_refund(customer, amount)
        return f"refunded ${amount:,.2f} to {customer} ({refund_id}). {decision.message}"
    # Rejected, denied, expired or still pending: stand down and say why.
    return f"did NOT refund {customer} ({decision.status}). {decision.message}"


TOOLS: Dict[str, Callable[..., str]] = {"issue_refund": issue_refund}


def scripted_model(tickets: List[Dict[str, Any]], history: List[Dict[str, str]]) -> Dict[str, Any]:
    """Stands in for the LLM: one refund call per ticket, then a summary."""
    results = [m["content"] for m in history if m["role"] == "tool"]
    if len(results) < len(tickets):
        return {"tool": "issue_refund", "args": tickets[len(results)]}
    return {"final": "Done with %d ticket(s):\n" % len(results) + "\n".join(f"- {r}" for r in results)}


def parse_ticket(text: str) -> Dict[str, Any]:
    customer, amount, reason = text.split(":", 2)
    return {"customer": customer, "amount": float(amount), "reason": reason}


def main(argv: List[str]) -> int:
    tickets = [parse_ticket(a) for a in argv] or DEFAULT_TICKETS
    history: List[Dict[str, str]] = [{"role": "user", "content": "Process today's refund tickets."}]
    while True:
        step = scripted_model(tickets, history)
        if "final" in step:
            print(step["final"], flush=True)
            return 0
        print(f"calling {step['tool']}({step['args']})", flush=True)
        try:
            result = TOOLS[step["tool"]](**step["args"])
        except ApprovalPlaneError as exc:
            # No answer is never an approval: report it and do not act.
            result = f"could not ask for approval ({exc}); nothing was refunded"
        print(f"-> {result}", flush=True)
        history.append({"role": "tool", "content": result})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
