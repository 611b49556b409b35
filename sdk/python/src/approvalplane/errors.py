"""Exceptions raised by the ApprovalPlane client.

Every failure to get an answer raises a subclass of :class:`ApprovalPlaneError`.
None of them ever means "approved": code that catches one must treat the action
as not approved.

Decisions are not exceptions: a policy denial, a person's rejection, an expiry
and "still pending when the client's own timeout ran out" all come back as a
:class:`~approvalplane.Decision` whose ``approved`` is ``False``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

__all__ = [
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
]


class ApprovalPlaneError(Exception):
    """Base class: no decision could be obtained. Never means approved."""

    def __init__(
        self,
        message: str,
        *,
        status_code: Optional[int] = None,
        error_type: Optional[str] = None,
        body: Optional[Mapping[str, Any]] = None,
        request_id: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: HTTP status of the answer, if one was received.
        self.status_code = status_code
        #: The stable ``error.type`` of the API's refusal, e.g. ``"agent_unauthorized"``.
        self.error_type = error_type
        #: The decoded JSON answer, if there was one.
        self.body = dict(body) if body is not None else None
        #: The server's ``X-Request-Id``, useful when asking an operator.
        self.request_id = request_id
        #: Seconds the server asked to wait before retrying (``Retry-After``).
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [self.message]
        if self.status_code is not None:
            label = f"HTTP {self.status_code}"
            if self.error_type:
                label += f" {self.error_type}"
            parts.append(f"({label})")
        if self.request_id:
            parts.append(f"[request {self.request_id}]")
        return " ".join(parts)


class ConfigurationError(ApprovalPlaneError, ValueError):
    """A bad argument or environment setting (base URL, timeout...)."""


class TransportError(ApprovalPlaneError):
    """ApprovalPlane could not be reached, or the connection failed mid-answer.

    Retrying the same call is safe: an identical request (same agent, action and
    payload, or the same idempotency key) attaches to the approval it created.
    """


class ProtocolError(ApprovalPlaneError):
    """The server answered something the API does not promise (not JSON, a bad shape)."""


class APIError(ApprovalPlaneError):
    """The server refused the call with an HTTP error (``{"error": {...}}``)."""


class BadRequest(APIError):
    """400 or 413: the request is malformed (``malformed_request``, ``malformed_body``, ``body_too_large``)."""


class Unauthorized(APIError):
    """401 ``agent_unauthorized``: no or wrong agent token."""


class Forbidden(APIError):
    """403 other than a policy denial (a policy denial is a Decision with status ``"denied"``)."""


class NotFound(APIError):
    """404: unknown approval id, or one that belongs to another agent."""


class Conflict(APIError):
    """409, e.g. ``idempotency_conflict``: an idempotency key reused with a different payload."""


class Unavailable(APIError):
    """502, 503 or 504: ``store_unavailable``, ``audit_unavailable``, ``shutting_down``...

    ``retry_after`` holds the server's ``Retry-After`` when it sent one. Retrying
    the identical call later is safe.
    """


class ServerError(APIError):
    """Any other 5xx, or an unexpected status."""
