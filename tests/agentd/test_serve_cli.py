"""agentd/serve_cli.py: arguments, exit statuses, and a whole serve() run ended by SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import threading
import time
import urllib.request

from agentd import serve_cli
from agentd.config import ServeConfig
from agentd.loader import prepare
from tests.agentd.fakes import FakeModel, chat_reply


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agentd")
    serve_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_defaults_and_flags():
    assert serve_cli.config_from_args(parse()) == ServeConfig()
    config = serve_cli.config_from_args(
        parse("--model", "m.gguf", "--host", "0.0.0.0", "--port", "9", "--api-key", "k", "--ctx", "4096",
              "--max-queue", "3", "--parallel", "2", "--default-max-tokens", "100")
    )  # fmt: skip
    assert config == ServeConfig(
        model_path="m.gguf", host="0.0.0.0", port=9, api_key="k", n_ctx=4096, max_queue=3, max_active=2,
        default_max_tokens=100,
    )  # fmt: skip
    assert ServeConfig().host == "127.0.0.1"


def test_safety_flags():
    config = serve_cli.config_from_args(
        parse("--max-body-mb", "0.5", "--read-timeout", "2.5", "--max-connections", "7", "--allowed-host", "a.lan",
              "--allowed-host", "b.lan", "--cors-origin", "http://localhost:3000")
    )  # fmt: skip
    assert config == ServeConfig(
        max_body_bytes=512 * 1024, read_timeout=2.5, max_connections=7, allowed_hosts=("a.lan", "b.lan"),
        cors_origins=("http://localhost:3000",),
    )  # fmt: skip
    assert serve_cli.run(parse("--max-connections", "0")) == 2
    assert serve_cli.run(parse("--read-timeout", "0")) == 2


def test_invalid_settings_exit_2():
    assert serve_cli.run(parse("--max-queue", "0")) == 2


def test_missing_model_exits_1(tmp_path):
    assert serve_cli.run(parse("--model", str(tmp_path / "absent.gguf"), "--port", "0")) == 1


def test_port_in_use_exits_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert serve_cli.run(parse("--port", str(taken.getsockname()[1]))) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_then_exits_0_on_sigint():
    port = free_port()
    config = ServeConfig(port=port)
    model = FakeModel(chat_reply("x\n</think>\n\nserved"))
    answers: list[dict] = []

    def client() -> None:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/health") as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        request = urllib.request.Request(base + "/v1/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as response:
            answers.append(json.load(response))
        os.kill(os.getpid(), signal.SIGINT)  # serve() handles it: graceful shutdown, status 0

    thread = threading.Thread(target=client)
    thread.start()
    status = asyncio.run(serve_cli.serve(config, lambda: prepare(model, name="cli")))
    thread.join()
    assert status == 0
    assert answers[0]["choices"][0]["message"]["content"] == "served"
