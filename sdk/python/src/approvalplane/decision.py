"""The :class:`Decision` returned by ``request_approval``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Mapping, Optional

__all__ = ["Decision", "TERMINAL_STATUSES", "STATUSES"]

#: Statuses of an approval object after which nothing changes any more.
TERMINAL_STATUSES = frozenset({"approved", "rejected", "expired", "abandoned", "interrupted"})

#: Every ``Decision.status``: the approval statuses, plus ``"denied"`` for a policy denial.
STATUSES = TERMINAL_STATUSES | {"pending", "denied"}


@dataclass(frozen=True)
class Decision:
    """The outcome of ``request_approval``.

    ``approved`` is ``True`` only when the server answered an approval object whose
    status is ``"approved"`` and whose ``approved`` flag is ``true``. In every other
    case it is ``False``: go ahead only when it is ``True``.

    ``status`` is one of:

    * ``"approved"``: a person (``decided_by`` is their id) or the policy
      (``decided_by == "policy"``) approved;
    * ``"rejected"``: a person rejected; ``reason`` says why;
    * ``"denied"``: the policy denied at once; ``reason`` is the server's
      explanation and ``rule`` the denying rule id; there is no ``approval_id``;
    * ``"expired"``: nobody decided before the approval expired;
    * ``"pending"``: nobody has decided yet and the client's own ``timeout``
      ran out. This is *not* a rejection: wait more with ``wait_for_decision``
      (or by calling ``request_approval`` again with the same arguments);
    * ``"abandoned"`` or ``"interrupted"``: the approval ended without a decision
      (its caller cancelled, or the server's memory store shut down).

    ``reason`` is never ``None`` when ``approved`` is ``False``: without a
    person's reason it is :attr:`message`, so ``agent.say(decision.reason)``
    always has something to say.
    """

    approved: bool
    status: str
    reason: Optional[str] = None
    decided_by: Optional[str] = None
    approval_id: Optional[str] = None
    #: The approval object as the server sent it (empty for a policy denial).
    approval: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: For ``status == "denied"``: the id of the policy rule that denied.
    rule: Optional[str] = None

    @property
    def pending(self) -> bool:
        """True when nobody has decided yet (the client stopped waiting)."""
        return self.status == "pending"

    @property
    def final(self) -> bool:
        """True when the outcome cannot change any more."""
        return self.status != "pending"

    @property
    def message(self) -> str:
        """One sentence describing the outcome, suitable to show a person or a model."""
        who = self.decided_by or "an approver"
        ref = f" (approval {self.approval_id})" if self.approval_id else ""
        if self.status == "approved":
            if self.decided_by == "policy":
                return f"Approved by policy{ref}."
            return f"Approved by {who}{ref}" + (f": {self.reason}" if self.reason else ".")
        if self.status == "rejected":
            return f"Rejected by {who}{ref}: {self.reason or 'no reason given'}. Do not retry the same action."
        if self.status == "denied":
            return self.reason or f"Denied by policy (rule {self.rule})."
        if self.status == "expired":
            return f"Nobody decided before the approval expired{ref}. It was not approved; asking again starts a new approval."
        if self.status == "pending":
            return f"Still waiting for a person to decide{ref}. It is not approved yet; wait longer or ask again later."
        return f"The approval ended without a decision ({self.status}){ref}. It was not approved; asking again starts a new approval."

    @classmethod
    def from_approval(cls, approval: Mapping[str, Any]) -> "Decision":
        """Build a Decision from the API's approval object (``approved`` + §4 fields)."""
        status = approval["status"]
        decision = cls(
            approved=status == "approved" and approval.get("approved") is True,
            status=status,
            reason=_opt_str(approval.get("reason")),
            decided_by=_opt_str(approval.get("decided_by")),
            approval_id=_opt_str(approval.get("id")),
            approval=dict(approval),
        )
        # An agent that was not approved always has a why to say and to log:
        # when no person wrote one (pending, expired, ended), it is the outcome.
        if not decision.approved and decision.reason is None:
            decision = replace(decision, reason=decision.message)
        return decision


def _opt_str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None
