"""A few thousand random and mutated requests (tests/agentd/fuzz_requests.py) against a live daemon
on the tiny model: none may be answered 5xx or with anything but a well-formed error body or
stream, and afterwards the daemon answers a normal request exactly as before.

Seeded and bounded in time. For a longer run: AGENTD_FUZZ_SEED=N AGENTD_FUZZ_REQUESTS=M
AGENTD_FUZZ_SECONDS=S python -m pytest tests/agentd/test_fuzz.py
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import time
from typing import Iterator

import pytest

from agentd.config import ServeConfig
from agentd.loader import prepare
from agentd.prefix_cache import PrefixCache
from tests.agentd.conftest import LiveServer
from tests.agentd.fuzz_requests import MAX_TOKENS, Fuzzer

SEED = int(os.environ.get("AGENTD_FUZZ_SEED", "20260610"))
REQUESTS = int(os.environ.get("AGENTD_FUZZ_REQUESTS", "3000"))
SECONDS = float(os.environ.get("AGENTD_FUZZ_SECONDS", "45"))
NORMAL = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory) -> Iterator[LiveServer]:
    """The tiny model with a small context (so most prompts are cheap and big ones are refused)
    and a session cache with a disk tier of its own."""
    cache_dir = str(tmp_path_factory.mktemp("fuzz-cache"))
    config = ServeConfig(port=0, default_max_tokens=MAX_TOKENS, max_body_bytes=1 << 20, cache_dir=cache_dir)

    def load():
        loaded = prepare(tiny_model, name="agentd-tiny", n_ctx=1024)
        return dataclasses.replace(loaded, cache=PrefixCache.open(tiny_model, 64, cache_dir, 64, 64, max_live=2))

    live = LiveServer(config, load)
    live.wait_ready()
    yield live
    live.close()


class Client:
    """One keep-alive connection, opened again when the server closes it."""

    def __init__(self, server: LiveServer):
        self._server = server
        self._conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, str, bytes]:
        for attempt in range(2):
            if self._conn is None:
                self._conn = self._server.connect()
            try:
                headers = {"Content-Type": content_type} if content_type else {}
                self._conn.request("POST", path, body=body, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
                continue
            if response.will_close:
                self._conn.close()
                self._conn = None
            return response.status, response.headers.get("Content-Type", ""), data
        raise AssertionError("unreachable")


def problem(path: str, status: int, content_type: str, data: bytes) -> str | None:
    """What is wrong with a response, or None."""
    anthropic = path.startswith("/v1/messages")
    if status >= 500:
        return f"status {status}"
    if content_type.startswith("text/event-stream"):
        text = data.decode()
        if "server_error" in text or "api_error" in text or "event: error" in text:
            return "error event in the stream"
        finished = "event: message_stop" in text if anthropic else text.rstrip().endswith("data: [DONE]")
        return None if finished else "stream did not finish"
    try:
        body = json.loads(data)
    except ValueError:
        return "body is not JSON"
    if status >= 400:
        well_formed = (
            body.get("type") == "error" and isinstance(body.get("error"), dict) and body["error"].get("message")
            if anthropic
            else isinstance(body.get("error"), dict) and body["error"].get("message")
        )
        return None if well_formed else "malformed error body"
    return None


def greedy_reply(server: LiveServer) -> str:
    status, _, body = server.request("POST", "/v1/chat/completions", NORMAL)
    assert status == 200, body
    return body["choices"][0]["message"]["content"] + "|" + str(body["choices"][0]["message"].get("reasoning_content"))


def test_random_and_mutated_requests_never_get_a_5xx(server):
    before = greedy_reply(server)
    fuzzer, client = Fuzzer(SEED), Client(server)
    failures: list[str] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + SECONDS
    sent = 0
    while sent < REQUESTS and time.monotonic() < deadline:
        path, body, content_type = fuzzer.request()
        status, response_type, data = client.post(path, body, content_type)
        sent += 1
        statuses[status] = statuses.get(status, 0) + 1
        found = problem(path, status, response_type, data)
        if found:
            failures.append(f"#{sent} {found}: POST {path} {content_type!r} {body[:400]!r} -> {data[:300]!r}")
    print(f"fuzz: {sent} requests, statuses {dict(sorted(statuses.items()))}")
    assert not failures, f"{len(failures)} bad responses of {sent}:\n" + "\n".join(failures[:20])
    assert sent >= min(REQUESTS, 300), f"only {sent} requests in {SECONDS} s"
    assert 200 in statuses and 400 in statuses
    server.wait_idle(10)
    assert greedy_reply(server) == before
