"""A fake Slack Web API for the end-to-end tests.

A responder for conftest's FakeUpstream: `POST|GET /api/{method}` with a bearer
token, JSON, form or query arguments, answering Slack's envelope
(`{"ok": true, ...}` or `{"ok": false, "error": code}`, HTTP 200) and `429` with
`Retry-After` when rate limited. The official `slack_sdk` WebClient, pointed at
it, is the check that it answers as Slack does.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.parse
from typing import Any

from conftest import FakeResponse, RecordedRequest

BOT_TOKEN = "xoxb-2222-3333-e2efakebot"
APP_TOKEN = "xapp-1-A0E2E-4444-e2efakeapp"

_SLACK_HEADERS = [
    ("Content-Type", "application/json; charset=utf-8"),
    ("X-Slack-Req-Id", "fake-req-id"),
    ("Access-Control-Allow-Origin", "*"),
]


class SlackFake:
    """Responder imitating the Web API methods ApprovalPlane uses, plus auth.test."""

    def __init__(self, channels: set[str] | None = None, groups: dict[str, list[str]] | None = None):
        self.channels = channels  # None: any channel exists
        self.groups = dict(groups or {})
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.triggers: dict[str, float] = {}
        self.limit_next = 0  # how many of the next calls get 429
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (method, args, answer)

    # -- helpers for tests -------------------------------------------------
    def issue_trigger(self) -> str:
        t = f"{next(self._seq) + 4000000}.47445629121.{'ab' * 16}"
        with self._lock:
            self.triggers[t] = time.monotonic()
        return t

    def ok_calls(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [args for (m, args, ans) in self.calls if m == method and ans.get("ok")]

    def card(self, channel: str, approval_id: str) -> dict[str, Any] | None:
        with self._lock:
            for (c, _ts), m in self.messages.items():
                if c == channel and approval_id in json.dumps(m.get("blocks", [])):
                    return m
        return None

    # -- the responder -----------------------------------------------------
    def __call__(self, req: RecordedRequest) -> FakeResponse:
        method = req.path_only.removeprefix("/api/")
        args: dict[str, Any] = dict(urllib.parse.parse_qsl(req.query, keep_blank_values=True))
        ctype = (req.header("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == "application/json" and req.body:
            args.update(json.loads(req.body))
        elif req.body:
            args.update(req.form_dict())
        with self._lock:
            if self.limit_next > 0:
                self.limit_next -= 1
                answer = {"ok": False, "error": "ratelimited"}
                self.calls.append((method, args, answer))
                return FakeResponse(429, _SLACK_HEADERS + [("Retry-After", "1")], answer)
            answer = self._answer(method, req.header("Authorization"), args)
            self.calls.append((method, args, answer))
        return FakeResponse(200, _SLACK_HEADERS, answer)

    def _ts(self) -> str:
        n = next(self._seq)
        return f"{1795466193 + n}.{n:06d}"

    def _answer(self, method: str, authorization: str | None, args: dict[str, Any]) -> dict[str, Any]:
        token = (authorization or "").removeprefix("Bearer ") if authorization else args.get("token")
        if not token:
            return {"ok": False, "error": "not_authed"}
        wanted = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != wanted:
            return {"ok": False, "error": "not_allowed_token_type" if token in (APP_TOKEN, BOT_TOKEN) else "invalid_auth"}
        if method == "auth.test":
            return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "approvalplane",
                    "team_id": "T0E2E", "user_id": "U0E2EBOT", "bot_id": "B0E2EBOT", "is_enterprise_install": False}
        if method in ("chat.postMessage", "chat.update", "chat.postEphemeral"):
            channel = args.get("channel")
            if not channel or (self.channels is not None and channel not in self.channels):
                return {"ok": False, "error": "channel_not_found"}
            blocks = args.get("blocks")
            if isinstance(blocks, str):  # form-encoded blocks are a JSON string
                blocks = json.loads(blocks)
            if not args.get("text") and not blocks:
                return {"ok": False, "error": "no_text"}
            if blocks is not None and (not isinstance(blocks, list) or len(blocks) > 50):
                return {"ok": False, "error": "invalid_blocks"}
            if method == "chat.postEphemeral":
                if not args.get("user"):
                    return {"ok": False, "error": "user_not_in_channel"}
                return {"ok": True, "message_ts": self._ts()}
            ts = self._ts() if method == "chat.postMessage" else args.get("ts")
            if method == "chat.update" and (channel, ts) not in self.messages:
                return {"ok": False, "error": "message_not_found"}
            message = {"type": "message", "subtype": "bot_message", "text": args.get("text", ""), "ts": ts,
                       "user": "U0E2EBOT", "bot_id": "B0E2EBOT", "app_id": "A0E2E", "blocks": blocks or []}
            self.messages[(channel, ts)] = message
            out = {"ok": True, "channel": channel, "ts": ts, "message": message}
            if method == "chat.update":
                out["text"] = args.get("text", "")
            return out
        if method == "views.open":
            issued = self.triggers.get(args.get("trigger_id", ""))
            if issued is None:
                return {"ok": False, "error": "invalid_trigger_id"}
            if time.monotonic() - issued > 3.0:
                return {"ok": False, "error": "expired_trigger_id"}
            view = args.get("view")
            if isinstance(view, str):
                view = json.loads(view)
            if not isinstance(view, dict) or view.get("type") != "modal":
                return {"ok": False, "error": "invalid_arguments"}
            view = dict(view, id=f"V{next(self._seq):08d}", team_id="T0E2E", state={"values": {}},
                        hash="156772938.1827394", app_id="A0E2E")
            return {"ok": True, "view": view}
        if method == "usergroups.users.list":
            group = args.get("usergroup")
            if group not in self.groups:
                return {"ok": False, "error": "no_such_subteam"}
            return {"ok": True, "users": list(self.groups[group])}
        if method == "apps.connections.open":
            return {"ok": True, "url": "wss://wss-primary.slack.com/link/?ticket=fake&app_id=A0E2E"}
        return {"ok": False, "error": "unknown_method"}
