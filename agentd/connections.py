"""The listening site, with a cap on open connections.

aiohttp holds every accepted connection until its client closes it or a timeout fires, with no
cap: 200 clients that each send half a request line held 200 connections. The read timeout
(`keepalive_timeout`, see agentd.app) closes a connection whose request headers do not arrive
in time; this cap bounds how many can be open at once. A connection beyond it is answered
503 at once and closed, so a client sees "busy" rather than a hang.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

from aiohttp import web

from agentd.errors import ApiError

log = logging.getLogger("agentd")

_BUSY = ApiError(503, "Too many open connections; retry later", code="too_many_connections").body()
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY
)


class LimitedSite(web.BaseSite):
    """Serves `runner` on a bound socket, at most `max_connections` connections at a time."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, max_connections: int):
        super().__init__(runner)
        self._sock = sock
        self._limit = max_connections
        self._open = 0
        self._refusing = False
        host, port = sock.getsockname()[:2]
        self._name = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(self._protocol, sock=self._sock)

    def _protocol(self) -> asyncio.BaseProtocol:
        """Called once per accepted connection, before the connection is set up."""
        if self._open >= self._limit:
            if not self._refusing:
                log.warning("%d connections open (--max-connections): refusing new ones", self._open)
            self._refusing = True
            return _Refused()
        self._refusing = False
        self._open += 1
        server = self._runner.server
        assert server is not None, "the runner is set up before its site starts"
        return _Counted(server(), self._closed)

    def _closed(self) -> None:
        self._open -= 1


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, telling the site when the connection ends."""

    def __init__(self, inner: asyncio.Protocol, on_close: Callable[[], None]):
        self._inner = inner
        self._on_close = on_close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_close()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY_RESPONSE)
        transport.close()
