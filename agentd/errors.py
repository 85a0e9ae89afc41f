"""OpenAI-style error bodies, and the middleware that turns every failure into one.

Clients (the openai SDK, litellm, Continue) parse `{"error": {"message", "type", "param", "code"}}`;
a traceback or an HTML error page confuses them, so nothing else ever leaves the server.
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
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "unavailable_error",
}


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


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

    def response(self) -> web.Response:
        return web.Response(
            status=self.status, body=self.body(), content_type="application/json", headers=self.headers
        )


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
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(request, exc).response()
    except ConnectionError:
        raise  # the client went away; nobody is left to answer
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return ApiError(500, "Internal server error", type="server_error").response()
