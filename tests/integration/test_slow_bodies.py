"""Slow and lying request bodies, over raw sockets against a real uvicorn: each is answered
408 and its connection closed after the read timeout, and the server keeps serving."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.conftest import api_only

pytestmark = pytest.mark.integration

READ_TIMEOUT_S = 1.0
TOTAL_TIMEOUT_S = 3.0
# Generous: the machine is shared, so the test waits long but asserts no timing.
WAIT_S = 30.0


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with api_only(
        tmp_path_factory.mktemp("slow-bodies"),
        "embedded",
        BODY_READ_TIMEOUT_S=str(READ_TIMEOUT_S),
        BODY_TOTAL_TIMEOUT_S=str(TOTAL_TIMEOUT_S),
    ) as url:
        yield url


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
    sock.settimeout(WAIT_S)
    return sock


def _head(path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer_then_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_content_length_that_promises_more_than_is_sent_is_408(api: str) -> None:
    with _connect(api) as sock:
        sock.sendall(_head("/v1/jobs", "Content-Length: 1000") + b'{"name": "x"')
        answer = _answer_then_close(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"not received in time" in answer


def test_a_huge_chunk_size_is_408(api: str) -> None:
    with _connect(api) as sock:
        sock.sendall(_head("/v1/jobs", "Transfer-Encoding: chunked") + b"FFFFFFFF\r\n{")
        answer = _answer_then_close(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_a_trickled_body_is_cut_at_the_total_timeout(api: str) -> None:
    body = b'{"name": "' + b"x" * 200 + b'"}'
    with _connect(api) as sock:
        sock.sendall(_head("/v1/jobs", f"Content-Length: {len(body)}"))
        answer = b""
        for byte in body:  # one byte well within each read timeout, forever
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(READ_TIMEOUT_S / 4)
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            if answer:
                break
        sock.settimeout(WAIT_S)
        answer += _answer_then_close(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_the_server_keeps_serving_while_many_connections_stall(api: str) -> None:
    stalled = []
    for _ in range(50):
        sock = _connect(api)
        sock.sendall(_head("/v1/jobs", "Content-Length: 100") + b"{")
        stalled.append(sock)
    try:
        assert httpx.get(f"{api}/healthz", timeout=WAIT_S).status_code == 200
        assert httpx.post(f"{api}/v1/jobs", json={}, timeout=WAIT_S).status_code == 201
        answers = [_answer_then_close(sock) for sock in stalled]
    finally:
        for sock in stalled:
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers)
    # every stalled connection was closed by the server (recv returned b"" above)


def test_a_body_sent_in_time_is_served(api: str) -> None:
    body = b'{"name": "in time"}'
    with _connect(api) as sock:
        sock.sendall(_head("/v1/jobs", f"Content-Length: {len(body)}", "Connection: close"))
        time.sleep(READ_TIMEOUT_S / 4)
        sock.sendall(body)
        answer = _answer_then_close(sock)
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
