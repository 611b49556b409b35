"""`approvalplane demo`: a newcomer follows the printed steps and they work.

The test starts the demo on free ports, reads the banner it prints, and runs
each numbered step's command as printed: the curl commands with the real
`curl` (or, without one, the same request through `requests`), and step 6's
`approvalplane audit verify` with the binary under test. Only the approval id
is filled in (APPROVAL_ID), as a reader would.
"""

from __future__ import annotations

import json
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import base_env, free_port, run_cli

BANNER_TIMEOUT = 30.0  # seconds until the demo has printed every step
CURL_TIMEOUT = 45  # longer than the demo's hold_timeout (30s)
STOP_TIMEOUT = 15.0


@dataclass
class Step:
    number: int
    title: str
    commands: list[str]


def parse_steps(banner: str) -> dict[int, Step]:
    """Numbered steps: `N. title` followed by indented command lines."""
    steps: dict[int, Step] = {}
    current: Step | None = None
    for line in banner.splitlines():
        m = re.match(r"^(\d+)\.\s+(.*)$", line)
        if m:
            current = Step(int(m.group(1)), m.group(2), [])
            steps[current.number] = current
        elif current is not None and line.startswith((" ", "\t")) and line.strip():
            current.commands.append(line.strip())
        elif not line.strip():
            current = None
    return steps


@dataclass
class Answer:
    status: int
    body: str

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            pytest.fail(f"not JSON (HTTP {self.status}): {self.body[:500]!r}")


def curl_to_request(argv: list[str]) -> dict[str, Any]:
    """The request a curl command line describes (the options the steps use)."""
    assert argv[0] == "curl"
    method = None
    headers: dict[str, str] = {}
    data: list[str] = []
    url = None
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in ("-s", "--silent", "-S", "--show-error"):
            pass
        elif a in ("-X", "--request"):
            i += 1
            method = argv[i]
        elif a in ("-H", "--header"):
            i += 1
            k, _, v = argv[i].partition(":")
            headers[k.strip()] = v.strip()
        elif a in ("-d", "--data", "--data-raw", "--data-ascii"):
            i += 1
            data.append(argv[i])
        elif a.startswith("-"):
            pytest.fail(f"the steps use a curl option this test does not know: {a}")
        else:
            url = a
        i += 1
    body = "&".join(data).encode() if data else None
    if body is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/x-www-form-urlencoded"  # what curl -d sends
    return {"method": method or ("POST" if body is not None else "GET"), "url": url,
            "headers": headers, "data": body}


def run_curl(command: str, extra_headers: list[str] = ()) -> Answer:
    """Runs one printed curl command; returns the status and the body."""
    argv = shlex.split(command)
    assert argv[0] == "curl", f"not a curl command: {command}"
    for h in extra_headers:
        argv[1:1] = ["-H", h]
    if shutil.which("curl"):
        marker = "\n@@status@@"
        cp = subprocess.run(argv + ["--max-time", str(CURL_TIMEOUT), "-w", marker + "%{http_code}"],
                            capture_output=True, text=True, timeout=CURL_TIMEOUT + 5)
        assert cp.returncode == 0, f"`{command}` failed ({cp.returncode}): {cp.stderr}"
        body, _, status = cp.stdout.rpartition(marker)
        return Answer(int(status), body)
    req = curl_to_request(argv)
    r = requests.request(req["method"], req["url"], headers=req["headers"], data=req["data"],
                         timeout=CURL_TIMEOUT)
    return Answer(r.status_code, r.text)


class Demo:
    def __init__(self, binary: Path, workdir: Path):
        self.listen = f"127.0.0.1:{free_port()}"
        self.control = f"127.0.0.1:{free_port()}"
        self.dir = workdir / "demo"
        home = workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.stderr_path = workdir / "demo.stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [str(binary), "demo", "--dir", str(self.dir), "--listen", self.listen,
             "--control-listen", self.control],
            cwd=str(workdir), env=base_env(home), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, start_new_session=True)
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def read_banner(self, last_step: int) -> str:
        """Stdout up to the blank line after step `last_step`'s command."""
        deadline = time.monotonic() + BANNER_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail("the demo did not print its steps within "
                            f"{BANNER_TIMEOUT}s; stdout so far:\n{''.join(self.stdout)}\nstderr:\n{self.stderr()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"the demo exited ({self.proc.wait()}) before printing step {last_step}:\n"
                            f"{''.join(self.stdout)}\nstderr:\n{self.stderr()}")
            self.stdout.append(line)
            steps = parse_steps("".join(self.stdout))
            if last_step in steps and steps[last_step].commands:
                return "".join(self.stdout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                pytest.fail(f"the demo did not exit within {STOP_TIMEOUT}s of SIGTERM")
        self._stderr.close()
        return self.proc.returncode


@pytest.fixture
def demo(tmp_path, approvalplane_bin):
    d = Demo(approvalplane_bin, tmp_path)
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait(timeout=10)


def audit_records(audit_dir: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted(audit_dir.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


def test_demo_steps_work_as_printed(demo, approvalplane_bin):
    banner = demo.read_banner(last_step=6)
    steps = parse_steps(banner)
    assert sorted(steps) == [1, 2, 3, 4, 5, 6], f"unexpected steps:\n{banner}"
    assert f"http://{demo.listen}" in banner and f"http://{demo.control}" in banner
    agent_token = re.search(r"agent token:\s*(\S+)", banner).group(1)
    audit_dir = Path(re.search(r"audit log:\s*(\S+)", banner).group(1))
    for n in range(1, 6):
        assert len(steps[n].commands) == 1 and steps[n].commands[0].startswith("curl "), \
            f"step {n} is not one curl command: {steps[n]}"
    context = lambda: f"\nbanner:\n{banner}\ndemo stderr:\n{demo.stderr()[-3000:]}"  # noqa: E731

    # 1. A small refund is allowed at once; the echo shows the injected credential.
    t0 = time.monotonic()
    a1 = run_curl(steps[1].commands[0])
    assert a1.status == 200, f"step 1: HTTP {a1.status} {a1.body}" + context()
    assert time.monotonic() - t0 < 10
    echo = a1.json()
    assert echo["method"] == "POST" and echo["path"].startswith("/v1/refunds")
    seen = echo["authorization_seen_by_upstream"]
    assert seen and seen.startswith("Bearer ") and agent_token not in seen, \
        f"step 1: the upstream saw {seen!r}, not an injected credential"
    assert agent_token not in a1.body, "step 1: the agent's token reached the upstream"

    # 2. A $2,400 refund is held: 409 approval_pending at once (Prefer: wait=0).
    t0 = time.monotonic()
    a2 = run_curl(steps[2].commands[0])
    assert time.monotonic() - t0 < 10, "step 2 held the connection despite Prefer: wait=0"
    assert a2.status == 409, f"step 2: HTTP {a2.status} {a2.body}" + context()
    err = a2.json()["error"]
    assert err["type"] == "approval_pending" and err["approval_id"] and err["status_url"]
    approval_id = err["approval_id"]

    # 3. The approver sees it waiting.
    a3 = run_curl(steps[3].commands[0])
    assert a3.status == 200, f"step 3: HTTP {a3.status} {a3.body}" + context()
    listed = {a["id"]: a for a in a3.json()["approvals"]}
    assert approval_id in listed, f"step 3 does not list {approval_id}: {a3.body}"
    assert listed[approval_id]["status"] == "pending"

    # 4. Approve it (the reader puts the id from step 2 or 3 in place of APPROVAL_ID).
    assert "APPROVAL_ID" in steps[4].commands[0]
    a4 = run_curl(steps[4].commands[0].replace("APPROVAL_ID", approval_id))
    assert a4.status == 200, f"step 4: HTTP {a4.status} {a4.body}" + context()
    assert a4.json()["status"] == "approved" and a4.json()["id"] == approval_id

    # 5. The identical request is forwarded, once.
    a5 = run_curl(steps[5].commands[0])
    assert a5.status == 200, f"step 5: HTTP {a5.status} {a5.body}" + context()
    echo5 = a5.json()
    assert echo5["echo"] is True and "amount=240000" in echo5["body"]
    assert agent_token not in a5.body
    # Running it again needs a new approval (asked with Prefer: wait=0 so as
    # not to wait for the hold timeout).
    again = run_curl(steps[5].commands[0], extra_headers=["Prefer: wait=0"])
    assert again.status == 409, f"step 5 repeated: HTTP {again.status} {again.body}"
    assert again.json()["error"]["approval_id"] != approval_id

    # 6. Stop the demo, then verify the audit trail with the printed command.
    assert demo.stop() == 0, "the demo did not exit 0 on SIGTERM" + context()
    argv = shlex.split(steps[6].commands[0])
    assert argv[:3] == ["approvalplane", "audit", "verify"], steps[6]
    cp = run_cli(argv[1:], env=base_env(demo.dir))
    assert cp.returncode == 0, f"step 6: audit verify exited {cp.returncode}\n{cp.stdout}{cp.stderr}"

    records = audit_records(audit_dir)
    used = [r for r in records if r["kind"] == "grant_used" and r.get("approval_id") == approval_id]
    assert len(used) == 1, f"the approved refund's grant was used {len(used)} times"
    forwards = [r for r in records if r["kind"] == "forwarded" and r.get("request_id") == used[0]["request_id"]]
    assert len(forwards) == 1 and forwards[0]["status"] == 200
    decided = [r for r in records if r["kind"] == "approval_decided" and r.get("approval_id") == approval_id]
    assert decided and decided[-1]["decided_by"] == "alice"
    assert records[-1]["kind"] == "checkpoint" and any(r["kind"] == "shutdown" for r in records)
    assert agent_token not in "".join(p.read_text() for p in audit_dir.glob("*.jsonl"))


def test_curl_translation_matches_curl(fake_upstream):
    """The fallback used without curl sends what curl sends."""
    if not shutil.which("curl"):
        pytest.skip("curl is not installed: nothing to compare the translation with")
    up = fake_upstream()
    cmd = (f"curl -s -X POST {up.url}/stripe/v1/refunds -H 'Authorization: Bearer t' "
           f"-H 'Prefer: wait=0' -d charge=ch_1 -d amount=240000")
    via_curl = run_curl(cmd)
    req = curl_to_request(shlex.split(cmd))
    via_requests = requests.request(req["method"], req["url"], headers=req["headers"], data=req["data"], timeout=10)
    assert via_curl.status == via_requests.status_code == 200
    a, b = up.requests
    assert (a.method, a.path, a.body) == (b.method, b.path, b.body)
    for h in ("Authorization", "Prefer", "Content-Type"):
        assert a.header(h) == b.header(h), h
    cmd = f"curl -s -X POST {up.url}/d -H 'Authorization: Bearer t' -d '{{\"decision\": \"approve\"}}'"
    run_curl(cmd)
    req = curl_to_request(shlex.split(cmd))
    requests.request(req["method"], req["url"], headers=req["headers"], data=req["data"], timeout=10)
    c, d = up.requests[2:]
    assert (c.method, c.body, c.header("Content-Type")) == (d.method, d.body, d.header("Content-Type"))
