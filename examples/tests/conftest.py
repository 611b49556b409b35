"""Runs the Python examples against the real `approvalplane serve`.

The server uses the examples' own config (examples/approvalplane.toml, with
free ports) and policy (examples/rules). The process harness is the one of the
end-to-end suite, tests/e2e/conftest.py, loaded under its own module name.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

EXAMPLES = Path(__file__).resolve().parents[1]
REPO_ROOT = EXAMPLES.parent
SDK_SRC = REPO_ROOT / "sdk" / "python" / "src"
_HARNESS_PATH = REPO_ROOT / "tests" / "e2e" / "conftest.py"
_HARNESS_NAME = "approvalplane_e2e_harness"

AGENT_TOKEN = "examples-agent-token-31aa"
ALICE_TOKEN = "examples-alice-token-8e42"
RUN_TIMEOUT = 30.0  # seconds for one example run


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


def examples_config() -> dict[str, Any]:
    """examples/approvalplane.toml, with free ports and a short hold_timeout."""
    config = tomllib.loads((EXAMPLES / "approvalplane.toml").read_text())
    server = config["server"]
    del server["listen"], server["control_listen"]  # the harness picks free ports
    server["hold_timeout"] = "2s"  # so the SDK also long-polls with GET
    config["audit"]["path"] = "audit"
    return config


@dataclass
class Server:
    ap: Any  # harness.ApprovalPlane
    admin: Any  # harness.AdminClient
    procs: list = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of an example run: the agent's URL and token."""
        env = dict(os.environ)
        env.update({
            "APPROVALPLANE_URL": self.ap.proxy_url,
            "APPROVALPLANE_TOKEN": AGENT_TOKEN,
            "APPROVAL_TIMEOUT": "20",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SDK_SRC), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra)
        return env

    def run(self, script: str, args: Sequence[str] = (), **env: str) -> subprocess.Popen:
        """Starts examples/<script> with the venv's Python; stdout and stderr are captured."""
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args],
            cwd=str(REPO_ROOT), env=self.env(**env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.procs.append(proc)
        return proc

    def kill_leftovers(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        self.procs.clear()

    @staticmethod
    def finish(proc: subprocess.Popen) -> str:
        """Waits for an example run; returns its stdout, failing on a non-zero exit."""
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"example did not finish within {RUN_TIMEOUT}s\nstdout:\n{out}\nstderr:\n{err}")
        assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
        return out

    def pending_for(self, customer: str) -> dict[str, Any]:
        """The pending approval whose summary names `customer`."""
        return self.admin.wait_for_approval(
            lambda a: (a.get("summary") or {}).get("customer") == customer, timeout=15)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    harness.require_binary()
    factory = harness.ApprovalPlaneFactory(tmp_path_factory.mktemp("examples"))
    try:
        ap = factory(examples_config(), rules_src=EXAMPLES / "rules",
                     secrets={"SUPPORT_AGENT_TOKEN": AGENT_TOKEN, "ALICE_TOKEN": ALICE_TOKEN})
        yield Server(ap=ap, admin=ap.admin(ALICE_TOKEN))
    finally:
        factory.stop_all()


@pytest.fixture(autouse=True)
def _no_leftover_runs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Kills example runs a failed test left waiting."""
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").kill_leftovers()


@pytest.fixture
def customer() -> str:
    """A customer id unique to this test (payloads stay distinct across tests)."""
    return "cus_" + secrets.token_hex(4)


@pytest.fixture
def free_port() -> int:
    return harness.free_port()
