"""Shared harness for the ApprovalPlane end-to-end tests.

The tests drive the product only through its public contract
(INTERFACE.md): the `approvalplane` binary, its TOML config, the
agent-facing listener, the control listener and the audit CLI.

Contents:
  * free_port()            -- a loopback TCP port nobody is listening on
  * FakeUpstream           -- threaded HTTP/1.1 server recording every request
  * StripeFake             -- a responder imitating Stripe's v1 wire format
  * ApprovalPlane          -- one `approvalplane serve` process
  * AdminClient            -- the admin API of INTERFACE.md section 4
  * run_cli()              -- runs any other `approvalplane` subcommand
  * fixtures: approvalplane_bin, fake_upstream, fake_stripe, approvalplane
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets as _secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import tomllib
import traceback
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "approvalplane"

STARTUP_TIMEOUT = 15.0  # seconds until /healthz must answer 200
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
CLI_TIMEOUT = 60.0  # seconds for any one-shot CLI command
HTTP_TIMEOUT = 10.0  # seconds for harness HTTP calls (admin API, health)


# --------------------------------------------------------------------------
# ports
# --------------------------------------------------------------------------

_handed_out_ports: set[int] = set()
_port_lock = threading.Lock()


def free_port() -> int:
    """A loopback TCP port that is free right now (never the same twice per run)."""
    with _port_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _handed_out_ports:
                _handed_out_ports.add(port)
                return port
    raise RuntimeError("could not find a free loopback port")


def wait_for_tcp(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1,
               message: str | Callable[[], str] = "condition not met") -> Any:
    """Poll `predicate` until it returns a truthy value; return that value or fail."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as exc:  # keep polling through transient errors
            last_exc = exc
        if time.monotonic() >= deadline:
            msg = message() if callable(message) else message
            if last_exc is not None:
                msg += f" (last error: {last_exc!r})"
            pytest.fail(f"timed out after {timeout:.1f}s: {msg}")
        time.sleep(interval)


def tail(text: str, lines: int = 60) -> str:
    parts = text.splitlines()
    if len(parts) <= lines:
        return text
    return "\n".join(["[... %d earlier lines cut ...]" % (len(parts) - lines)] + parts[-lines:])


# --------------------------------------------------------------------------
# TOML writing (tomllib only reads)
# --------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def _toml_str(value: str) -> str:
    out = json.dumps(value, ensure_ascii=False)
    return out.replace("\x7f", "\\u007F")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, Path):
        return _toml_str(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _toml_body(table: Mapping[str, Any], path: tuple[str, ...], out: list[str]) -> None:
    for k, v in table.items():
        if not isinstance(v, Mapping) and not _is_table_array(v):
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in table.items():
        sub = path + (k,)
        name = ".".join(_toml_key(p) for p in sub)
        if isinstance(v, Mapping):
            has_scalars = any(not isinstance(x, Mapping) and not _is_table_array(x) for x in v.values())
            if has_scalars or not v:
                out.extend(["", f"[{name}]"])
            _toml_body(v, sub, out)
        elif _is_table_array(v):
            for item in v:
                out.extend(["", f"[[{name}]]"])
                _toml_body(item, sub, out)


def to_toml(config: Mapping[str, Any]) -> str:
    """Serialise a config dict; lists of dicts become [[arrays of tables]]."""
    out: list[str] = []
    _toml_body(config, (), out)
    return "\n".join(out).lstrip("\n") + "\n"


# --------------------------------------------------------------------------
# fake upstream
# --------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str  # path including the query string, exactly as received
    headers: list[tuple[str, str]]
    body: bytes
    client: tuple[str, int]
    chunked: bool = False
    received_at: float = field(default_factory=time.time)

    @property
    def path_only(self) -> str:
        return urllib.parse.urlsplit(self.path).path

    @property
    def query(self) -> str:
        return urllib.parse.urlsplit(self.path).query

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for (k, v) in self.headers if k.lower() == name]

    def header(self, name: str, default: str | None = None) -> str | None:
        values = self.header_values(name)
        return values[0] if values else default

    def form(self) -> list[tuple[str, str]]:
        """The body parsed as application/x-www-form-urlencoded, in order."""
        return urllib.parse.parse_qsl(self.body.decode("utf-8"), keep_blank_values=True)

    def form_dict(self) -> dict[str, str]:
        return dict(self.form())

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeResponse:
    status: int = 200
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = ()
    body: bytes | str | dict | list | None = b""

    def encoded(self) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = list(self.headers.items()) if isinstance(self.headers, Mapping) else list(self.headers)
        body = self.body
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            if not any(k.lower() == "content-type" for k, _ in headers):
                headers.append(("Content-Type", "application/json"))
        elif isinstance(body, str):
            body = body.encode()
        elif body is None:
            body = b""
        return self.status, headers, body


Responder = Callable[[RecordedRequest], "FakeResponse | tuple"]


def echo_responder(req: RecordedRequest) -> FakeResponse:
    """Default: 200 JSON describing what was received."""
    try:
        body_text: Any = req.body.decode("utf-8")
    except UnicodeDecodeError:
        body_text = None
    return FakeResponse(
        200,
        [("Content-Type", "application/json"), ("X-Fake-Upstream", "echo")],
        {
            "ok": True,
            "method": req.method,
            "path": req.path,
            "headers": [[k, v] for k, v in req.headers],
            "body": body_text,
            "body_sha256": hashlib.sha256(req.body).hexdigest(),
        },
    )


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections are closed after this
    server: "_FakeHTTPServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        self.server.owner._log(format % args)

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ValueError("connection closed inside a chunked body")
            size_text = line.split(b";", 1)[0].strip()
            size = int(size_text, 16)
            if size == 0:
                # trailers, up to the empty line
                while True:
                    trailer = self.rfile.readline(65537)
                    if trailer in (b"\r\n", b"\n", b""):
                        break
                return bytes(out)
            data = self.rfile.read(size)
            if len(data) != size:
                raise ValueError("connection closed inside a chunk")
            out += data
            self.rfile.readline(3)  # the CRLF after the chunk

    def _handle(self) -> None:
        owner = self.server.owner
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        try:
            if chunked:
                body = self._read_chunked()
            else:
                length = self.headers.get("Content-Length")
                body = self.rfile.read(int(length)) if length else b""
        except Exception as exc:  # malformed framing
            owner._log(f"bad request framing: {exc!r}")
            self.close_connection = True
            self.send_error(400, "bad framing")
            return
        rec = RecordedRequest(
            method=self.command,
            path=self.path,
            headers=list(self.headers.items()),
            body=body,
            client=self.client_address,
            chunked=chunked,
        )
        owner._record(rec)
        try:
            result = owner.responder(rec)
            if isinstance(result, tuple):
                result = FakeResponse(*result)
            status, headers, payload = result.encoded()
        except Exception:
            tb = traceback.format_exc()
            owner._log("responder failed:\n" + tb)
            owner.errors.append(tb)
            status, headers, payload = 500, [("Content-Type", "text/plain")], tb.encode()
        self.send_response(status)  # also writes Server and Date
        for k, v in headers:
            if k.lower() in ("content-length", "transfer-encoding"):
                continue
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class _FakeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "FakeUpstream"


class FakeUpstream:
    """A local HTTP/1.1 upstream that records every request it receives."""

    def __init__(self, responder: Responder | None = None, name: str = "fake",
                 host: str = "127.0.0.1", port: int = 0):
        self.name = name
        self.responder: Responder = responder or echo_responder
        self.errors: list[str] = []
        self.log: list[str] = []
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._server = _FakeHTTPServer((host, port), _FakeHandler)
        self._server.owner = self
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> "FakeUpstream":
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name=f"fake-upstream-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeUpstream":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # addresses
    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # recording
    def _record(self, rec: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(rec)
            self._cond.notify_all()

    def _log(self, line: str) -> None:
        with self._lock:
            self.log.append(line)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def matching(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests
                if (method is None or r.method == method) and (path is None or r.path_only == path)]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"fake upstream {self.name!r} got {len(self._requests)} "
                                f"request(s), expected {count} within {timeout}s")
                self._cond.wait(left)
            return list(self._requests)

    def describe(self) -> str:
        rows = [f"{r.method} {r.path} ({len(r.body)} body bytes)" for r in self.requests]
        return f"fake upstream {self.name!r} received {len(rows)} request(s): " + "; ".join(rows)


# --------------------------------------------------------------------------
# Stripe imitation
# --------------------------------------------------------------------------


def _stripe_id(prefix: str) -> str:
    return prefix + "_" + _secrets.token_hex(12)


def _parse_stripe_form(body: bytes) -> dict[str, Any]:
    """Enough of Stripe's bracket encoding for refunds: a=1&metadata[k]=v."""
    out: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True):
        m = re.fullmatch(r"([^\[\]]+)\[([^\[\]]*)\]", key)
        if m:
            out.setdefault(m.group(1), {})[m.group(2)] = value
        else:
            out[key] = value
    return out


class StripeFake:
    """Responder imitating the parts of Stripe's v1 API the tests use.

    * POST /v1/refunds (form encoded) -> a refund object
    * GET  /v1/refunds/{id}           -> a previously created refund
    Requests without `Authorization: Bearer <api_key>` get Stripe's 401 error.
    """

    STRIPE_VERSION = "2024-06-20"

    def __init__(self, api_key: str = "sk_live_real"):
        self.api_key = api_key
        self.refunds: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _headers(self, req: RecordedRequest) -> list[tuple[str, str]]:
        headers = [
            ("Content-Type", "application/json"),
            ("Request-Id", _stripe_id("req")),
            ("Stripe-Version", req.header("Stripe-Version") or self.STRIPE_VERSION),
            ("Cache-Control", "no-cache, no-store"),
            ("Access-Control-Allow-Origin", "*"),
        ]
        idem = req.header("Idempotency-Key")
        if idem:
            headers.append(("Idempotency-Key", idem))
        return headers

    def _error(self, req: RecordedRequest, status: int, message: str, param: str | None = None,
               code: str | None = None, type_: str = "invalid_request_error") -> FakeResponse:
        err: dict[str, Any] = {"type": type_, "message": message}
        if param:
            err["param"] = param
        if code:
            err["code"] = code
        return FakeResponse(status, self._headers(req), {"error": err})

    def __call__(self, req: RecordedRequest) -> FakeResponse:
        if req.header("Authorization") != f"Bearer {self.api_key}":
            return self._error(req, 401, "Invalid API Key provided.", type_="invalid_request_error")
        path = req.path_only
        if req.method == "POST" and path == "/v1/refunds":
            ctype = (req.header("Content-Type") or "").split(";")[0].strip().lower()
            if ctype != "application/x-www-form-urlencoded":
                return self._error(req, 400, f"Invalid content type {ctype!r}.")
            params = _parse_stripe_form(req.body)
            if not params.get("charge") and not params.get("payment_intent"):
                return self._error(req, 400, "One of the following params should be provided "
                                   "for this request: payment_intent or charge.", param="charge")
            amount_text = params.get("amount", "10000")
            if not isinstance(amount_text, str) or not amount_text.isdigit():
                return self._error(req, 400, "Invalid integer: %s" % amount_text, param="amount")
            refund = {
                "id": _stripe_id("re"),
                "object": "refund",
                "amount": int(amount_text),
                "balance_transaction": _stripe_id("txn"),
                "charge": params.get("charge"),
                "created": int(time.time()),
                "currency": params.get("currency", "usd"),
                "destination_details": {"card": {"reference_status": "pending", "type": "refund"},
                                        "type": "card"},
                "metadata": params.get("metadata") if isinstance(params.get("metadata"), dict) else {},
                "payment_intent": params.get("payment_intent"),
                "reason": params.get("reason"),
                "receipt_number": None,
                "source_transfer_reversal": None,
                "status": "succeeded",
                "transfer_reversal": None,
            }
            with self._lock:
                self.refunds[refund["id"]] = refund
            return FakeResponse(200, self._headers(req), refund)
        m = re.fullmatch(r"/v1/refunds/([A-Za-z0-9_]+)", path)
        if req.method == "GET" and m:
            with self._lock:
                refund = self.refunds.get(m.group(1))
            if refund is None:
                return self._error(req, 404, f"No such refund: '{m.group(1)}'", param="id",
                                   code="resource_missing")
            return FakeResponse(200, self._headers(req), refund)
        return self._error(req, 404, f"Unrecognized request URL ({req.method}: {path}).")


# --------------------------------------------------------------------------
# the binary
# --------------------------------------------------------------------------


def approvalplane_binary() -> Path:
    return Path(os.environ.get("APPROVALPLANE_BIN") or DEFAULT_BIN)


def require_binary() -> Path:
    path = approvalplane_binary()
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"approvalplane binary not found or not executable at {path}; "
                    f"build it (cargo build) or set APPROVALPLANE_BIN", pytrace=False)
    return path


def base_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A small, controlled environment for the binary."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "RUST_BACKTRACE": "1",
        "NO_COLOR": "1",
    }
    if "RUST_LOG" in os.environ:  # let a developer turn logging up
        env["RUST_LOG"] = os.environ["RUST_LOG"]
    if extra:
        env.update(extra)
    return env


def run_cli(args: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
            timeout: float = CLI_TIMEOUT, input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002
    """Run `approvalplane ARGS...`; returns the CompletedProcess (text mode)."""
    binary = require_binary()
    home = Path(os.environ.get("HOME") or "/tmp")
    try:
        return subprocess.run([str(binary), *args], cwd=str(cwd) if cwd else None,
                              env=dict(env) if env is not None else base_env(home),
                              input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`approvalplane {' '.join(args)}` did not finish within {timeout}s\n"
                    f"stdout:\n{exc.stdout}\nstderr:\n{exc.stderr}")


# --------------------------------------------------------------------------
# admin API
# --------------------------------------------------------------------------


class AdminClient:
    """The admin API (INTERFACE.md section 4), authenticated as one approver."""

    def __init__(self, control_url: str, token: str, on_fail: Callable[[str], str] = lambda m: m):
        self.base = control_url.rstrip("/")
        self.token = token
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self._on_fail = on_fail  # adds context (the proxy's stderr) to failures

    def raw(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        return self.session.request(method, self.base + path, **kwargs)

    def _expect(self, resp: requests.Response, status: int | None) -> Any:
        if status is not None and resp.status_code != status:
            pytest.fail(self._on_fail(
                f"{resp.request.method} {resp.url} answered {resp.status_code}, expected {status}: "
                f"{resp.text[:2000]}"))
        try:
            return resp.json()
        except ValueError:
            pytest.fail(self._on_fail(f"{resp.request.method} {resp.url} answered non-JSON "
                                      f"({resp.status_code}): {resp.text[:2000]}"))

    def list(self, status: str | None = "pending") -> list[dict[str, Any]]:
        params = {"status": status} if status else None
        body = self._expect(self.raw("GET", "/v1/admin/approvals", params=params), 200)
        assert isinstance(body, dict) and isinstance(body.get("approvals"), list), \
            f"approval list is not {{'approvals': [...]}}: {body!r}"
        return body["approvals"]

    def get(self, approval_id: str, expect: int | None = 200) -> dict[str, Any]:
        return self._expect(self.raw("GET", f"/v1/admin/approvals/{approval_id}"), expect)

    def decide(self, approval_id: str, decision: str, reason: str | None = None,
               expect: int | None = 200) -> dict[str, Any]:
        payload: dict[str, Any] = {"decision": decision}
        if reason is not None:
            payload["reason"] = reason
        return self._expect(self.raw("POST", f"/v1/admin/approvals/{approval_id}/decision",
                                     json=payload), expect)

    def approve(self, approval_id: str, reason: str | None = None) -> dict[str, Any]:
        return self.decide(approval_id, "approve", reason)

    def reject(self, approval_id: str, reason: str) -> dict[str, Any]:
        return self.decide(approval_id, "reject", reason)

    def wait_for_approval(self, predicate: Callable[[dict[str, Any]], bool] = lambda a: True,
                          status: str | None = "pending", timeout: float = 10.0) -> dict[str, Any]:
        """Poll the list until an approval matching `predicate` shows up; return it."""
        seen: list[Any] = []

        def probe() -> dict[str, Any] | None:
            approvals = self.list(status)
            seen[:] = approvals
            for a in approvals:
                if predicate(a):
                    return a
            return None

        return wait_until(probe, timeout, interval=0.1, message=lambda: self._on_fail(
            f"no {status or 'any'} approval matched; last list: {json.dumps(seen)[:2000]}"))


# --------------------------------------------------------------------------
# the proxy process
# --------------------------------------------------------------------------


class ApprovalPlane:
    """One `approvalplane serve --config FILE` process and its files."""

    def __init__(self, workdir: Path, config_path: Path, config: dict[str, Any] | None,
                 env: dict[str, str], secrets: dict[str, str]):
        self.workdir = workdir
        self.config_path = config_path
        self.config = config  # parsed config (None if the text did not parse)
        self.env = env
        self.secrets = secrets
        self.stdout_path = workdir / "approvalplane.stdout.log"
        self.stderr_path = workdir / "approvalplane.stderr.log"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.killed = False  # True when SIGTERM was not enough

    # addresses and paths
    @property
    def listen(self) -> str:
        return self.config["server"]["listen"]

    @property
    def control_listen(self) -> str:
        return self.config["server"]["control_listen"]

    @property
    def proxy_url(self) -> str:
        return f"http://{self.listen}"

    @property
    def control_url(self) -> str:
        return f"http://{self.control_listen}"

    def _resolve(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else (self.config_path.parent / p)

    @property
    def audit_dir(self) -> Path | None:
        rel = (self.config or {}).get("audit", {}).get("path")
        return self._resolve(rel) if rel else None

    @property
    def rules_dir(self) -> Path | None:
        rel = (self.config or {}).get("policy", {}).get("rules")
        return self._resolve(rel) if rel else None

    # logs
    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def context(self, message: str = "") -> str:
        """`message` plus the process state and the tail of its stderr."""
        state = "not started"
        if self.proc is not None:
            rc = self.proc.poll()
            state = "running" if rc is None else f"exited with {rc}"
        out = (f"{message}\n--- approvalplane ({state}) stderr tail ---\n"
               f"{tail(self.stderr_text())}\n--- end stderr ---")
        stdout = self.stdout_text()
        if stdout.strip():
            out += f"\n--- stdout tail ---\n{tail(stdout, 20)}\n--- end stdout ---"
        return out

    def fail(self, message: str) -> None:
        pytest.fail(self.context(message), pytrace=False)

    # lifecycle
    def start(self) -> None:
        binary = require_binary()
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [str(binary), "serve", "--config", str(self.config_path)],
                cwd=str(self.workdir), env=self.env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait for GET /healthz == 200 and the agent listener accepting TCP."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            rc = self.proc.poll() if self.proc else None
            if rc is not None:
                raise _EarlyExit(rc, self.stderr_text())
            try:
                r = requests.get(self.control_url + "/healthz", timeout=1.0)
                if r.status_code == 200:
                    break
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as exc:
                last = repr(exc)
            if time.monotonic() >= deadline:
                self.stop()
                self.fail(f"GET {self.control_url}/healthz did not answer 200 within {timeout}s "
                          f"(last: {last})")
            time.sleep(0.1)
        host, port = self.listen.rsplit(":", 1)
        if not wait_for_tcp(host.strip("[]"), int(port), max(1.0, deadline - time.monotonic())):
            self.fail(f"agent listener {self.listen} does not accept connections although /healthz is up")

    def signal(self, sig: int) -> None:
        if self.running():
            self.proc.send_signal(sig)

    def stop(self, timeout: float = STOP_GRACE) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self.killed = True
        self.returncode = self.proc.returncode
        return self.returncode

    # helpers
    def admin(self, token: str) -> AdminClient:
        return AdminClient(self.control_url, token, on_fail=self.context)

    def audit_verify(self, *extra: str, path: Path | None = None) -> tuple[int, str]:
        """`approvalplane audit verify <audit dir> [extra...]` -> (exit code, stdout+stderr)."""
        target = path or self.audit_dir
        assert target is not None, "config has no audit.path"
        cp = run_cli(["audit", "verify", str(target), *extra], cwd=self.workdir,
                     env=base_env(self.workdir / "home"))
        return cp.returncode, cp.stdout + cp.stderr

    def cli(self, *args: str, with_secrets: bool = False,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
        """Run another subcommand in this instance's directory."""
        env = dict(self.env) if with_secrets else base_env(self.workdir / "home")
        return run_cli(list(args), cwd=self.workdir, env=env, timeout=timeout)

    def audit_records(self) -> list[dict[str, Any]]:
        """Every complete JSON line of every chain file, in name order."""
        out: list[dict[str, Any]] = []
        if self.audit_dir is None or not self.audit_dir.is_dir():
            return out
        for f in sorted(self.audit_dir.glob("*.jsonl")):
            for line in f.read_text().splitlines(keepends=True):
                if line.endswith("\n") and line.strip():
                    out.append(json.loads(line))
        return out

    def audit_text(self) -> str:
        if self.audit_dir is None or not self.audit_dir.is_dir():
            return ""
        return "".join(p.read_text(errors="replace") for p in sorted(self.audit_dir.rglob("*"))
                       if p.is_file())


class _EarlyExit(Exception):
    def __init__(self, rc: int, stderr: str):
        super().__init__(f"exit {rc}")
        self.rc = rc
        self.stderr = stderr


_ADDR_IN_USE = re.compile(r"address already in use|addrinuse|os error 98", re.I)
_PLACEHOLDERS = ("@LISTEN@", "@CONTROL_LISTEN@", "@DIR@")


class ApprovalPlaneFactory:
    """Creates ApprovalPlane processes in fresh directories under tmp_path."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.instances: list[ApprovalPlane] = []

    def __call__(self, config: dict[str, Any] | str, *,
                 rules: Mapping[str, str] | None = None,
                 rules_src: Path | str | None = None,
                 secrets: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None,
                 files: Mapping[str, str | bytes] | None = None,
                 wait: bool = True,
                 start: bool = True) -> ApprovalPlane:
        """Write config + rules and start `approvalplane serve`.

        config:    a dict (serialised as TOML) or TOML text. In a dict, missing
                   server.listen / server.control_listen get free loopback ports,
                   policy.rules defaults to "rules" and audit.path to "audit".
                   In text, @LISTEN@, @CONTROL_LISTEN@ and @DIR@ are replaced.
        rules:     {"name.rego": text} written into the rules directory.
        rules_src: a directory whose contents are copied into the rules directory.
        secrets:   environment variables for the `*_env` keys (tokens, keys).
        env:       further environment variables.
        files:     {relative path: content} written next to the config.
        """
        attempts = 3
        for attempt in range(attempts):
            ap = self._prepare(config, rules, rules_src, secrets, env, files)
            if not start:
                return ap
            ap.start()
            self.instances.append(ap)
            if not wait:
                return ap
            try:
                ap.wait_healthy()
                return ap
            except _EarlyExit as exc:
                early = exc
            picked_ports = isinstance(config, dict) and not (
                config.get("server", {}).get("listen") or config.get("server", {}).get("control_listen"))
            if picked_ports and _ADDR_IN_USE.search(early.stderr) and attempt + 1 < attempts:
                continue  # a port race: try again with other ports
            ap.fail(f"approvalplane serve exited with {early.rc} before /healthz answered "
                    f"(config {ap.config_path})")
        raise AssertionError("unreachable")

    def _prepare(self, config, rules, rules_src, secrets, env, files) -> ApprovalPlane:
        n = len(self.instances)
        workdir = self.tmp_path / f"ap{n}"
        while workdir.exists():
            n += 1
            workdir = self.tmp_path / f"ap{n}"
        workdir.mkdir(parents=True)
        (workdir / "home").mkdir()

        if isinstance(config, dict):
            cfg = json.loads(json.dumps(config))  # deep copy
            server = cfg.setdefault("server", {})
            server.setdefault("listen", f"127.0.0.1:{free_port()}")
            server.setdefault("control_listen", f"127.0.0.1:{free_port()}")
            cfg.setdefault("policy", {}).setdefault("rules", "rules")
            cfg.setdefault("audit", {}).setdefault("path", "audit")
            text = to_toml(cfg)
            parsed: dict[str, Any] | None = cfg
        else:
            text = config
            if "@LISTEN@" in text:
                text = text.replace("@LISTEN@", f"127.0.0.1:{free_port()}")
            if "@CONTROL_LISTEN@" in text:
                text = text.replace("@CONTROL_LISTEN@", f"127.0.0.1:{free_port()}")
            text = text.replace("@DIR@", str(workdir))
            try:
                parsed = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                parsed = None
        config_path = workdir / "approvalplane.toml"
        config_path.write_text(text)

        rules_rel = (parsed or {}).get("policy", {}).get("rules", "rules")
        rules_dir = Path(rules_rel) if Path(rules_rel).is_absolute() else workdir / rules_rel
        if rules_src is not None:
            shutil.copytree(rules_src, rules_dir, dirs_exist_ok=True)
        if rules:
            rules_dir.mkdir(parents=True, exist_ok=True)
            for name, body in rules.items():
                (rules_dir / name).parent.mkdir(parents=True, exist_ok=True)
                (rules_dir / name).write_text(body)
        for rel, content in (files or {}).items():
            p = workdir / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content)

        secrets_d = dict(secrets or {})
        full_env = base_env(workdir / "home", {**secrets_d, **dict(env or {})})
        return ApprovalPlane(workdir, config_path, parsed, full_env, secrets_d)

    def stop_all(self) -> None:
        for ap in self.instances:
            try:
                ap.stop()
            except Exception:
                if ap.proc is not None and ap.proc.poll() is None:
                    ap.proc.kill()


# --------------------------------------------------------------------------
# pytest wiring
# --------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def approvalplane_bin() -> Path:
    return require_binary()


@pytest.fixture
def fake_upstream():
    """Factory: fake_upstream(responder=None, name="fake") -> started FakeUpstream."""
    started: list[FakeUpstream] = []

    def make(responder: Responder | None = None, name: str = "fake") -> FakeUpstream:
        up = FakeUpstream(responder, name=name).start()
        started.append(up)
        return up

    yield make
    for up in started:
        up.stop()


@pytest.fixture
def fake_stripe(fake_upstream):
    """A started FakeUpstream answering like Stripe; accepts key `sk_live_real`.

    The StripeFake responder is reachable as `fake_stripe.responder`.
    """
    return fake_upstream(StripeFake(api_key="sk_live_real"), name="stripe")


@pytest.fixture
def approvalplane(tmp_path, request):
    """Factory for `approvalplane serve` processes (see ApprovalPlaneFactory.__call__).

    Every process is stopped (SIGTERM, SIGKILL after 10s) at teardown; when the
    test failed, each process's stderr tail is printed into the report.
    """
    factory = ApprovalPlaneFactory(tmp_path)
    yield factory
    factory.stop_all()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for ap in factory.instances:
            print(ap.context(f"[{ap.workdir.name}] exit code {ap.returncode}"))
