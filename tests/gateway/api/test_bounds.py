"""Issue 14: request bounds answer OpenAI error objects (413 for the body, 400 naming the param)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from swiftmesh.testing.services import start_in_process

from .conftest import gateway_settings


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    """A gateway without workers and small bounds (the checks run before routing to a worker)."""
    settings = gateway_settings(tmp_path_factory.mktemp("gw-bounds"), workers=[], max_request_body_bytes=4096,
                                max_messages=3, max_stop=2, max_logit_bias=2, max_choices=4,
                                max_output_tokens=100, request_read_timeout_s=1.5)
    running = start_in_process("gateway", settings)
    yield f"http://127.0.0.1:{running.service.http_port}/v1"
    running.stop(0.5)


MSG = [{"role": "user", "content": "hi"}]


def test_body_over_limit_is_413(gw):
    r = httpx.post(f"{gw}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x" * 8000}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_chunked_body_over_limit_is_413(gw):
    def chunks():
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'
    r = httpx.post(f"{gw}/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "4096" in r.json()["error"]["message"]


@pytest.mark.parametrize(("path", "body", "param"), [
    ("chat/completions", {"messages": MSG * 4}, "messages"),
    ("chat/completions", {"messages": MSG, "stop": ["a", "b", "c"]}, "stop"),
    ("chat/completions", {"messages": MSG, "logit_bias": {"1": 1, "2": 1, "3": 1}}, "logit_bias"),
    ("chat/completions", {"messages": MSG, "n": 5}, "n"),
    ("completions", {"prompt": ["a", "b", "c"], "n": 2}, "n"),
    ("chat/completions", {"messages": MSG, "max_tokens": 101}, "max_tokens"),
    ("chat/completions", {"messages": MSG, "max_completion_tokens": 101}, "max_completion_tokens"),
    ("completions", {"prompt": "a", "max_tokens": 101}, "max_tokens"),
])
def test_lists_over_bounds_are_400_naming_the_param(gw, path, body, param):
    r = httpx.post(f"{gw}/{path}", json={"model": "m", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_within_bounds_passes_the_checks(gw):
    r = httpx.post(f"{gw}/chat/completions", json={"model": "m", "messages": MSG * 3, "stop": ["a", "b"], "n": 4,
                                                         "max_tokens": 100})
    assert r.status_code == 404  # no such model: past the bounds


# -- slow clients (security finding 2): a connection is not held past request_read_timeout_s
def _raw(gw: str, data: bytes) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection and read until the gateway closes it: what came back,
    and after how many seconds (a 20 s socket timeout fails the test on a gateway that waits)."""
    port = int(gw.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        start = time.monotonic()
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got, time.monotonic() - start


def test_body_that_never_arrives_is_408_and_closed(gw):
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4000\r\n\r\n{")
    got, took = _raw(gw, head)
    status, _, rest = got.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 408"), got[:300]
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_timeout" and "request_read_timeout_s" in body["error"]["message"]
    assert 1.0 < took < 15


def test_partial_headers_are_closed(gw):
    got, took = _raw(gw, b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Slow: a")
    assert got == b"" and 1.0 < took < 15
