"""The soak's recording upstream: a separate process that logs every request it receives.

    python upstream.py --port PORT --log FILE

Every request except the control path is appended to FILE (one JSON object per
line, flushed before any answer is sent): a receipt id, the wall-clock time, the
method, the path, the body, its SHA-256 and the request marker found in it, the
mode it was served in and what was answered. Answers carry `X-Soak-Receipt: <id>`,
so an agent can name the receipt its response came from.

Modes, switched with `POST /__soak/mode` and a JSON body (sent by the soak
driver straight to this port, never through the proxy):

  {"mode": "normal"}                      200 at once
  {"mode": "slow", "delay": 2.0}          200 after `delay` seconds
  {"mode": "failing", "p500": 0.5, "preset": 0.3}
                                          500 with probability p500, a TCP reset
                                          (after the request was read and logged)
                                          with probability preset, else 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTROL_PATH = "/__soak/mode"
MARKER = re.compile(r"(?:marker=|/items/|/admin/)([A-Za-z0-9_.-]+)")


def find_marker(path: str, body: bytes) -> str | None:
    """The request marker: `marker=<m>` in a form body, else `/items/<m>` or `/admin/<m>` in the path."""
    m = MARKER.search(body.decode("utf-8", "replace")) or MARKER.search(path)
    return m.group(1) if m else None


class State:
    def __init__(self, log_path: str):
        self.lock = threading.Lock()
        self.log = open(log_path, "a", encoding="utf-8")
        self.next_id = 1
        self.mode: dict = {"mode": "normal"}
        self.rng = random.Random(0x5eed)

    def record(self, entry: dict) -> int:
        with self.lock:
            rid = self.next_id
            self.next_id += 1
            entry = {"rid": rid, **entry}
            self.log.write(json.dumps(entry, sort_keys=True) + "\n")
            self.log.flush()
            return rid

    def pick(self) -> tuple[dict, str]:
        """The current mode and what to answer in it."""
        with self.lock:
            mode = dict(self.mode)
            if mode["mode"] != "failing":
                return mode, "ok"
            x = self.rng.random()
        if x < mode.get("p500", 0.5):
            return mode, "500"
        if x < mode.get("p500", 0.5) + mode.get("preset", 0.3):
            return mode, "reset"
        return mode, "ok"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120
    server: "Server"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length:
            return self.rfile.read(int(length))
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(3)
        return b""

    def _send(self, status: int, payload: dict, rid: int | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if rid is not None:
            self.send_header("X-Soak-Receipt", str(rid))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _handle(self) -> None:
        st = self.server.state
        body = self._body()
        if self.path == CONTROL_PATH:
            mode = json.loads(body or b"{}")
            with st.lock:
                st.mode = mode
            self._send(200, {"mode": mode})
            return
        mode, answer = st.pick()
        rid = st.record({
            "t": time.time(),
            "method": self.command,
            "path": self.path,
            "body": body.decode("utf-8", "replace"),
            "sha256": hashlib.sha256(body).hexdigest(),
            "marker": find_marker(self.path, body),
            "mode": mode["mode"],
            "delay": float(mode.get("delay", 2.0)) if mode["mode"] == "slow" else 0.0,
            "answer": answer,
        })
        if mode["mode"] == "slow":
            time.sleep(float(mode.get("delay", 2.0)))
        if answer == "reset":
            # The request was read and logged; the proxy gets a reset instead of an answer.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        status = 500 if answer == "500" else 200
        self._send(status, {"ok": status == 200, "receipt": rid, "method": self.command, "path": self.path}, rid)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    state: State

    def handle_error(self, request, client_address):  # resets and closed sockets are expected here
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    srv = Server(("127.0.0.1", args.port), Handler)
    srv.state = State(args.log)
    print(f"upstream listening on 127.0.0.1:{args.port}", flush=True)
    srv.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
