"""Fixtures for the SDK tests: one real `approvalplane serve` per test module.

The process harness (config writing, start/stop, admin API client) is the one
of the end-to-end suite, tests/e2e/conftest.py, loaded here under its own
module name so that both suites can run in one pytest session.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
SDK_SRC = REPO_ROOT / "sdk" / "python" / "src"

# Test the working tree's SDK even when an older copy is installed.
if str(SDK_SRC) not in sys.path:
    sys.path.insert(0, str(SDK_SRC))
_HARNESS_PATH = REPO_ROOT / "tests" / "e2e" / "conftest.py"
_HARNESS_NAME = "approvalplane_e2e_harness"


def _load_harness() -> Any:
    if _HARNESS_NAME in sys.modules:
        return sys.modules[_HARNESS_NAME]
    spec = importlib.util.spec_from_file_location(_HARNESS_NAME, _HARNESS_PATH)
    assert spec is not None and spec.loader is not None, f"cannot load {_HARNESS_PATH}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[_HARNESS_NAME] = module
    spec.loader.exec_module(module)
    return module


harness = _load_harness()

AGENT_ID = "sdk-agent"
AGENT_TOKEN = "sdk-agent-token-4c1e"
OTHER_AGENT_TOKEN = "other-agent-token-9d2a"
APPROVER_ID = "alice"
APPROVER_TOKEN = "alice-approver-token-77b0"

# kind "api" is what POST /v1/approvals evaluates (INTERFACE.md section 5).
RULES = """\
package approvalplane

allow contains {"id": "api.read", "reason": "reading a record is safe"} if {
	input.kind == "api"
	input.action == "read_record"
}

deny contains {"id": "api.drop", "reason": "dropping a database is never allowed"} if {
	input.kind == "api"
	input.action == "drop_database"
}

approval contains {
	"id": "api.refund",
	"reason": "refunds need a person",
	"route": "ops",
	"risk": "high",
	"action": "issue_refund",
	"expires_after": "10m",
} if {
	input.kind == "api"
	input.action == "issue_refund"
}

approval contains {
	"id": "api.short_lived",
	"reason": "this approval expires quickly",
	"route": "ops",
	"expires_after": "2s",
} if {
	input.kind == "api"
	input.action == "short_lived"
}
"""


def server_config(hold_timeout: str = "1s") -> dict[str, Any]:
    """A config with two agents, one approver and the route `ops`.

    A short hold_timeout makes the SDK go through its GET long-poll loop.
    """
    return {
        "server": {"hold_timeout": hold_timeout},
        "upstream": [{"name": "unused", "url": "http://127.0.0.1:9"}],
        "agent": [
            {"id": AGENT_ID, "token_env": "SDK_AGENT_TOKEN"},
            {"id": "other-agent", "token_env": "OTHER_AGENT_TOKEN"},
        ],
        "approver": [{"id": APPROVER_ID, "token_env": "ALICE_TOKEN"}],
        "routes": {"ops": {"approvers": [APPROVER_ID]}},
    }


SECRETS = {
    "SDK_AGENT_TOKEN": AGENT_TOKEN,
    "OTHER_AGENT_TOKEN": OTHER_AGENT_TOKEN,
    "ALICE_TOKEN": APPROVER_TOKEN,
}


@dataclass
class Server:
    ap: Any  # harness.ApprovalPlane
    admin: Any  # harness.AdminClient

    @property
    def url(self) -> str:
        return self.ap.proxy_url

    token = AGENT_TOKEN
    other_token = OTHER_AGENT_TOKEN

    def context(self, message: str = "") -> str:
        return self.ap.context(message)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running `approvalplane serve` shared by the tests of one module.

    Tests keep apart by using distinct payloads (see `unique`).
    """
    harness.require_binary()
    factory = harness.ApprovalPlaneFactory(tmp_path_factory.mktemp("sdk"))
    try:
        ap = factory(server_config(), rules={"main.rego": RULES}, secrets=SECRETS)
        yield Server(ap=ap, admin=ap.admin(APPROVER_TOKEN))
    finally:
        factory.stop_all()


@pytest.fixture
def free_port() -> int:
    """A loopback port nobody listens on."""
    return harness.free_port()


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A string unique to this test, to make payloads distinct."""
    import secrets

    return f"{request.node.name}-{secrets.token_hex(4)}"
