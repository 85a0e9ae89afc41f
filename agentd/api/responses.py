"""OpenAI Responses API: `POST /v1/responses` (streamed or not), `GET` and `DELETE /v1/responses/{id}`.

Same runner, prompt cache, template, tool parsers and grammars as chat completions
(agentd.plan); only the wire format differs (clients/codex.md). Output items: `reasoning` (the
think block as `content` and `summary`), `message`, `function_call` / `custom_tool_call`. Every
streamed event carries its `type` and a `sequence_number`; items exist for Codex only through
`response.output_item.done`, and a long prefill sends `response.in_progress` (Codex's idle timer
ignores SSE comments). The non-streamed body is built by the same event builder.

Conversations: with `include: ["reasoning.encrypted_content"]` the first output item is a
reasoning item whose blob seals the turn's token ids (agentd.turn_seal); its
`output_item.done`, and every other item's, then waits for the end of the turn, so items still
arrive in order. With `store` (the default) the response and its conversation go to the
SQLite store (agentd.responses_store), sealed the same way, and `previous_response_id` continues
from there. Either way the next prompt holds the turn's ids exactly and resumes at its
end-of-generation checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import msgspec
from aiohttp import web

from agentd import sse
from agentd.api.common import CONFIG, TURNS, TurnRecorder, admitted, decode_body, loaded_model, log_request, make_plan
from agentd.api.responses_events import EventBuilder, SseEvent
from agentd.api.responses_input import Tools, assistant_message, chat_input, input_items, seal_key
from agentd.api.responses_wire import (
    Deleted,
    OutputItem,
    ResponseOut,
    ResponsesRequest,
    decode_request,
    encode,
    response_shell,
)
from agentd.config import ServeConfig
from agentd.errors import ApiError, invalid_request
from agentd.loader import LoadedModel
from agentd.output import Done, KeepAlive, output_events
from agentd.plan import ContextOverflow, Plan, PlanError, plan_chat
from agentd.prefix_cache import default_cache_dir
from agentd.responses_store import DB_FILENAME, ResponseStore, StoredResponse
from agentd.runner import Failed, Job
from agentd.turn_seal import TurnSealer

log = logging.getLogger("agentd")


class ResponsesState:
    """The app's stored responses and turn sealer, opened on first use (most servers never see a
    Responses request, and tests must not touch the default cache directory)."""

    def __init__(self, config: ServeConfig):
        self._dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        self._max_bytes = config.responses_max_mb << 20
        self._store: ResponseStore | None = None
        self._sealer: TurnSealer | None = None
        self._lock = asyncio.Lock()

    async def sealer(self, loaded: LoadedModel) -> TurnSealer:
        async with self._lock:
            if self._sealer is None:
                fingerprint = getattr(loaded.model, "fingerprint", loaded.name)
                self._sealer = await asyncio.to_thread(TurnSealer.load, self._dir, fingerprint)
            return self._sealer

    async def store(self) -> ResponseStore | None:
        """None when storing is off (`--responses-max-mb 0`) or the database cannot be opened."""
        async with self._lock:
            if self._store is None and self._max_bytes > 0:
                try:
                    self._store = await asyncio.to_thread(ResponseStore, self._dir / DB_FILENAME, self._max_bytes)
                except Exception as exc:  # sqlite3.Error, OSError: serve on without storing
                    log.warning("cannot open the responses store in %s: %s; responses are not stored", self._dir, exc)
                    self._max_bytes = 0
            return self._store

    async def close(self, app: web.Application) -> None:
        if self._store is not None:
            self._store.close()


RESPONSES = web.AppKey("responses", ResponsesState)


def setup(app: web.Application, config: ServeConfig) -> None:
    app[RESPONSES] = ResponsesState(config)
    app.on_cleanup.append(app[RESPONSES].close)


async def create_response(request: web.Request) -> web.StreamResponse:
    req = await decode_body(request, decode_request)
    loaded = loaded_model(request)
    config = request.app[CONFIG]
    state = request.app[RESPONSES]
    sealer = await state.sealer(loaded)
    previous = await _previous_items(state, req.previous_response_id)
    try:
        chat, tools = chat_input(req, previous, sealer.open)
    except PlanError as exc:
        raise invalid_request(str(exc), param=exc.param) from exc
    response_id = "resp_" + uuid.uuid4().hex
    turns = request.app[TURNS]
    shell = response_shell(req, response_id, req.model or loaded.name, int(time.time()))
    try:
        plan = await make_plan(lambda: plan_chat(loaded, config, response_id, chat, turns))
    except ContextOverflow as exc:
        message = (f"This model's maximum context length is {exc.n_ctx} tokens. However, your request has "
                   f"{exc.num_tokens} input tokens, which leaves no room for output.")  # fmt: skip
        if req.stream:  # Codex reacts to this code in a stream (it is out of room), not to a 400 body
            return await _fail_stream(request, shell, "context_length_exceeded", message)
        raise invalid_request(message, param="input", code="context_length_exceeded") from exc
    thinking = plan.prompt.rstrip().endswith("<think>")
    builder = EventBuilder(shell, tools, thinking=thinking, stream=bool(req.stream), sealed=req.wants_encrypted_reasoning)
    async with admitted(request, plan) as job:
        # The client that gets its ids back in a blob needs no memo entry for them.
        recorder = TurnRecorder(None if req.wants_encrypted_reasoning else turns, loaded.model.tokenizer, chat, job)
        finish = _Finisher(req, state, sealer, tools, recorder, previous)
        if req.stream:
            return await _stream(request, job, plan, config.keepalive_seconds, builder, finish)
        return await _collect(job, plan, builder, finish)


async def get_response(request: web.Request) -> web.Response:
    stored = await _stored(request)
    return web.Response(body=stored.body, content_type="application/json")


async def delete_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    store = await request.app[RESPONSES].store()
    if store is None or not await asyncio.to_thread(store.delete, response_id):
        raise _not_found(response_id)
    return web.Response(body=encode(Deleted(response_id)), content_type="application/json")


async def _stored(request: web.Request) -> StoredResponse:
    response_id = request.match_info["response_id"]
    store = await request.app[RESPONSES].store()
    stored = await asyncio.to_thread(store.get, response_id) if store is not None else None
    if stored is None:
        raise _not_found(response_id)
    return stored


def _not_found(response_id: str) -> ApiError:
    return ApiError(404, f"No response with id {response_id!r} is stored here", param="response_id")


async def _previous_items(state: ResponsesState, response_id: str | None) -> list[dict[str, Any]]:
    if response_id is None:
        return []
    store = await state.store()
    stored = await asyncio.to_thread(store.get, response_id) if store is not None else None
    if stored is None:
        raise invalid_request(
            f"Previous response with id {response_id!r} not found: it was never stored here (store: false), "
            "was deleted, or was evicted (--responses-max-mb)",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return stored.items


# -- the end of a response: seal, store --------------------------------------------------------


@dataclass
class _Finisher:
    """What happens once the output is complete: the turn's ids sealed for the client and the
    store, and the response stored."""

    req: ResponsesRequest
    state: ResponsesState
    sealer: TurnSealer
    tools: Tools
    recorder: TurnRecorder
    previous: list[dict[str, Any]]
    _blob: str | None = None
    _sealed: bool = False

    def blob(self, items: list[OutputItem]) -> str | None:
        """The seal of this turn's ids, None when they are not exactly what the client got."""
        if not self._sealed:
            self._sealed = True
            body_ids = self.recorder.body_ids
            output = [msgspec.to_builtins(item) for item in items]
            if body_ids is not None and output:
                message = assistant_message(output, self.tools)
                reasoning = message.get("reasoning_content") or ""
                self._blob = self.sealer.seal(seal_key(message), reasoning, body_ids)
        return self._blob

    async def store(self, response: ResponseOut) -> None:
        if not self.req.stored:
            return
        store = await self.state.store()
        if store is None:
            return
        output = [msgspec.to_builtins(item) for item in response.output]
        blob = self.blob(response.output)
        if output and output[0]["type"] == "reasoning":
            output[0]["encrypted_content"] = blob
        elif blob is not None:
            output.insert(0, {"type": "reasoning", "summary": [], "encrypted_content": blob})
        items = self.previous + input_items(self.req) + output
        body = encode(response)
        try:
            await asyncio.to_thread(store.put, response.id, body, items)
        except Exception:  # a full disk must not fail a finished response
            log.exception("storing response %s failed", response.id)


async def _events(
    job: Job, plan: Plan, builder: EventBuilder, finish: _Finisher, keepalive: float | None
) -> AsyncIterator[tuple[list[SseEvent], Done | Failed | None]]:
    """(encoded events, the outcome once known) per output event; stores the response at the end."""
    recorder = finish.recorder
    async for event in output_events(job, plan.pipeline, keepalive):
        if isinstance(event, KeepAlive):
            yield builder.progress(), None
        elif isinstance(event, Failed):
            yield builder.fail(event.message), event
        elif isinstance(event, Done):
            recorder.observe(event)
            data = builder.finish(event, job, lambda: finish.blob(builder.items))
            await finish.store(builder.response)
            yield data, event
        else:
            recorder.observe(event)
            yield builder.event(event), None


async def _stream(
    request: web.Request, job: Job, plan: Plan, keepalive: float, builder: EventBuilder, finish: _Finisher
) -> web.StreamResponse:
    response = await sse.open_stream(request)
    outcome: Done | Failed | str = "disconnected"
    try:
        await _send(response, builder.start())
        async for data, ended in _events(job, plan, builder, finish, keepalive):
            outcome = ended or outcome
            await _send(response, data)
    except ConnectionError:
        pass  # the client went away mid-stream; leaving cancels the job
    except Exception as exc:  # after the headers went out, an error can only be an event
        outcome = "error"
        log.exception("request %s failed while streaming", job.request.request_id)
        await _send(response, builder.fail(f"generation failed: {type(exc).__name__}: {exc}"))
    finally:
        log_request("responses", job.request.request_id, job, outcome)
    return response


async def _collect(job: Job, plan: Plan, builder: EventBuilder, finish: _Finisher) -> web.Response:
    outcome: Done | Failed | str = "disconnected"
    try:
        async for _, ended in _events(job, plan, builder, finish, None):
            outcome = ended or outcome
    except Exception:
        outcome = "error"
        raise  # the error middleware answers 500 and logs the traceback
    finally:
        log_request("responses", job.request.request_id, job, outcome)
    if isinstance(outcome, Failed):
        raise ApiError(500, outcome.message, type="server_error")
    return web.Response(body=encode(builder.response), content_type="application/json")


async def _send(response: web.StreamResponse, events: list[SseEvent]) -> None:
    for kind, data in events:
        await sse.send_event(response, data, event=kind)


async def _fail_stream(request: web.Request, shell: ResponseOut, code: str, message: str) -> web.StreamResponse:
    response = await sse.open_stream(request)
    builder = EventBuilder(shell, Tools(), thinking=False, stream=True, sealed=False)
    await _send(response, builder.start() + builder.fail(message, code))
    return response
