"""Operational endpoints: /health, /metrics, /v1/models, /tokenize, /detokenize, /apply-template,
/v1/cache."""

from __future__ import annotations

import asyncio
import time

import msgspec
from aiohttp import web
from msgspec import Struct
from prometheus_client import CONTENT_TYPE_LATEST

from agentd.api.common import CONFIG, RUNNER, TURNS, decode_body, loaded_model
from agentd.api.openai import context_length_error
from agentd.api.openai_wire import ChatCompletionRequest, chat_input, decode_chat, encode
from agentd.errors import ApiError, invalid_request
from agentd.plan import ContextOverflow, PlanError, chat_prompt
from agentd.threads import cancellable

_STARTED = int(time.time())


class TokenizeRequest(Struct, kw_only=True):
    content: str
    with_pieces: bool = False
    parse_special: bool | None = None  # "<|im_end|>" in content -> its id; None: the server's rule


class TokenPiece(Struct):
    id: int
    piece: str


class DetokenizeRequest(Struct, kw_only=True):
    tokens: list[int]


class ModelMeta(Struct):
    n_ctx: int
    n_ctx_train: int
    n_vocab: int


class ModelCard(Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "agentd"
    context_length: int
    meta: ModelMeta


class ModelList(Struct, kw_only=True):
    object: str = "list"
    data: list[ModelCard]


decode_tokenize = msgspec.json.Decoder(TokenizeRequest).decode
decode_detokenize = msgspec.json.Decoder(DetokenizeRequest).decode


def _json(value: object) -> web.Response:
    return web.Response(body=encode(value), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    """503 while the model loads (clients poll this), 200 once requests can be served."""
    runner = request.app[RUNNER]
    if runner.loaded is None:
        return ApiError(503, runner.load_error or "Loading model", code="model_loading").response()
    return _json({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[RUNNER].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _card(request: web.Request, model_id: str) -> ModelCard:
    loaded = loaded_model(request)
    config = loaded.model.config
    meta = ModelMeta(n_ctx=loaded.n_ctx, n_ctx_train=config.context_length, n_vocab=config.n_vocab)
    return ModelCard(id=model_id, created=_STARTED, context_length=loaded.n_ctx, meta=meta)


async def list_models(request: web.Request) -> web.Response:
    return _json(ModelList(data=[_card(request, loaded_model(request).name)]))


async def get_model(request: web.Request) -> web.Response:
    """Any name is served by the one loaded model, so any name is found (echoed back)."""
    return _json(_card(request, request.match_info["model"]))


async def tokenize(request: web.Request) -> web.Response:
    req = await decode_body(request, decode_tokenize)
    tokenizer = loaded_model(request).model.tokenizer
    parse_special = request.app[CONFIG].parse_special_in_content if req.parse_special is None else req.parse_special
    ids = await cancellable(lambda: tokenizer.encode(req.content) if parse_special else tokenizer.encode_plain(req.content))
    if req.with_pieces:
        return _json({"tokens": [TokenPiece(i, tokenizer.decode([i])) for i in ids]})
    return _json({"tokens": ids})


async def detokenize(request: web.Request) -> web.Response:
    req = await decode_body(request, decode_detokenize)
    loaded = loaded_model(request)
    n_vocab = loaded.model.config.n_vocab
    bad = [t for t in req.tokens if not 0 <= t < n_vocab]
    if bad:
        raise invalid_request(f"token id {bad[0]} is outside the vocabulary [0, {n_vocab})", param="tokens")
    return _json({"content": loaded.model.tokenizer.decode(req.tokens)})


async def apply_template(request: web.Request) -> web.Response:
    """The prompt a chat request would be rendered to, and its token ids (where the control tokens
    are): compare two turns to see where reuse ends. Remembered assistant turns are in it as
    generated (agentd.history), as in the real request."""
    req: ChatCompletionRequest = await decode_body(request, decode_chat)
    loaded = loaded_model(request)
    config = request.app[CONFIG]
    literal = not config.parse_special_in_content
    try:
        prompt = await cancellable(
            lambda: chat_prompt(loaded, chat_input(req), request.app[TURNS], config.preserve_thinking, literal)
        )
    except PlanError as exc:
        raise invalid_request(str(exc), param=exc.param) from exc
    except ContextOverflow as exc:
        raise context_length_error(exc, "messages") from exc
    cache = None if loaded.cache is None else await asyncio.to_thread(loaded.cache.explain, prompt.ids)
    return _json({"prompt": prompt.text, "tokens": prompt.ids, "num_tokens": len(prompt.ids), "cache": cache})


async def cache_info(request: web.Request) -> web.Response:
    """The session cache: counters and hit rate, bytes per tier, and every stored checkpoint."""
    loaded = loaded_model(request)
    if loaded.cache is None:
        return _json({"enabled": False})
    stats = await asyncio.to_thread(loaded.cache.stats)
    lookups = stats.get("lookups", 0)
    hits = stats.get("hits_ram", 0) + stats.get("hits_disk", 0)
    entries = await asyncio.to_thread(loaded.cache.entries)
    return _json({"enabled": True, "hit_rate": hits / lookups if lookups else None, **stats, "entries": entries})


