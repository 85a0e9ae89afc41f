"""Server-sent events: `data: <json>\\n\\n` frames, optional named events, keep-alive comments."""

from __future__ import annotations

from aiohttp import web


async def open_stream(request: web.Request) -> web.StreamResponse:
    """Send the SSE response headers now, so the client sees the stream open before the first token."""
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    await response.prepare(request)
    return response


async def send_event(response: web.StreamResponse, data: bytes, event: str | None = None) -> None:
    head = b"event: " + event.encode() + b"\n" if event else b""
    await response.write(head + b"data: " + data + b"\n\n")


async def send_keepalive(response: web.StreamResponse) -> None:
    """A comment line: ignored by SSE parsers, keeps proxies and client read timeouts from firing."""
    await response.write(b": keep-alive\n\n")


async def send_done(response: web.StreamResponse) -> None:
    await response.write(b"data: [DONE]\n\n")
