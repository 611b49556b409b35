"""A LangGraph agent whose refund tool asks ApprovalPlane first.

The graph is the usual tool-calling loop (model -> tools -> model). The tool
`issue_refund` wraps `request_approval`: it blocks until a person decides (or
the policy decides at once), and pays out only when `decision.approved` is true.
Whatever the outcome, the model gets a tool result it can act on.

The chat model is scripted so the example runs offline: it reads the customer
and amount from the request, calls the tool, then reports the tool's result.
Pass any LangChain chat model that supports tool calling to `build_agent`
(e.g. `ChatOpenAI(model=...)`) to use a real one.

    export APPROVALPLANE_URL=http://127.0.0.1:8080 APPROVALPLANE_TOKEN=agent-secret
    python examples/langgraph_tool/agent.py "Refund \\$2400 to cus_4193, charged twice"

APPROVAL_TIMEOUT (seconds, default 300) bounds the wait for a person.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from typing import Any, List, Optional, Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from approvalplane import ApprovalPlaneError, request_approval


def payments_refund(customer: str, amount: float) -> str:
    """Stands in for the payment provider's refund call (the risky action)."""
    refund_id = "re_" + secrets.token_hex(6)
    print(f"[payments] refund {refund_id}: ${amount:,.2f} to {customer}", flush=True)
    return refund_id


@tool
def issue_refund(customer: str, amount: float, reason: str) -> str:
    """Refund `amount` dollars to `customer`. Large refunds wait for a person's approval."""
    large = amount > 500
    try:
        decision = request_approval(
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


class ScriptedChatModel(BaseChatModel):
    """An offline stand-in for a tool-calling chat model.

    First turn: one `issue_refund` call built from the user's message.
    After a tool result: a final answer that relays it.
    """

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> "ScriptedChatModel":
        return self  # the script knows its one tool

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages: List[BaseMessage], stop: Optional[List[str]] = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            ok = str(last.content).startswith("DONE")
            text = ("The refund went through. " if ok else "I did not issue the refund. ") + str(last.content)
            reply = AIMessage(content=text)
        else:
            request = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
            reply = AIMessage(content="", tool_calls=[{
                "name": "issue_refund",
                "args": self._read_request(str(request.content)),
                "id": "call_" + secrets.token_hex(4),
                "type": "tool_call",
            }])
        return ChatResult(generations=[ChatGeneration(message=reply)])

    @staticmethod
    def _read_request(text: str) -> dict:
        customer = re.search(r"\b(cus_\w+)", text)
        amount = re.search(r"\$\s*([\d,]+(?:\.\d+)?)", text)
        reason = re.search(r"\bcus_\w+\s*,\s*(.+)$", text)
        return {
            "customer": customer.group(1) if customer else "unknown",
            "amount": float(amount.group(1).replace(",", "")) if amount else 0.0,
            "reason": reason.group(1).strip() if reason else text,
        }


def build_agent(model: BaseChatModel) -> Any:
    """The tool-calling loop: agent -> (tools -> agent)* -> end."""
    tools = [issue_refund]
    bound = model.bind_tools(tools)

    def agent(state: MessagesState) -> dict:
        return {"messages": [bound.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def main(argv: List[str]) -> int:
    request = argv[0] if argv else "Refund $2,400 to cus_4193, charged twice for order 6735"
    app = build_agent(ScriptedChatModel())
    result = app.invoke({"messages": [HumanMessage(content=request)]}, {"recursion_limit": 10})
    print(result["messages"][-1].content, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
