"""What a user sees of the daemon's life: the first run, the loading bar, a SIGTERM with a request
in flight, a restart on a read-only copy of the cache, and a client that gives up on a huge prompt."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import sys
import threading
import time

import pytest

from agentd.__main__ import main as agentd_main
from tests.agentd.test_restart import Daemon


def _stream_until_first_token(port: int, events: list[bytes]) -> threading.Thread:
    """A long streaming chat request, read in a thread; returns once its first token arrived."""
    body = json.dumps({"messages": [{"role": "user", "content": "count"}], "max_tokens": 20_000, "stream": True})
    first = threading.Event()

    def read() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        try:
            for line in response:
                events.append(line)
                if b'"content"' in line or b'"reasoning_content"' in line:
                    first.set()
        except OSError:
            pass  # the daemon is gone
        finally:
            first.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first.wait(60), "no token arrived"
    return reader


@pytest.mark.slow
def test_sigterm_ends_requests_and_a_read_only_copy_still_serves_hits(tiny_path, tmp_path, read_only):
    cache_dir, log = tmp_path / "cache", tmp_path / "daemon.log"
    daemon = Daemon(tiny_path, cache_dir, log)
    assert daemon.ask(1) == 0
    daemon.wait_for_write_through()
    events: list[bytes] = []
    reader = _stream_until_first_token(daemon.port, events)

    sent = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    took = time.monotonic() - sent
    reader.join(5)
    daemon.log.close()
    text = log.read_text()
    assert took < 2.5, f"SIGTERM took {took:.1f} s:\n{text[-2000:]}"
    assert not reader.is_alive(), "the streaming client was left hanging"
    assert any(b"shutting down" in e for e in events), "the stream should end with an error event"
    assert re.search(r"INFO agentd: SIGTERM received: shutting down, 1 requests in flight are cancelled", text), text
    assert re.search(r"INFO agentd: stopped in \d+\.\d s", text), text
    # the loading bar is complete and ends its line: the next log line starts a line of its own
    assert re.search(r"8/8 [^\n\r]*\n\S+ \S+ INFO agentd: model \S+ loaded in", text), text

    read_only(cache_dir)
    restarted = Daemon(tiny_path, cache_dir, log)
    assert restarted.ask(2) > 0, "a read-only cache directory should still give disk hits"
    restarted.kill()
    assert "cache disk tier read-only: serving its" in log.read_text()


@pytest.mark.slow
def test_first_run_says_what_the_demo_model_is(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AGENTD_CACHE_DIR", str(tmp_path))
    assert agentd_main(["generate", "--max-tokens", "2", "hi"]) == 0
    err = capsys.readouterr().err
    path = tmp_path / "models"
    assert f"agentd: first run: writing the embedded demo model to {path}" in err, err
    notice = re.search(r"agentd: using the embedded demo model (\S+): (.*)", err)
    assert notice and notice.group(1).startswith(str(path)), err
    assert "random weights" in notice.group(2) and "gibberish" in notice.group(2), err
    assert "agentd generate --model PATH" in notice.group(2), err
    assert agentd_main(["generate", "--max-tokens", "2", "hi"]) == 0
    again = capsys.readouterr().err
    assert "first run" not in again and "using the embedded demo model" in again


def _threads_tokenizing() -> list[str]:
    return [
        thread.name
        for thread in threading.enumerate()
        if any("engine/tokenizer.py" in f.co_filename for f in _frames(sys._current_frames().get(thread.ident)))
    ]


def _frames(frame):
    while frame is not None:
        yield frame.f_code
        frame = frame.f_back


@pytest.mark.slow
def test_a_client_that_leaves_stops_its_tokenization(tiny_server):
    """A 16 MB word takes seconds to tokenize; nobody waits for its ids once the client is gone."""
    body = json.dumps({"content": "y" * 16_000_000}).encode()
    host, port = tiny_server.base_url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)))
    head = f"POST /tokenize HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    client.sendall(head.encode() + body)
    _wait_until(lambda: _threads_tokenizing(), "tokenization did not start")
    client.close()
    _wait_until(lambda: not _threads_tokenizing(), "tokenization went on after the client left", timeout=2)


def _wait_until(condition, message: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)
