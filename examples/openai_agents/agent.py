"""An OpenAI Agents SDK agent whose refund tool asks ApprovalPlane first.

The agent is the SDK's own loop (`Runner.run`): the model calls the function
tool `issue_refund`, the tool's result goes back to the model, the model
answers. The tool wraps `arequest_approval`: it waits (without blocking the
event loop) until a person decides, or the policy decides at once, and pays out
only when `decision.approved` is true. Whatever the outcome, the model gets a
tool result it can act on.

The model is scripted so the example runs offline: the SDK's own test double,
`agents.testing.ScriptedModel`, reads the customer and amount from the request,
calls the tool, then reports the tool's result. Pass a model name (e.g.
`--model gpt-5.1`, with `OPENAI_API_KEY` set) to use a real one.

    export APPROVALPLANE_URL=http://127.0.0.1:8080 APPROVALPLANE_TOKEN=agent-secret
    python examples/openai_agents/agent.py "Refund \\$2400 to cus_4193, charged twice"

APPROVAL_TIMEOUT (seconds, default 300) bounds the wait for a person.

The SDK's own `needs_approval=True` pauses a run and hands the interruption to
the code that called `Runner.run`, in that process. Asking ApprovalPlane instead
puts the call in the one queue that the proxy, the API and MCP share: it is
routed by the policy, decided in Slack or on the approvals page, and recorded in
the audit log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import sys
from typing import Any, List, Optional, Union

from agents import Agent, Model, RunConfig, Runner, function_tool
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message, function_call

from approvalplane import ApprovalPlaneError, arequest_approval

INSTRUCTIONS = (
    "You are a support agent. Refund customers with the issue_refund tool when they ask. "
    "Tell the customer exactly what the tool reports: if it says NOT DONE, nothing was refunded."
)


def payments_refund(customer: str, amount: float) -> str:
    """Stands in for the payment provider's refund call (the risky action)."""
    refund_id = "re_" + secrets.token_hex(6)
    print(f"[payments] refund {refund_id}: ${amount:,.2f} to {customer}", flush=True)
    return refund_id


@function_tool
async def issue_refund(customer: str, amount: float, reason: str) -> str:
    """Refund `amount` dollars to `customer`. Large refunds wait for a person's approval.

    Args:
        customer: The customer id, e.g. cus_4193.
        amount: The amount in dollars.
        reason: Why the customer is owed the refund, in the customer's words.
    """
    large = amount > 500
    try:
        decision = await arequest_approval(
            action="issue_refund",
            payload={"customer": customer, "amount": amount},
            risk="high" if large else "low",
            policy_hints=["refund", "over_threshold"] if large else ["refund"],
            justification=reason,
            timeout=float(os.environ.get("APPROVAL_TIMEOUT", "300")),
        )
    except ApprovalPlaneError as exc:
        # No answer is never an approval.
        return f"NOT DONE: could not ask for approval ({exc}). Nothing was refunded; try again later."
    if not decision.approved:
        return f"NOT DONE ({decision.status}): {decision.message}"
    refund_id = payments_refund(customer, amount)
    return f"DONE: refunded ${amount:,.2f} to {customer} ({refund_id}). {decision.message}"


def _text_of(item: Any) -> str:
    """The text of a user input item (a plain string or a list of content parts)."""
    content = item.get("content", "") if isinstance(item, dict) else ""
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content if isinstance(p, dict))


def _read_request(text: str) -> dict:
    customer = re.search(r"\b(cus_\w+)", text)
    amount = re.search(r"\$\s*([\d,]+(?:\.\d+)?)", text)
    reason = re.search(r"\bcus_\w+\s*,\s*(.+)$", text)
    return {
        "customer": customer.group(1) if customer else "unknown",
        "amount": float(amount.group(1).replace(",", "")) if amount else 0.0,
        "reason": reason.group(1).strip() if reason else text,
    }


def _call_refund(call: ModelCall) -> Any:
    """First turn: one `issue_refund` call built from the user's message."""
    items = [call.input] if isinstance(call.input, str) else list(call.input)
    text = next((i if isinstance(i, str) else _text_of(i)) for i in reversed(items)
                if isinstance(i, str) or (isinstance(i, dict) and i.get("role") == "user"))
    return [function_call("issue_refund", _read_request(text), call_id="call_" + secrets.token_hex(4))]


def _relay_result(call: ModelCall) -> Any:
    """After the tool ran: a final answer that relays its result."""
    outputs = [i for i in call.input if isinstance(i, dict) and i.get("type") == "function_call_output"]
    result = str(outputs[-1]["output"]) if outputs else "the refund tool did not answer"
    ok = result.startswith("DONE")
    return [assistant_message(("The refund went through. " if ok else "I did not issue the refund. ") + result)]


def scripted_model() -> ScriptedModel:
    """An offline stand-in for a tool-calling model: call the tool, then relay its result."""
    return ScriptedModel([ModelStep.respond(_call_refund), ModelStep.respond(_relay_result)])


def build_agent(model: Union[str, Model]) -> Agent:
    return Agent(name="support", instructions=INSTRUCTIONS, tools=[issue_refund], model=model)


async def run(request: str, model: Optional[str] = None) -> str:
    agent = build_agent(model or scripted_model())
    # The scripted run sends no traces to OpenAI; a real model keeps the SDK's default.
    result = await Runner.run(agent, request, max_turns=4, run_config=RunConfig(tracing_disabled=model is None))
    return str(result.final_output)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("request", nargs="?", default="Refund $2,400 to cus_4193, charged twice for order 6735")
    parser.add_argument("--model", help="a real OpenAI model name (needs OPENAI_API_KEY); default: scripted")
    args = parser.parse_args(argv)
    print(asyncio.run(run(args.request, args.model)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
