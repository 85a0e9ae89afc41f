"""`agentd serve`: load the model once and serve the OpenAI-compatible API until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import time
from typing import Callable

from agentd.app import make_runner, start_server
from agentd.config import ServeConfig
from agentd.loader import LoadedModel, load

log = logging.getLogger("agentd")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve a model over the OpenAI-compatible HTTP API")
    defaults = ServeConfig()
    p.add_argument("--model", metavar="PATH", help="GGUF model file (default: the embedded model)")
    p.add_argument("--model-name", metavar="ID", help="model id reported by /v1/models (default: file name)")
    p.add_argument("--host", default=defaults.host, help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=defaults.port, help="port (default: %(default)s; 0: any free)")
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on every request")
    p.add_argument("--ctx", type=int, metavar="N", help="context size in tokens (default: the model's)")
    p.add_argument(
        "--max-queue", type=int, default=defaults.max_queue, metavar="N",
        help="requests accepted at once; more get 503 (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--parallel", type=int, default=defaults.max_active, metavar="N",
        help="requests batched into each forward pass; the rest wait in order (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--default-max-tokens", type=int, default=defaults.default_max_tokens, metavar="N",
        help="output limit for requests that set none (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--cache-ram-mb", type=int, default=defaults.cache_ram_mb, metavar="MB",
        help="session cache RAM budget (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--cache-dir", metavar="DIR",
        help="session cache SQLite directory, survives restarts (default: ~/.cache/agentd/sessions)",
    )  # fmt: skip
    p.add_argument(
        "--cache-disk-mb", type=int, default=defaults.cache_disk_mb, metavar="MB",
        help="session cache disk budget; 0 keeps the cache in RAM only (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint-interval", type=int, default=defaults.checkpoint_interval, metavar="N",
        help="extra checkpoints every N tokens inside long messages (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--no-cache", action="store_true", help="disable the session cache")
    p.add_argument(
        "--responses-max-mb", type=int, default=defaults.responses_max_mb, metavar="MB",
        help="disk budget of stored Responses (store: true; previous_response_id), oldest evicted first; "
        "0 stores none (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--max-body-mb", type=float, default=defaults.max_body_bytes / 2**20, metavar="MB",
        help="largest request body; larger ones get 413 (default: %(default)g)",
    )  # fmt: skip
    p.add_argument(
        "--read-timeout", type=float, default=defaults.read_timeout, metavar="S",
        help="seconds a connection may take to send a request's headers (also the idle keep-alive "
        "time) and, separately, its body; slower ones are closed or get 408 (default: %(default)g)",
    )  # fmt: skip
    p.add_argument(
        "--max-connections", type=int, default=defaults.max_connections, metavar="N",
        help="open client connections; more are answered 503 and closed (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--allowed-host", action="append", default=[], metavar="NAME",
        help="accept requests whose Host header is NAME besides loopback names (repeatable; '*': any). "
        "The Host check guards against DNS rebinding; it applies when listening on loopback or when "
        "this option is given",
    )  # fmt: skip
    p.add_argument(
        "--cors-origin", action="append", default=[], metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. http://localhost:3000; '*': any) call the API from a "
        "browser (repeatable; default: CORS off)",
    )  # fmt: skip
    p.add_argument(
        "--preserve-thinking", action="store_true",
        help="keep the reasoning this server generated in assistant turns before the last user message "
        "(the chat template drops it), so a new user message does not invalidate the cached tool loop "
        "before it; costs context tokens and shows the model old reasoning it was not trained to see. "
        "Requests override it with chat_template_kwargs.preserve_thinking",
    )  # fmt: skip
    add_engine_args(p)
    p.add_argument(
        "--parse-special-in-content", action="store_true",
        help="tokenize added-token texts such as <|im_end|> written in messages, tool results and tool "
        "arguments as the control tokens they spell (unsafe: a tool result can forge a turn); by default "
        "they are ordinary text and only the chat template's structure makes control tokens",
    )  # fmt: skip
    p.add_argument("--verbose", action="store_true", help="debug logging")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """--backend and --threads, shared by `serve` and `generate`."""
    from kernels import BACKENDS

    p.add_argument(
        "--backend", choices=BACKENDS, default="auto",
        help="compute backend: cpu (compiled kernels on the weights as stored), numpy (float32 reference), "
        "auto (cpu when its extension is built, else numpy with a warning) (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, metavar="N", help="compute threads (default: the physical cores)")


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        model_path=args.model,
        model_name=args.model_name,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        n_ctx=args.ctx,
        max_queue=args.max_queue,
        max_active=args.parallel,
        default_max_tokens=args.default_max_tokens,
        cache_enabled=not args.no_cache,
        cache_ram_mb=args.cache_ram_mb,
        cache_dir=args.cache_dir,
        cache_disk_mb=args.cache_disk_mb,
        checkpoint_interval=args.checkpoint_interval,
        preserve_thinking=args.preserve_thinking,
        backend=args.backend,
        threads=args.threads,
        parse_special_in_content=args.parse_special_in_content,
        responses_max_mb=args.responses_max_mb,
        max_body_bytes=int(args.max_body_mb * 2**20),
        read_timeout=args.read_timeout,
        max_connections=args.max_connections,
        allowed_hosts=tuple(args.allowed_host),
        cors_origins=tuple(args.cors_origin),
    )


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 after a signal, 1 when the model cannot be loaded or the port is taken,
    2 for invalid settings."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        log.error("invalid settings: %s", exc)
        return 2
    return asyncio.run(serve(config))


async def serve(config: ServeConfig, load_model: Callable[[], LoadedModel] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; `load_model` defaults to loading `config.model_path`."""
    runner = make_runner(config, load_model or functools.partial(load, config))
    try:
        app_runner = await start_server(config, runner)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        return 1
    for host, port, *_ in app_runner.addresses:
        log.info("listening on http://%s:%d (model loading; /health answers 503 until ready)", host, port)
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda sig=sig: received.done() or received.set_result(sig))
    started = time.monotonic()
    loaded = asyncio.create_task(runner.wait_loaded())
    await asyncio.wait({loaded, received}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if loaded.done() and not loaded.result():
        status = 1  # the runner logged why
    elif loaded.done():
        model = runner.require_ready()
        log.info("model %s ready in %.1f s (context %d tokens)", model.name, time.monotonic() - started, model.n_ctx)
        await received
    loaded.cancel()
    if received.done():
        log.info("%s received: shutting down, %d requests in flight are cancelled",
                 received.result().name, runner.num_jobs)
    stopping = time.monotonic()
    await app_runner.cleanup()
    log.info("stopped in %.1f s", time.monotonic() - stopping)
    return status
