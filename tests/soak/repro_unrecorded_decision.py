"""Regression check: no decision is taken while the audit disk is full.

One replica on the memory store, with its `audit.path` on a small tmpfs (needs
root) and the release binary:

    .venv/bin/python tests/soak/repro_unrecorded_decision.py [BINARY]

Steps: a refund is held; the audit tmpfs is filled until an allowed call is refused
with 503 `audit_unavailable`; alice tries to approve through the admin API; the disk
is freed; the agent retries. Expected: the approval is refused with 503
`audit_unavailable` and changes nothing (the refund stays pending), so no request
is ever forwarded on a decision the chain does not hold. Before the fix, the
approval answered 200 and the refund was later forwarded with `grant_used` but no
`approval_decided` record.

Exit 0 when every forwarded approval has its decision recorded, 1 when not.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
received: list[bytes] = []


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _ok(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        if self.command == "POST":
            received.append(body)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _ok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    binary = sys.argv[1] if len(sys.argv) > 1 else str(REPO / "target" / "release" / "approvalplane")
    up = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    d = Path(tempfile.mkdtemp(prefix="approvalplane-repro-"))
    audit = d / "audit"
    audit.mkdir()
    (d / "rules").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(audit)], check=True)
    listen, control = free_port(), free_port()
    (d / "rules" / "r.rego").write_text(
        'package approvalplane\n'
        'approval contains {"id": "refund", "reason": "refunds", "route": "fin", "risk": "high", '
        '"action": "refund"} if { input.request.path == "/refund" }\n'
        'allow contains {"id": "reads", "reason": "reads"} if { input.request.method == "GET" }\n')
    (d / "approvalplane.toml").write_text(f"""\
[server]
listen = "127.0.0.1:{listen}"
control_listen = "127.0.0.1:{control}"
[[upstream]]
name = "echo"
url = "http://127.0.0.1:{up.server_address[1]}"
[[agent]]
id = "bot"
token_env = "AGENT_TOKEN"
[[approver]]
id = "alice"
token_env = "ALICE_TOKEN"
[routes.fin]
approvers = ["alice"]
[policy]
rules = "rules"
[audit]
path = "{audit}"
fail_mode = "closed"
""")
    env = {"PATH": "/usr/bin:/bin", "AGENT_TOKEN": "agent-token-1", "ALICE_TOKEN": "alice-token-1", "NO_COLOR": "1"}
    proc = subprocess.Popen([binary, "serve", "--config", str(d / "approvalplane.toml")], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(d / "serve.log", "wb"), start_new_session=True)
    proxy, ctl = f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{control}"
    agent = {"Authorization": "Bearer agent-token-1"}
    refund = dict(agent, **{"Content-Type": "application/x-www-form-urlencoded", "Prefer": "wait=0"})
    try:
        for _ in range(150):
            try:
                if requests.get(ctl + "/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        r = requests.post(proxy + "/echo/refund", data="amount=240000", headers=refund, timeout=10)
        aid = r.json()["error"]["approval_id"]
        print(f"1. refund held: {r.status_code} {aid}")

        junk = audit / "fill.junk"
        subprocess.run(["sh", "-c", f"cat /dev/zero > '{junk}' 2>/dev/null; true"])
        for i in range(1, 200):  # use up the free end of the chain file's last page
            if requests.get(proxy + "/echo/items", headers=agent, timeout=10).status_code == 503:
                break
        print(f"2. audit disk full: allowed GET number {i} got 503 audit_unavailable")

        r = requests.post(f"{ctl}/v1/admin/approvals/{aid}/decision", json={"decision": "approve"},
                          headers={"Authorization": "Bearer alice-token-1"}, timeout=10)
        print(f"3. alice approves while the disk is full: {r.status_code} {r.json().get('status')}")

        junk.unlink()
        r = requests.post(proxy + "/echo/refund", data="amount=240000", headers=refund, timeout=10)
        print(f"4. disk freed; the agent retries: {r.status_code}; the upstream received {received}")

        kinds = [json.loads(line)["kind"] for f in sorted(audit.glob("*.jsonl")) for line in f.open()
                 if json.loads(line).get("approval_id") == aid]
        print(f"5. audit records of {aid}: {kinds}")
        lost = [line.strip() for line in open(d / "serve.log") if 'record="approval_decided"' in line]
        print(f"   serve log: {lost}")
        if received and "approval_decided" not in kinds:
            print("BUG: the approval was forwarded, and its approval_decided record was never written")
            return 1
        print("ok: the decision is recorded")
        return 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        subprocess.run(["umount", str(audit)])
        up.shutdown()
        subprocess.run(["rm", "-rf", str(d)])


if __name__ == "__main__":
    sys.exit(main())
