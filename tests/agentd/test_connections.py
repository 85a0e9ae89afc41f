"""agentd/connections.py and the read timeouts (issue 10): half-open connections are closed, a
stalled body is 408, and connections beyond --max-connections are answered 503 and closed."""

from __future__ import annotations

import json
import socket
import time

from tests.agentd.conftest import LiveServer
from tests.agentd.scripted import assert_serves, scripted_model


def open_socket(live: LiveServer) -> socket.socket:
    host, port = live.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None when it kept the connection open."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    return data


def test_partial_headers_are_closed_after_the_read_timeout(serve_fake):
    """200 connections sending half a request used to be held for over 70 s."""
    live = serve_fake(scripted_model(), read_timeout=0.5)
    socks = [open_socket(live) for _ in range(20)]
    for sock in socks:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
    started = time.monotonic()
    assert all(closed_within(sock, 5) is not None for sock in socks)
    assert time.monotonic() - started < 3
    assert closed_within(open_socket(live), 5) == b""  # one that never sends anything
    assert_serves(live)


def test_a_body_that_does_not_arrive_is_408(serve_fake):
    live = serve_fake(scripted_model(), read_timeout=0.5)
    sock = open_socket(live)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b'Content-Length: 1000\r\n\r\n{"messages":')  # fmt: skip
    head, _, body = (closed_within(sock, 15) or b"").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert "did not arrive" in json.loads(body)["error"]["message"]
    assert_serves(live)


def test_connections_beyond_the_limit_are_503_and_closed(serve_fake):
    live = serve_fake(scripted_model(), max_connections=4)
    held = [open_socket(live) for _ in range(4)]
    for sock in held:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers not finished
    time.sleep(0.2)
    for sock in [open_socket(live) for _ in range(10)]:
        reply = closed_within(sock, 5)
        assert reply is not None and reply.startswith(b"HTTP/1.1 503"), reply
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "too_many_connections"
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 5
    while (status := models_status(live)) != 200 and time.monotonic() < deadline:
        time.sleep(0.05)  # until the server has seen the held connections close
    assert status == 200
    assert_serves(live)


def models_status(live: LiveServer) -> int | None:
    try:
        return live.request("GET", "/v1/models")[0]
    except OSError:  # refused before the request was read
        return None
