"""Acceptance: Slack approvals checked with the official `slack_sdk`.

* Its `WebClient`, pointed at the Python fake's base URL, shows that the fake
  answers as Slack does (so what the binary is tested against is Slack's wire
  format, not ours).
* The real binary posts its card to that fake; `slack_sdk`'s Block Kit models
  parse and validate the card.
* Its `SignatureVerifier` signs the interaction callbacks sent to the binary:
  Approve decides; Reject opens a modal whose submission decides; forged,
  stale, unsigned and replayed callbacks are refused with 401.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

import pytest
import requests
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.models.blocks import Block, SectionBlock
from slack_sdk.signature import SignatureVerifier

from conftest import wait_until
from slack_fake import APP_TOKEN, BOT_TOKEN, SlackFake

SIGNING_SECRET = "e2e-signing-secret-3f9a0c2b7d"
AGENT_TOKEN = "e2e-agent-token-51d0"
ALICE_TOKEN = "e2e-alice-token-8c21"
BOB_TOKEN = "e2e-bob-token-77e4"

RULES = {
    "refunds.rego": """\
package approvalplane

approval contains {
	"id": "refunds.large",
	"reason": "amount over your $500 auto-approve threshold",
	"route": "finance-oncall",
	"risk": "high",
	"action": "issue_refund",
	"summary": {"customer": input.payload.customer, "amount": input.payload.amount},
	"escalate_after": "15m",
} if {
	input.kind == "api"
	input.action == "issue_refund"
}
""",
}


def _header(headers: dict[str, Any], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v[0] if isinstance(v, list) else v
    return None


def test_fake_slack_answers_as_slack_does_for_the_official_client(fake_upstream):
    fake = SlackFake(channels={"C0FINANCE"}, groups={"S0FINANCE": ["U0DAVE"]})
    up = fake_upstream(fake, name="slack")
    client = WebClient(token=BOT_TOKEN, base_url=up.url + "/api/")

    assert client.auth_test()["bot_id"] == "B0E2EBOT"
    posted = client.chat_postMessage(channel="C0FINANCE", text="hello", blocks=[SectionBlock(text="*hi*")],
                                     unfurl_links=False, unfurl_media=False)
    assert posted["ok"] is True and posted["channel"] == "C0FINANCE" and posted["ts"]
    assert posted["message"]["blocks"][0]["type"] == "section"
    updated = client.chat_update(channel="C0FINANCE", ts=posted["ts"], text="bye")
    assert updated["ts"] == posted["ts"] and updated["text"] == "bye"
    assert client.chat_postEphemeral(channel="C0FINANCE", user="U0DAVE", text="psst")["message_ts"]
    view = client.views_open(trigger_id=fake.issue_trigger(),
                             view={"type": "modal", "title": {"type": "plain_text", "text": "Reject"}, "blocks": []})
    assert view["view"]["id"].startswith("V") and view["view"]["state"] == {"values": {}}
    assert client.usergroups_users_list(usergroup="S0FINANCE")["users"] == ["U0DAVE"]
    app_client = WebClient(base_url=up.url + "/api/")
    assert app_client.apps_connections_open(app_token=APP_TOKEN)["url"].startswith("wss://")

    # Errors come back as Slack's envelope, which the client raises.
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0NOPE", text="x")
    assert err.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C0FINANCE", ts="1.000000", text="x")
    assert err.value.response["error"] == "message_not_found"
    with pytest.raises(SlackApiError) as err:
        client.views_open(trigger_id="made.up.trigger", view={"type": "modal"})
    assert err.value.response["error"] == "invalid_trigger_id"
    with pytest.raises(SlackApiError) as err:
        WebClient(token="xoxb-wrong", base_url=up.url + "/api/").auth_test()
    assert err.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as err:
        WebClient(token=APP_TOKEN, base_url=up.url + "/api/").chat_postMessage(channel="C0FINANCE", text="x")
    assert err.value.response["error"] == "not_allowed_token_type"

    # 429 with Retry-After, as the client's own rate-limit handler expects it.
    fake.limit_next = 1
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0FINANCE", text="x")
    assert err.value.response.status_code == 429
    assert _header(err.value.response.headers, "Retry-After") == "1"
    patient = WebClient(token=BOT_TOKEN, base_url=up.url + "/api/",
                        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
    fake.limit_next = 1
    started = time.monotonic()
    assert patient.chat_postMessage(channel="C0FINANCE", text="x")["ok"] is True
    assert time.monotonic() - started >= 0.9


class Signed:
    """Interaction callbacks signed by the official SignatureVerifier."""

    def __init__(self, control_url: str, secret: str = SIGNING_SECRET):
        self.url = control_url + "/slack/interactions"
        self.verifier = SignatureVerifier(secret)

    @staticmethod
    def body(payload: dict[str, Any]) -> str:
        return urllib.parse.urlencode({"payload": json.dumps(payload)})

    def headers(self, body: str, ts: int | None = None) -> dict[str, str]:
        ts_s = str(int(time.time()) if ts is None else ts)
        return {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts_s,
            "X-Slack-Signature": self.verifier.generate_signature(timestamp=ts_s, body=body),
        }

    def post(self, body: str, headers: dict[str, str]) -> requests.Response:
        return requests.post(self.url, data=body, headers=headers, timeout=10)

    def send(self, payload: dict[str, Any]) -> requests.Response:
        body = self.body(payload)
        return self.post(body, self.headers(body))


def block_actions(user: str, action_id: str, approval_id: str, trigger_id: str) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0E2E"},
        "api_app_id": "A0E2E",
        "token": "legacy",
        "container": {"type": "message", "message_ts": "1795466194.000001", "channel_id": "C0FINANCE",
                      "is_ephemeral": False},
        "trigger_id": trigger_id,
        "team": {"id": "T0E2E", "domain": "fake"},
        "channel": {"id": "C0FINANCE", "name": "agent-approvals"},
        "message": {"type": "message", "ts": "1795466194.000001", "blocks": []},
        "response_url": "https://hooks.slack.com/actions/T0E2E/1/x",
        "actions": [{"action_id": action_id, "block_id": "ap_actions", "value": approval_id, "type": "button",
                     "text": {"type": "plain_text", "text": action_id}, "action_ts": "1795466200.000001"}],
    }


def view_submission(user: str, view: dict[str, Any], reason: str) -> dict[str, Any]:
    return {
        "type": "view_submission",
        "team": {"id": "T0E2E", "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0E2E"},
        "api_app_id": "A0E2E",
        "token": "legacy",
        "trigger_id": "5.6.7",
        "view": dict(view, state={"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}}),
        "response_urls": [],
    }


def test_slack_approvals_with_the_official_signature_verifier(approvalplane, fake_upstream):
    slack = SlackFake(channels={"C0FINANCE"}, groups={"S0FINANCE": []})
    slack_up = fake_upstream(slack, name="slack")
    echo = fake_upstream(name="echo")
    ap = approvalplane(
        {
            "server": {"hold_timeout": "30s", "public_url": "https://approvals.example.com"},
            "upstream": [{"name": "echo", "url": echo.url}],
            "agent": [{"id": "support-agent", "token_env": "SUPPORT_AGENT_TOKEN"}],
            "approver": [
                {"id": "alice", "slack_user": "U0ALICE", "token_env": "ALICE_TOKEN"},
                {"id": "bob", "slack_user": "U0BOB", "token_env": "BOB_TOKEN"},
            ],
            "routes": {"finance-oncall": {"approvers": ["alice", "bob"], "slack_channel": "C0FINANCE",
                                          "slack_usergroup": "S0FINANCE"}},
            "slack": {"bot_token_env": "SLACK_BOT_TOKEN", "signing_secret_env": "SLACK_SIGNING_SECRET",
                      "api_base": slack_up.url + "/api", "post_interval": "50ms"},
        },
        rules=RULES,
        secrets={"SUPPORT_AGENT_TOKEN": AGENT_TOKEN, "ALICE_TOKEN": ALICE_TOKEN, "BOB_TOKEN": BOB_TOKEN,
                 "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET},
    )
    alice = ap.admin(ALICE_TOKEN)

    def ask(customer: str) -> str:
        r = requests.post(ap.proxy_url + "/v1/approvals", timeout=10,
                          headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
                          json={"action": "issue_refund", "payload": {"customer": customer, "amount": "$2,400.00"},
                                "risk": "high", "policy_hints": ["refund"], "justification": "duplicate charge",
                                "wait": 0})
        assert r.status_code == 200, ap.context(r.text)
        assert r.json()["status"] == "pending" and r.json()["approved"] is False
        return r.json()["id"]

    first, second = ask("cus_4193_amaya"), ask("cus_5521_boyd")
    card = wait_until(lambda: slack.card("C0FINANCE", first), 10, message=lambda: ap.context("no card posted"))
    text = json.dumps(card["blocks"], ensure_ascii=False)
    for want in ["support-agent", "issue_refund", "cus_4193_amaya", "$2,400.00", "(model-inferred)",
                 "Risk: high", "amount over your $500 auto-approve threshold", "finance-oncall", "escalates in 15m",
                 f"https://approvals.example.com/ui/approvals/{first}"]:
        assert want in text, f"card lacks {want!r}: {text}"
    posted = slack.ok_calls("chat.postMessage")[0]
    assert posted["unfurl_links"] is False and posted["unfurl_media"] is False
    # The official Block Kit models accept the card as Slack would.
    parsed = Block.parse_all(card["blocks"])
    assert len(parsed) == len(card["blocks"]) and all(b is not None for b in parsed)
    for b in parsed:
        b.validate_json()
    buttons = [e for b in card["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [(e["action_id"], e["value"]) for e in buttons] == [("approve", first), ("reject", first)]
    assert all("confirm" in e for e in buttons)

    signed = Signed(ap.control_url)
    approve = block_actions("U0ALICE", "approve", first, slack.issue_trigger())
    body = Signed.body(approve)
    good = signed.headers(body)
    assert signed.verifier.is_valid_request(body, good), "our callback is valid by the official verifier"
    # Refusals: another secret, a stale timestamp, no signature. Nothing changes.
    assert signed.post(body, Signed(ap.control_url, "another-secret").headers(body)).status_code == 401
    assert signed.post(body, signed.headers(body, ts=int(time.time()) - 400)).status_code == 401
    assert signed.post(body, {"Content-Type": "application/x-www-form-urlencoded"}).status_code == 401
    assert alice.get(first)["status"] == "pending"

    # Approve: acknowledged at once; decided by alice; the card says so.
    started = time.monotonic()
    r = signed.post(body, good)
    ack = time.monotonic() - started
    assert r.status_code == 200 and ack < 3.0, (r.status_code, ack)
    wait_until(lambda: alice.get(first)["status"] == "approved", 10)
    assert alice.get(first)["decided_by"] == "alice"
    wait_until(lambda: "Approved by <@U0ALICE> (alice)" in json.dumps(slack.card("C0FINANCE", first)["blocks"]), 10,
               message=lambda: ap.context("card not updated after approval"))
    # The same callback again is a replay.
    assert signed.post(body, good).status_code == 401

    # Reject: the modal opens within the trigger's 3 seconds; its submission decides.
    wait_until(lambda: slack.card("C0FINANCE", second), 10)
    r = signed.send(block_actions("U0BOB", "reject", second, slack.issue_trigger()))
    assert r.status_code == 200
    opened = wait_until(lambda: slack.ok_calls("views.open"), 5, message=lambda: ap.context("no modal"))
    view = opened[0]["view"]
    assert view["callback_id"] == "approvalplane_reject"
    r = signed.send(view_submission("U0BOB", view, "customer already refunded"))
    assert r.status_code == 200 and r.text == ""
    wait_until(lambda: alice.get(second)["status"] == "rejected", 10)
    assert alice.get(second)["reason"] == "customer already refunded"
    wait_until(lambda: "Rejected by <@U0BOB> (bob): customer already refunded"
               in json.dumps(slack.card("C0FINANCE", second)["blocks"], ensure_ascii=False), 10)

    # A stranger is refused with an ephemeral message, and nothing changes.
    third = ask("cus_7000_chen")
    wait_until(lambda: slack.card("C0FINANCE", third), 10)
    assert signed.send(block_actions("U0MALLORY", "approve", third, slack.issue_trigger())).status_code == 200
    said = wait_until(lambda: [c for c in slack.ok_calls("chat.postEphemeral") if c["user"] == "U0MALLORY"], 5)
    assert said[0]["text"] == "You are not an approver for finance-oncall."
    assert alice.get(third)["status"] == "pending"

    code, out = ap.audit_verify()
    assert code == 0, out
    decided = [r for r in ap.audit_records() if r["kind"] == "approval_decided"]
    assert [(r["approval_id"], r["channel"]) for r in decided] == [(first, "slack"), (second, "slack")]
