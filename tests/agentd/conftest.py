"""Real daemons on loopback for the agentd tests: the production app and runner, served from a
background thread with its own event loop, driven by real HTTP clients (openai SDK, httpx)."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from typing import Any, Callable, Iterator

import openai
import pytest

from agentd.app import make_runner, start_server
from agentd.config import ServeConfig
from agentd.loader import LoadedModel, prepare
from tests.agentd.fakes import FakeModel


FORECAST_SCHEMA = {  # the parameters of the weather tool that the end-to-end tests offer
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "metric": {"type": "boolean"},
    },
    "required": ["city", "days"],
}


def check_forecast_arguments(value: dict) -> None:
    """FORECAST_SCHEMA, checked field by field."""
    assert set(value) <= {"city", "days", "metric"} and {"city", "days"} <= set(value), value
    assert isinstance(value["city"], str) and len(value["city"]) <= 12
    assert type(value["days"]) is int and 1 <= value["days"] <= 14
    assert type(value.get("metric", True)) is bool


class LiveServer:
    def __init__(self, config: ServeConfig, load: Callable[[], LoadedModel]):
        self.config = config
        self.runner = make_runner(config, load)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agentd-test-server", daemon=True)
        self._thread.start()
        self._app_runner = self.run(start_server(config, self.runner))
        host, port = self._app_runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    def run(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop (where the runner lives) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def wait_ready(self, timeout: float = 300) -> None:
        assert self.run(self.runner.wait_loaded(), timeout), self.runner.load_error

    def openai(self, **kw: Any) -> openai.OpenAI:
        kw.setdefault("api_key", self.config.api_key or "x")
        return openai.OpenAI(base_url=self.base_url + "/v1", max_retries=0, timeout=60, **kw)

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(*self._app_runner.addresses[0][:2], timeout=60)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, Any]:
        """A raw HTTP request: (status, headers, parsed JSON or the bytes when not JSON)."""
        conn = self.connect()
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        try:
            return response.status, response.headers, json.loads(raw)
        except ValueError:
            return response.status, response.headers, raw

    def wait_idle(self, timeout: float = 10) -> None:
        """Until the runner holds no job (cancellations are processed between steps)."""
        deadline = time.monotonic() + timeout
        while self.runner.num_jobs and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.runner.num_jobs == 0, f"{self.runner.num_jobs} jobs still in the runner"

    def close(self) -> None:
        """Stop serving (idempotent); the runner flushes and closes the session cache."""
        if self._loop.is_closed():
            return
        self.run(self._app_runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def fake_loader(model: FakeModel, name: str = "fake-model") -> Callable[[], LoadedModel]:
    return lambda: prepare(model, name=name)


@pytest.fixture
def serve_loader() -> Iterator[Callable[..., LiveServer]]:
    """Factory: serve_loader(load, **ServeConfig fields) -> a ready LiveServer, closed after the test."""
    servers: list[LiveServer] = []

    def start(load: Callable[[], LoadedModel], **config: Any) -> LiveServer:
        server = LiveServer(ServeConfig(port=0, **config), load)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def serve_fake(serve_loader) -> Callable[..., LiveServer]:
    """Factory: serve_fake(FakeModel(...), **ServeConfig fields) -> a ready LiveServer."""
    return lambda model, **config: serve_loader(fake_loader(model), **config)


@pytest.fixture(scope="session")
def tiny_server(tiny_model) -> Iterator[LiveServer]:
    """The real tiny model (random weights, real Qwen3.5 vocabulary and template) behind the daemon."""
    server = LiveServer(ServeConfig(port=0), lambda: prepare(tiny_model, name="agentd-tiny", n_ctx=2048))
    server.wait_ready()
    yield server
    server.close()
