"""HTTP client for ``POST /v1/approvals`` and ``GET /v1/approvals/{id}?wait=``.

The flow of :meth:`ApprovalPlane.request_approval`:

1. ``POST /v1/approvals`` with ``wait`` = the smaller of ``poll_wait`` and the time
   left. The server answers at once when the policy allows (``approved``) or denies
   (403 ``policy_denied``), and otherwise holds the call up to ``wait`` seconds
   (capped by its ``server.hold_timeout``).
2. While the answer is ``pending``: ``GET /v1/approvals/{id}?wait=...`` (long-poll)
   until the status changes or the client's own ``timeout`` runs out.
3. The result is a :class:`Decision`. When the timeout runs out first, its status is
   ``"pending"`` (never ``"rejected"``).

Errors (no answer, a refusal other than a policy denial, an answer that does not
follow the API) raise an :class:`~approvalplane.errors.ApprovalPlaneError`; they never
turn into an approval.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import urllib.parse
from typing import Any, Dict, Mapping, Optional, Sequence, Type, Union

import httpx

from .decision import Decision
from .errors import (
    APIError,
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
    "ApprovalPlane",
    "AsyncApprovalPlane",
    "request_approval",
    "arequest_approval",
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT",
    "DEFAULT_POLL_WAIT",
    "ENV_URL",
    "ENV_TOKEN",
]

__version__ = "0.1.0"

#: Environment variable holding the agent listener's base URL.
ENV_URL = "APPROVALPLANE_URL"
#: Environment variable holding the agent token.
ENV_TOKEN = "APPROVALPLANE_TOKEN"
#: Used when neither the argument nor ``APPROVALPLANE_URL`` gives a base URL.
DEFAULT_BASE_URL = "http://127.0.0.1:8080"
#: Seconds ``request_approval`` waits for a decision by default.
DEFAULT_TIMEOUT = 300.0
#: Seconds asked for in one long-poll (the server caps it at its ``hold_timeout``).
DEFAULT_POLL_WAIT = 50.0
#: Extra seconds on top of ``wait`` before an HTTP read is given up.
_READ_SLACK = 15.0
#: A poll that comes back "pending" faster than this is followed by a pause.
_MIN_POLL_PERIOD = 1.0

Number = Union[int, float]


# --------------------------------------------------------------------------
# configuration helpers
# --------------------------------------------------------------------------


def _resolve_base_url(base_url: Optional[str]) -> str:
    url = base_url if base_url else os.environ.get(ENV_URL) or DEFAULT_BASE_URL
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"base URL {url!r} is not an http(s) URL (set base_url= or {ENV_URL})")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"base URL {url!r} must not have a query or fragment")
    return url


def _resolve_token(token: Optional[str]) -> Optional[str]:
    value = token if token is not None else os.environ.get(ENV_TOKEN)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _check_seconds(name: str, value: Any, allow_none: bool) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ConfigurationError(f"{name} must be a non-negative number of seconds, not {value!r}")
    return float(value)


def _deadline(timeout: Optional[float]) -> Optional[float]:
    t = _check_seconds("timeout", timeout, allow_none=True)
    return None if t is None or math.isinf(t) else time.monotonic() + t


def _ask_body(
    action: str,
    payload: Any,
    risk: Optional[str],
    policy_hints: Optional[Sequence[str]],
    justification: Optional[str],
    wait: float,
) -> bytes:
    if not isinstance(action, str) or not action.strip():
        raise ConfigurationError("action must be a non-empty string")
    body: Dict[str, Any] = {"action": action}
    if payload is not None:
        body["payload"] = payload
    if risk is not None:
        if not isinstance(risk, str):
            raise ConfigurationError("risk must be one of 'low', 'medium', 'high', 'critical'")
        body["risk"] = risk
    if policy_hints is not None:
        if isinstance(policy_hints, (str, bytes)) or not all(isinstance(h, str) for h in policy_hints):
            raise ConfigurationError("policy_hints must be a list of strings")
        body["policy_hints"] = list(policy_hints)
    if justification is not None:
        if not isinstance(justification, str):
            raise ConfigurationError("justification must be a string")
        body["justification"] = justification
    body["wait"] = wait
    try:
        return json.dumps(body, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"payload cannot be sent as JSON: {exc}") from exc


def _fmt_seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP date: not worth a parser here
    return seconds if seconds >= 0 and not math.isinf(seconds) else None


def _error_class(status: int) -> Type[APIError]:
    if status in (400, 413, 422):
        return BadRequest
    if status == 401:
        return Unauthorized
    if status == 403:
        return Forbidden
    if status == 404:
        return NotFound
    if status == 409:
        return Conflict
    if status in (502, 503, 504):
        return Unavailable
    return ServerError


def _interpret(resp: httpx.Response, expect_id: Optional[str] = None) -> Decision:
    """Turn one HTTP answer into a Decision, or raise."""
    request_id = resp.headers.get("x-request-id")
    try:
        body: Any = resp.json()
    except ValueError:
        body = None
    status = resp.status_code

    if 200 <= status < 300:
        if not isinstance(body, dict):
            raise ProtocolError(
                f"expected an approval object, got {resp.text[:200]!r}",
                status_code=status,
                request_id=request_id,
            )
        a_status, a_id = body.get("status"), body.get("id")
        if not isinstance(a_status, str) or not isinstance(a_id, str) or not a_id:
            raise ProtocolError("the approval object has no id or status", status_code=status, body=body,
                                request_id=request_id)
        # `approved` must be present and agree with the status, or nothing is trusted.
        flag = body.get("approved")
        if not isinstance(flag, bool) or flag != (a_status == "approved"):
            raise ProtocolError(f"inconsistent answer: approved={flag!r} with status {a_status!r}",
                                status_code=status, body=body, request_id=request_id)
        if expect_id is not None and a_id != expect_id:
            raise ProtocolError(f"asked for approval {expect_id}, got {a_id}", status_code=status, body=body,
                                request_id=request_id)
        return Decision.from_approval(body)

    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    error_type = err.get("type") if isinstance(err.get("type"), str) else None
    message = err.get("message") if isinstance(err.get("message"), str) else None
    if message is None:
        snippet = resp.text.strip()[:200]
        message = f"HTTP {status} from ApprovalPlane" + (f": {snippet}" if snippet else "")

    if status == 403 and error_type == "policy_denied":
        reason = err.get("reason") if isinstance(err.get("reason"), str) else message
        rule = err.get("rule") if isinstance(err.get("rule"), str) else None
        return Decision(approved=False, status="denied", reason=reason, decided_by="policy", rule=rule)

    cls = _error_class(status)
    raise cls(
        message,
        status_code=status,
        error_type=error_type,
        body=body if isinstance(body, dict) else None,
        request_id=request_id,
        retry_after=_retry_after(resp.headers.get("retry-after")),
    )


class _Config:
    """What the sync and async clients share: addresses, headers, timeouts."""

    def __init__(
        self,
        base_url: Optional[str],
        token: Optional[str],
        poll_wait: Number,
        connect_timeout: Number,
        headers: Optional[Mapping[str, str]],
    ) -> None:
        self.base_url = _resolve_base_url(base_url)
        self.token = _resolve_token(token)
        pw = _check_seconds("poll_wait", poll_wait, allow_none=False)
        ct = _check_seconds("connect_timeout", connect_timeout, allow_none=False)
        assert pw is not None and ct is not None
        self.poll_wait = pw
        self.connect_timeout = ct
        h = {
            "Accept": "application/json",
            "User-Agent": f"approvalplane-python/{__version__}",
        }
        if headers:
            h.update(headers)
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token}"
        self.headers = h

    def url(self, path: str) -> str:
        return self.base_url + path

    def approval_path(self, approval_id: str) -> str:
        if not isinstance(approval_id, str) or not approval_id:
            raise ConfigurationError("approval_id must be a non-empty string")
        return "/v1/approvals/" + urllib.parse.quote(approval_id, safe="")

    def wait_for(self, deadline: Optional[float]) -> float:
        """Seconds to ask for in the next long-poll (0 when the deadline has passed)."""
        if deadline is None:
            return self.poll_wait
        left = deadline - time.monotonic()
        if left < 0.01:
            return 0.0
        return round(min(self.poll_wait, left), 3)

    def http_timeout(self, wait: float) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect_timeout, read=wait + _READ_SLACK,
                             write=_READ_SLACK, pool=self.connect_timeout + wait)

    def transport_error(self, method: str, path: str, exc: Exception) -> TransportError:
        detail = str(exc) or type(exc).__name__
        return TransportError(f"{method} {self.base_url}{path} failed: {detail} "
                              f"({type(exc).__name__}); nothing was approved")


def _pause_after(started: float, wait: float, deadline: Optional[float]) -> float:
    """Seconds to sleep after a poll that came back pending (guards against a hot loop)."""
    pause = min(_MIN_POLL_PERIOD, wait) - (time.monotonic() - started)
    if deadline is not None:
        pause = min(pause, deadline - time.monotonic())
    return max(0.0, pause)


# --------------------------------------------------------------------------
# synchronous client
# --------------------------------------------------------------------------


class ApprovalPlane:
    """A reusable, thread-safe client for one ApprovalPlane agent listener.

    ``base_url`` defaults to ``$APPROVALPLANE_URL`` and then ``http://127.0.0.1:8080``;
    ``token`` (the agent token, sent as ``Authorization: Bearer``) to
    ``$APPROVALPLANE_TOKEN``. ``transport`` lets tests plug in an ``httpx`` transport.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        poll_wait: Number = DEFAULT_POLL_WAIT,
        connect_timeout: Number = 10.0,
        headers: Optional[Mapping[str, str]] = None,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self._cfg = _Config(base_url, token, poll_wait, connect_timeout, headers)
        self._http = httpx.Client(headers=self._cfg.headers, transport=transport, follow_redirects=False)

    @property
    def base_url(self) -> str:
        return self._cfg.base_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ApprovalPlane":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: str, path: str, *, wait: float, content: Optional[bytes] = None,
              headers: Optional[Mapping[str, str]] = None, expect_id: Optional[str] = None) -> Decision:
        h = dict(headers or {})
        if content is not None:
            h["Content-Type"] = "application/json"
        try:
            resp = self._http.request(method, self._cfg.url(path), content=content, headers=h,
                                      timeout=self._cfg.http_timeout(wait))
        except httpx.HTTPError as exc:
            raise self._cfg.transport_error(method, path, exc) from exc
        return _interpret(resp, expect_id)

    def request_approval(
        self,
        action: str,
        payload: Any = None,
        *,
        risk: Optional[str] = None,
        policy_hints: Optional[Sequence[str]] = None,
        justification: Optional[str] = None,
        timeout: Optional[Number] = DEFAULT_TIMEOUT,
        idempotency_key: Optional[str] = None,
    ) -> Decision:
        """Ask for approval and block until there is a decision or ``timeout`` seconds pass.

        ``timeout=None`` waits until the approval is decided or expires; ``timeout=0``
        asks once and returns at once. See :class:`Decision` for the outcomes.
        """
        deadline = _deadline(timeout)
        wait = self._cfg.wait_for(deadline)
        content = _ask_body(action, payload, risk, policy_hints, justification, wait)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        decision = self._call("POST", "/v1/approvals", wait=wait, content=content, headers=headers)
        return self._poll(decision, deadline)

    def get_approval(self, approval_id: str, *, wait: Number = 0) -> Decision:
        """The current state of one of this agent's approvals, waiting up to ``wait`` seconds for a change."""
        w = _check_seconds("wait", wait, allow_none=False) or 0.0
        path = self._cfg.approval_path(approval_id)
        return self._call("GET", f"{path}?wait={_fmt_seconds(w)}", wait=w, expect_id=approval_id)

    def wait_for_decision(self, approval_id: str, *, timeout: Optional[Number] = DEFAULT_TIMEOUT) -> Decision:
        """Keep waiting on an approval that ``request_approval`` returned as pending."""
        deadline = _deadline(timeout)
        decision = self.get_approval(approval_id, wait=self._cfg.wait_for(deadline))
        return self._poll(decision, deadline)

    def _poll(self, decision: Decision, deadline: Optional[float]) -> Decision:
        while decision.pending:
            wait = self._cfg.wait_for(deadline)
            if wait <= 0:
                return decision
            started = time.monotonic()
            assert decision.approval_id is not None
            decision = self.get_approval(decision.approval_id, wait=wait)
            if decision.pending:
                time.sleep(_pause_after(started, wait, deadline))
        return decision


# --------------------------------------------------------------------------
# asyncio client
# --------------------------------------------------------------------------


class AsyncApprovalPlane:
    """The asyncio form of :class:`ApprovalPlane` (same arguments, awaitable methods)."""

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        poll_wait: Number = DEFAULT_POLL_WAIT,
        connect_timeout: Number = 10.0,
        headers: Optional[Mapping[str, str]] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        self._cfg = _Config(base_url, token, poll_wait, connect_timeout, headers)
        self._http = httpx.AsyncClient(headers=self._cfg.headers, transport=transport, follow_redirects=False)

    @property
    def base_url(self) -> str:
        return self._cfg.base_url

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncApprovalPlane":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, *, wait: float, content: Optional[bytes] = None,
                    headers: Optional[Mapping[str, str]] = None, expect_id: Optional[str] = None) -> Decision:
        h = dict(headers or {})
        if content is not None:
            h["Content-Type"] = "application/json"
        try:
            resp = await self._http.request(method, self._cfg.url(path), content=content, headers=h,
                                            timeout=self._cfg.http_timeout(wait))
        except httpx.HTTPError as exc:
            raise self._cfg.transport_error(method, path, exc) from exc
        return _interpret(resp, expect_id)

    async def request_approval(
        self,
        action: str,
        payload: Any = None,
        *,
        risk: Optional[str] = None,
        policy_hints: Optional[Sequence[str]] = None,
        justification: Optional[str] = None,
        timeout: Optional[Number] = DEFAULT_TIMEOUT,
        idempotency_key: Optional[str] = None,
    ) -> Decision:
        """See :meth:`ApprovalPlane.request_approval`."""
        deadline = _deadline(timeout)
        wait = self._cfg.wait_for(deadline)
        content = _ask_body(action, payload, risk, policy_hints, justification, wait)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        decision = await self._call("POST", "/v1/approvals", wait=wait, content=content, headers=headers)
        return await self._poll(decision, deadline)

    async def get_approval(self, approval_id: str, *, wait: Number = 0) -> Decision:
        """See :meth:`ApprovalPlane.get_approval`."""
        w = _check_seconds("wait", wait, allow_none=False) or 0.0
        path = self._cfg.approval_path(approval_id)
        return await self._call("GET", f"{path}?wait={_fmt_seconds(w)}", wait=w, expect_id=approval_id)

    async def wait_for_decision(self, approval_id: str, *,
                                timeout: Optional[Number] = DEFAULT_TIMEOUT) -> Decision:
        """See :meth:`ApprovalPlane.wait_for_decision`."""
        deadline = _deadline(timeout)
        decision = await self.get_approval(approval_id, wait=self._cfg.wait_for(deadline))
        return await self._poll(decision, deadline)

    async def _poll(self, decision: Decision, deadline: Optional[float]) -> Decision:
        while decision.pending:
            wait = self._cfg.wait_for(deadline)
            if wait <= 0:
                return decision
            started = time.monotonic()
            assert decision.approval_id is not None
            decision = await self.get_approval(decision.approval_id, wait=wait)
            if decision.pending:
                await asyncio.sleep(_pause_after(started, wait, deadline))
        return decision


# --------------------------------------------------------------------------
# one-call functions
# --------------------------------------------------------------------------


def request_approval(
    action: str,
    payload: Any = None,
    *,
    risk: Optional[str] = None,
    policy_hints: Optional[Sequence[str]] = None,
    justification: Optional[str] = None,
    timeout: Optional[Number] = DEFAULT_TIMEOUT,
    idempotency_key: Optional[str] = None,
    base_url: Optional[str] = None,
    token: Optional[str] = None,
) -> Decision:
    """Ask ApprovalPlane before a risky action; block until decided or ``timeout`` seconds.

    Returns a :class:`Decision`; proceed only when ``decision.approved`` is true.
    A policy denial is ``Decision(approved=False, status="denied")``; a timeout while
    nobody has decided is ``status="pending"``. Failing to reach the server, a bad
    token and other refusals raise :class:`~approvalplane.errors.ApprovalPlaneError`.
    """
    with ApprovalPlane(base_url, token) as client:
        return client.request_approval(
            action, payload, risk=risk, policy_hints=policy_hints, justification=justification,
            timeout=timeout, idempotency_key=idempotency_key,
        )


async def arequest_approval(
    action: str,
    payload: Any = None,
    *,
    risk: Optional[str] = None,
    policy_hints: Optional[Sequence[str]] = None,
    justification: Optional[str] = None,
    timeout: Optional[Number] = DEFAULT_TIMEOUT,
    idempotency_key: Optional[str] = None,
    base_url: Optional[str] = None,
    token: Optional[str] = None,
) -> Decision:
    """The asyncio form of :func:`request_approval`."""
    async with AsyncApprovalPlane(base_url, token) as client:
        return await client.request_approval(
            action, payload, risk=risk, policy_hints=policy_hints, justification=justification,
            timeout=timeout, idempotency_key=idempotency_key,
        )

