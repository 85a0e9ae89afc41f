"""The aiohttp application: route table, middlewares, and the runner's lifetime."""

from __future__ import annotations

import hmac
import socket
from typing import AsyncIterator, Callable

from aiohttp import web

from agentd.api import admin, anthropic, openai, responses
from agentd.api.common import CONFIG, RUNNER, TURNS
from agentd.config import ServeConfig
from agentd.connections import LimitedSite
from agentd.errors import ApiError, Handler, error_middleware
from agentd.guard import BrowserGuard
from agentd.history import GeneratedTurns
from agentd.loader import LoadedModel
from agentd.runner import Runner

# On shutdown, handlers whose jobs were failed answer at once; ones still preparing a prompt
# (tokenizing) are cancelled after this long, which stops their tokenization too.
HANDLER_GRACE_SECONDS = 0.5
OPEN_PATHS = frozenset({"/health", "/v1/health"})  # probed by clients before they are configured

ROUTES = [
    web.get("/health", admin.health),
    web.get("/v1/health", admin.health),
    web.get("/metrics", admin.metrics),
    web.get("/v1/models", admin.list_models),
    web.get("/models", admin.list_models),
    web.get("/v1/models/{model:.+}", admin.get_model),
    web.post("/v1/chat/completions", openai.chat_completions),
    web.post("/chat/completions", openai.chat_completions),
    web.post("/v1/completions", openai.completions),
    web.post("/completions", openai.completions),
    web.post("/v1/messages", anthropic.messages),
    web.post("/v1/messages/count_tokens", anthropic.count_tokens),
    web.post("/v1/responses", responses.create_response),
    web.post("/responses", responses.create_response),
    web.get("/v1/responses/{response_id}", responses.get_response),
    web.delete("/v1/responses/{response_id}", responses.delete_response),
    web.post("/tokenize", admin.tokenize),
    web.post("/detokenize", admin.detokenize),
    web.post("/apply-template", admin.apply_template),
    web.get("/v1/cache", admin.cache_info),
]


def make_app(config: ServeConfig, runner: Runner) -> web.Application:
    """Serve with `handler_cancellation=True` so a client disconnect cancels its request."""
    guard = BrowserGuard(config)
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[_count_requests, error_middleware, guard.middleware(), _authenticate],
    )
    app.on_response_prepare.append(guard.response_hook())
    app[CONFIG] = config
    app[RUNNER] = runner
    app[TURNS] = GeneratedTurns()  # replies as generated, for re-sent history (agentd.history)
    app.add_routes(ROUTES)
    responses.setup(app, config)
    app.cleanup_ctx.append(_run_runner)
    app.on_shutdown.append(_end_requests)
    return app


async def _run_runner(app: web.Application) -> AsyncIterator[None]:
    runner = app[RUNNER]
    await runner.start()
    yield
    await runner.stop()


async def _end_requests(app: web.Application) -> None:
    """Before aiohttp waits for open handlers on shutdown: end their generations now."""
    app[RUNNER].fail_all("server shutting down")


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.app[CONFIG].api_key
    if key is None or request.path in OPEN_PATHS:
        return await handler(request)
    auth = request.headers.get("Authorization", "")
    given = auth[7:] if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    if not given:
        raise ApiError(401, "Missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
    if not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(401, "Incorrect API key provided", code="invalid_api_key")
    return await handler(request)


@web.middleware
async def _count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    resource = request.match_info.route.resource
    endpoint = resource.canonical if resource is not None else "unmatched"
    request.app[RUNNER].metrics.requests.labels(endpoint, str(response.status)).inc()
    return response


def make_runner(config: ServeConfig, load: Callable[[], LoadedModel]) -> Runner:
    return Runner(
        load, max_queue=config.max_queue, max_active=config.max_active, prefill_chunk=config.prefill_chunk
    )


async def start_server(config: ServeConfig, runner: Runner) -> web.AppRunner:
    """Listen on config.host:config.port (0: any free port; see `.addresses`), then start loading
    the model in the background (/health answers 503 until it is done). The port is bound first,
    so a taken port fails at once instead of after loading. A connection must deliver each
    request's headers within `read_timeout` of opening (or of its previous response): aiohttp's
    keep-alive timer runs from those moments and closes a connection still waiting for headers."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.create_server((config.host, config.port), family=family)
    app_runner = web.AppRunner(
        make_app(config, runner), handler_cancellation=True, access_log=None, keepalive_timeout=config.read_timeout,
        shutdown_timeout=HANDLER_GRACE_SECONDS,
    )
    try:
        await app_runner.setup()
        await LimitedSite(app_runner, sock, config.max_connections).start()
    except BaseException:
        sock.close()
        await app_runner.cleanup()
        raise
    return app_runner
