"""Checks of the harness itself; these need no approvalplane binary."""

from __future__ import annotations

import json
import socket

import requests


def test_fake_upstream_records_content_length_bodies(fake_upstream):
    up = fake_upstream()
    r = requests.post(up.url + "/v1/things?expand%5B%5D=a&x=1", data=b"a=1&b=2",
                      headers={"Content-Type": "application/x-www-form-urlencoded",
                               "X-Dup": "one"}, timeout=5)
    assert r.status_code == 200
    echoed = r.json()
    assert echoed["method"] == "POST" and echoed["body"] == "a=1&b=2"
    (rec,) = up.requests
    assert rec.method == "POST"
    assert rec.path == "/v1/things?expand%5B%5D=a&x=1"
    assert rec.path_only == "/v1/things" and rec.query == "expand%5B%5D=a&x=1"
    assert rec.body == b"a=1&b=2" and not rec.chunked
    assert rec.form_dict() == {"a": "1", "b": "2"}
    assert rec.header("x-dup") == "one"


def test_fake_upstream_decodes_chunked_bodies(fake_upstream):
    up = fake_upstream()

    def gen():
        yield b'{"amount":'
        yield b' 240000}'

    r = requests.post(up.url + "/json", data=gen(), headers={"Content-Type": "application/json"},
                      timeout=5)
    assert r.status_code == 200
    (rec,) = up.requests
    assert rec.chunked
    assert rec.header("Transfer-Encoding") == "chunked"
    assert rec.json() == {"amount": 240000}


def test_fake_upstream_raw_chunked_with_trailer_and_keepalive(fake_upstream):
    up = fake_upstream()
    with socket.create_connection(("127.0.0.1", up.port), timeout=5) as s:
        s.sendall(b"POST /raw HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                  b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 2
    first, second = up.requests
    assert first.body == b"hello world" and first.path == "/raw"
    assert second.method == "GET" and second.path == "/second" and second.body == b""


def test_fake_upstream_custom_responder_and_errors(fake_upstream):
    up = fake_upstream(lambda req: (201, {"X-A": "b"}, {"made": req.path}))
    r = requests.put(up.url + "/p", data="x", timeout=5)
    assert r.status_code == 201 and r.headers["X-A"] == "b" and r.json() == {"made": "/p"}

    def broken(req):
        raise RuntimeError("boom")

    up.responder = broken
    r = requests.get(up.url + "/q", timeout=5)
    assert r.status_code == 500 and "boom" in r.text
    assert up.errors and len(up.wait_for_requests(2, timeout=1)) == 2
    json.dumps([r.path for r in up.requests])


def test_config_dicts_are_written_as_equivalent_toml():
    import tomllib

    from conftest import to_toml

    cfg = {
        "server": {"listen": "127.0.0.1:1", "control_listen": "127.0.0.1:2", "max_body_bytes": 10},
        "upstream": [{"name": "a", "url": "http://127.0.0.1:3"}, {"name": "b", "url": "http://x"}],
        "routes": {"finance-oncall": {"approvers": ["alice", "bob"]}},
        "mcp_server": [{"name": "gh", "command": ["npx", "x"], "env": {"T": "GH_TOKEN"}}],
        "policy": {"rules": "rules", "default": "deny"},
        "odd": {"a key": 'quote " backslash \\ newline \n é', "flag": False, "f": 1.5},
    }
    text = to_toml(cfg)
    assert "[[upstream]]" in text and "[routes.finance-oncall]" in text
    assert tomllib.loads(text) == cfg
