"""Browser safety: what a web page the user happens to visit must not do with the local API.

Without `--api-key` (the default) whatever reaches the port may generate, and two browser paths
reach a loopback port:
- A "simple" cross-origin POST (Content-Type text/plain, form data, or none at all) is sent
  without a CORS preflight. The page cannot read the answer, but it starts a generation. So
  every POST must be `application/json` (415 otherwise), a type a page may only send after a
  preflight, and preflights are refused unless `--cors-origin` allows the page's origin.
- DNS rebinding: a page on evil.example points its own name at 127.0.0.1 and then reads the
  answers as same-origin requests. They carry `Host: evil.example`, so while the daemon listens
  on a loopback address (or `--allowed-host` is given) the Host must be a loopback name or
  address or an allowed host (403 otherwise).
CORS is off (no Access-Control-* headers, preflights get 405) unless `--cors-origin` names
origins; those origins, and only those, then get CORS headers and answered preflights.
"""

from __future__ import annotations

import ipaddress
from typing import Awaitable, Callable

from aiohttp import web

from agentd.config import ServeConfig
from agentd.errors import ApiError, Handler

ANY = "*"
_PREFLIGHT_MAX_AGE = "600"
_DEFAULT_ALLOWED_HEADERS = "Authorization, Content-Type, x-api-key, anthropic-version, anthropic-beta"
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether a host name or address (no port, IPv6 without brackets) is the local machine."""
    host = host.rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name or address of a Host header, without port or IPv6 brackets, lower case."""
    if header.startswith("["):
        name = header[1 : header.find("]")] if "]" in header else header
    else:
        name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".").lower()


class BrowserGuard:
    """The middleware (content type, Host, preflights) and the response hook (CORS headers)."""

    def __init__(self, config: ServeConfig):
        allowed = {host_name(h) for h in config.allowed_hosts}
        self._check_host = ANY not in allowed and (is_loopback(config.host) or bool(allowed))
        self._allowed_hosts = allowed
        self._origins = {o.rstrip("/") for o in config.cors_origins}

    def middleware(self) -> Middleware:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            self._require_host(request)
            if request.method == "OPTIONS" and self._cors_origin(request):
                return _preflight(request)
            if request.method == "POST" and request.match_info.http_exception is None:
                _require_json(request)
            return await handler(request)

        return guard

    def response_hook(self) -> ResponseHook:
        async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
            origin = self._cors_origin(request)
            if origin:
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers.add("Vary", "Origin")

        return add_cors_headers

    def _require_host(self, request: web.Request) -> None:
        header = request.headers.get("Host")
        if not self._check_host or header is None:  # no Host header: not a browser
            return
        name = host_name(header)
        if not is_loopback(name) and name not in self._allowed_hosts:
            raise ApiError(
                403,
                f"Host {header!r} is not allowed: this server answers only to loopback names "
                "(localhost, 127.0.0.1, [::1]); start it with --allowed-host NAME to accept another",
                code="host_not_allowed",
            )

    def _cors_origin(self, request: web.Request) -> str | None:
        """The request's Origin when CORS allows it, else None."""
        origin = request.headers.get("Origin")
        if origin is None or not self._origins:
            return None
        return origin if ANY in self._origins or origin.rstrip("/") in self._origins else None


def _preflight(request: web.Request) -> web.Response:
    """The answer to an allowed origin's CORS preflight; the response hook adds the origin."""
    requested = request.headers.get("Access-Control-Request-Headers")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": requested or _DEFAULT_ALLOWED_HEADERS,
            "Access-Control-Max-Age": _PREFLIGHT_MAX_AGE,
        },
    )


def _require_json(request: web.Request) -> None:
    if request.content_type == "application/json":
        return
    sent = request.headers.get("Content-Type")
    raise ApiError(
        415,
        f"Content-Type must be application/json, got {sent!r}" if sent else
        "Content-Type must be application/json (none was sent); add -H 'Content-Type: application/json'",
        code="unsupported_media_type",
    )  # fmt: skip
