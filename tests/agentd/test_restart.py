"""A real `agentd serve` process killed with SIGKILL (after and during cache writes) comes back,
opens its SQLite cache and resumes the conversation; `agentd cache` reads and clears it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from agentd.__main__ import main as agentd_main
from tests.agentd.test_session_cache import conversation


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, model: Path, cache_dir: Path, log: Path):
        self.port = _free_port()
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentd", "serve", "--model", str(model), "--port", str(self.port),
             "--cache-dir", str(cache_dir), "--ctx", "16384"],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "AGENTD_CACHE_DIR": str(cache_dir)},
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"daemon exited: {log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("daemon did not become healthy")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def ask(self, turns: int) -> int:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="x", max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model="m", messages=conversation(turns), max_tokens=4, temperature=0,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
        return r.usage.prompt_tokens_details.cached_tokens

    def wait_for_write_through(self) -> None:
        """Until every RAM entry also sits in SQLite (written in the background)."""
        deadline = time.monotonic() + 30
        while self.get("/v1/cache")["disk"]["entries"] < self.get("/v1/cache")["ram"]["entries"]:
            assert time.monotonic() < deadline, "write-through to SQLite did not happen"
            time.sleep(0.2)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()


@pytest.mark.slow
def test_sigkill_after_and_during_writes_then_resume(tiny_path, tmp_path, capsys):
    cache_dir, log = tmp_path / "cache", tmp_path / "daemon.log"
    first = Daemon(tiny_path, cache_dir, log)
    assert first.ask(1) == 0
    first.wait_for_write_through()
    first.kill()

    second = Daemon(tiny_path, cache_dir, log)
    assert second.ask(2) > 0, "the restarted daemon should resume turn 2 from SQLite"
    # kill -9 while a long turn is being computed and its checkpoints written
    def long_turn() -> None:
        with contextlib.suppress(Exception):  # the connection dies with the daemon
            second.ask(10)

    worker = threading.Thread(target=long_turn, daemon=True)
    worker.start()
    time.sleep(1.0)
    assert worker.is_alive(), "the long turn should still be in progress when the daemon is killed"
    second.kill()
    worker.join(30)

    third = Daemon(tiny_path, cache_dir, log)
    assert third.ask(2) > 0, "the database must still open and serve after a kill during writes"
    third.kill()

    assert agentd_main(["cache", "stats", "--cache-dir", str(cache_dir)]) == 0
    assert "checkpoints=" in capsys.readouterr().out
    assert agentd_main(["cache", "ls", "--cache-dir", str(cache_dir)]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert len(listed) > 2
    assert agentd_main(["cache", "clear", "--cache-dir", str(cache_dir)]) == 0
    assert f"removed {len(listed) - 1} checkpoints" in capsys.readouterr().out
    fresh = Daemon(tiny_path, cache_dir, log)
    assert fresh.ask(2) == 0
    fresh.kill()


def test_cache_cli_errors_are_one_line(tmp_path, capsys):
    assert agentd_main(["cache", "stats", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentd: error: no session cache database") and err.count("\n") == 1


@pytest.mark.parametrize("action", ["stats", "ls", "clear"])
def test_a_damaged_database_is_named_and_clear_force_removes_it(tmp_path, capsys, action):
    """The exact case: a database file that is not SQLite. Before: "database disk image is
    malformed" (or "file is not a database") with no file name, and clear could not remove it."""
    from cache.session import DB_FILENAME

    damaged = tmp_path / DB_FILENAME
    damaged.write_bytes(b"SQLite format 3\0" + os.urandom(4096))
    (tmp_path / (DB_FILENAME + "-wal")).write_bytes(b"junk")
    assert agentd_main(["cache", action, "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(damaged) in err and "clear --force" in err and err.count("\n") == 1
    assert agentd_main(["cache", "clear", "--force", "--cache-dir", str(tmp_path)]) == 0
    assert str(damaged) in capsys.readouterr().out
    assert not damaged.exists() and not (tmp_path / (DB_FILENAME + "-wal")).exists()


def test_generate_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        agentd_main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 256)", "(default: 0.7)", "(default: 0.95)", "(default: 20)"):
        assert default in help_text
