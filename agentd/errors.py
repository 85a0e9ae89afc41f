"""OpenAI- and Anthropic-style error bodies, and the middleware that turns every failure into one.

Clients (the openai SDK, litellm, Continue) parse `{"error": {"message", "type", "param", "code"}}`;
Anthropic clients (Claude Code) parse `{"type": "error", "error": {"type", "message"}}`, used for
every path under ANTHROPIC_PATH. A traceback or an HTML error page confuses them, so nothing else
ever leaves the server.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import msgspec
from aiohttp import web

log = logging.getLogger("agentd")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "unavailable_error",
}
ANTHROPIC_PATH = "/v1/messages"
_ANTHROPIC_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class AnthropicErrorDetail(msgspec.Struct):
    type: str
    message: str


class AnthropicErrorBody(msgspec.Struct, tag_field="type", tag="error"):
    error: AnthropicErrorDetail


_encode = msgspec.json.Encoder().encode


class ApiError(Exception):
    """A request failure with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error")
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return _encode(ErrorBody(ErrorDetail(self.message, self.type, self.param, self.code)))

    def anthropic_body(self) -> bytes:
        """Anthropic's error types go by status alone (500 and the rest: api_error)."""
        kind = _ANTHROPIC_TYPE_BY_STATUS.get(self.status, "api_error")
        return _encode(AnthropicErrorBody(AnthropicErrorDetail(kind, self.message)))

    def response(self, anthropic: bool = False) -> web.Response:
        body = self.anthropic_body() if anthropic else self.body()
        return web.Response(status=self.status, body=body, content_type="application/json", headers=self.headers)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> ApiError:
    if exc.status == 404:
        message = f"No such endpoint: {request.method} {request.path}"
    elif exc.status == 405:
        message = f"Method {request.method} is not allowed for {request.path}"
    elif exc.status == 413:
        message = f"Request body too large: {exc.text}"
    else:
        message = exc.text or exc.reason
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return ApiError(exc.status, message, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    anthropic = request.path.startswith(ANTHROPIC_PATH)
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response(anthropic)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(request, exc).response(anthropic)
    except ConnectionError:
        raise  # the client went away; nobody is left to answer
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return ApiError(500, "Internal server error", type="server_error").response(anthropic)
