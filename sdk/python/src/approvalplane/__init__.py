"""ApprovalPlane client: ask a person before a risky agent action.

    from approvalplane import request_approval

    decision = request_approval(
        action="issue_refund",
        payload={"customer": "cus_4193", "amount": 2400.00},
        risk="high",
        policy_hints=["refund", "over_threshold"],
    )
    if decision.approved:
        ...  # proceed
    else:
        print(decision.reason)  # stand down

Proceed only when ``decision.approved`` is true. Errors raise
:class:`ApprovalPlaneError` subclasses and never mean approved.
"""

from .client import (
    DEFAULT_BASE_URL,
    DEFAULT_POLL_WAIT,
    DEFAULT_TIMEOUT,
    ENV_TOKEN,
    ENV_URL,
    ApprovalPlane,
    AsyncApprovalPlane,
    __version__,
    arequest_approval,
    request_approval,
)
from .decision import STATUSES, TERMINAL_STATUSES, Decision
from .errors import (
    APIError,
    ApprovalPlaneError,
    BadRequest,
    ConfigurationError,
    Conflict,
    Forbidden,
    NotFound,
    ProtocolError,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "request_approval",
    "arequest_approval",
    "ApprovalPlane",
    "AsyncApprovalPlane",
    "Decision",
    "STATUSES",
    "TERMINAL_STATUSES",
    "ApprovalPlaneError",
    "ConfigurationError",
    "TransportError",
    "ProtocolError",
    "APIError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "Unavailable",
    "ServerError",
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT",
    "DEFAULT_POLL_WAIT",
    "ENV_URL",
    "ENV_TOKEN",
    "__version__",
]
