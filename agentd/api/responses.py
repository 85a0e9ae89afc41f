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
from typing import Any, AsyncIterator, Callable

import msgspec
from aiohttp import web

from agentd import sse
from agentd.api.common import CONFIG, TURNS, TurnRecorder, admitted, decode_body, loaded_model, log_request, make_plan
from agentd.api.responses_wire import (
    CUSTOM_INPUT,
    CustomToolCallOut,
    Deleted,
    FunctionCallOut,
    IncompleteDetails,
    InputTokensDetails,
    MessageOut,
    OutputItem,
    OutputText,
    OutputTokensDetails,
    ReasoningOut,
    ReasoningText,
    ResponseError,
    ResponseOut,
    ResponsesRequest,
    SummaryText,
    Tools,
    Usage,
    assistant_message,
    chat_input,
    decode_request,
    encode,
    input_items,
    response_shell,
    seal_key,
)
from agentd.config import ServeConfig
from agentd.errors import ApiError, invalid_request
from agentd.loader import LoadedModel
from agentd.output import Done, KeepAlive, OutputEvent, output_events
from agentd.plan import ContextOverflow, Plan, PlanError, plan_chat
from agentd.prefix_cache import default_cache_dir
from agentd.responses_store import DB_FILENAME, ResponseStore
from agentd.runner import Failed, Job, Token
from agentd.turn_seal import TurnSealer
from tools.events import ReasoningDelta, TextDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart

log = logging.getLogger("agentd")

SseEvent = tuple[str, bytes]  # event name, data


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
    builder = _Builder(shell, tools, thinking=thinking, stream=bool(req.stream), sealed=req.wants_encrypted_reasoning)
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


async def _stored(request: web.Request) -> Any:
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


# -- output events -> Responses events ----------------------------------------------------------


class _Builder:
    """Output events -> Responses stream events (encoded when streaming), building the response's
    output items on the way. With `sealed`, item 0 is always a reasoning item and every
    `output_item.done` waits for `finish`, which puts the blob into it."""

    def __init__(self, response: ResponseOut, tools: Tools, *, thinking: bool, stream: bool, sealed: bool):
        self.response = response
        self.tools = tools
        self.thinking = thinking  # generation starts inside reasoning
        self.stream = stream
        self.sealed = sealed
        self.open: OutputItem | None = None
        self.text: list[str] = []  # the open item's text so far
        self.held: list[OutputItem] = []  # items whose output_item.done waits for the end
        self.num_tokens = 0
        self.reasoning_tokens: int | None = None  # known at the first answer token
        self._seq = 0

    @property
    def items(self) -> list[OutputItem]:
        return self.response.output

    def _event(self, kind: str, **fields: Any) -> list[SseEvent]:
        self._seq += 1
        if not self.stream:
            return []
        return [(kind, encode({"type": kind, "sequence_number": self._seq - 1, **fields}))]

    def start(self) -> list[SseEvent]:
        return self._event("response.created", response=self.response) + self.progress()

    def progress(self) -> list[SseEvent]:
        return self._event("response.in_progress", response=self.response)

    def event(self, event: OutputEvent) -> list[SseEvent]:
        if isinstance(event, Token):
            self.num_tokens += 1
            return []
        if isinstance(event, ReasoningDelta):
            out = [] if isinstance(self.open, ReasoningOut) else self._open_reasoning()
            return out + self._delta("response.reasoning_text.delta", event.text)
        if isinstance(event, TextDelta):
            out = [] if isinstance(self.open, MessageOut) else self._open_answer(self._message())
            return out + self._delta("response.output_text.delta", event.text, logprobs=[])
        if isinstance(event, ToolCallStart):
            return self._open_answer(self._call(event))
        if isinstance(event, ToolCallArgsDelta):
            if isinstance(self.open, FunctionCallOut):
                return self._delta("response.function_call_arguments.delta", event.fragment)
            self.text.append(event.fragment)  # a custom tool's input is known once its call ends
            return []
        if isinstance(event, ToolCallEnd):
            return self._close("completed")
        return []

    def _message(self) -> MessageOut:
        return MessageOut(id="msg_" + uuid.uuid4().hex, status="in_progress", content=[])

    def _call(self, start: ToolCallStart) -> OutputItem:
        ref = self.tools.refs.get(start.name)
        name = ref.name if ref is not None else start.name
        namespace = ref.namespace if ref is not None and ref.namespace else msgspec.UNSET
        item_id = "fc_" + uuid.uuid4().hex
        if ref is not None and ref.custom:
            return CustomToolCallOut(id=item_id, call_id=start.id, name=name, input="", status="in_progress",
                                     namespace=namespace)  # fmt: skip
        return FunctionCallOut(id=item_id, call_id=start.id, name=name, arguments="", status="in_progress",
                               namespace=namespace)  # fmt: skip

    def _open_reasoning(self) -> list[SseEvent]:
        out = self._close("completed")
        item = ReasoningOut(id="rs_" + uuid.uuid4().hex, summary=[], status="in_progress")
        out += self._add(item)
        return out + self._event("response.content_part.added", **self._where(), part=ReasoningText(""))

    def _open_answer(self, item: OutputItem) -> list[SseEvent]:
        """Open a message or a call: the reasoning before it (if any) ends here."""
        out = self._close("completed")
        if self.reasoning_tokens is None:
            self.reasoning_tokens = max(self.num_tokens - 1, 0) if self.thinking else 0
        if self.sealed and not self.items:
            out += self._open_reasoning() + self._close("completed")  # item 0 carries the blob
        out += self._add(item)
        if isinstance(item, MessageOut):
            out += self._event("response.content_part.added", **self._where(), part=OutputText(text=""))
        return out

    def _add(self, item: OutputItem) -> list[SseEvent]:
        self.items.append(item)
        self.open = item
        self.text = []
        return self._event("response.output_item.added", output_index=len(self.items) - 1, item=item)

    def _where(self) -> dict[str, Any]:
        """Where the open (always the last) item is."""
        return {"item_id": self.items[-1].id, "output_index": len(self.items) - 1, "content_index": 0}

    def _delta(self, kind: str, text: str, **fields: Any) -> list[SseEvent]:
        self.text.append(text)
        where = self._where()
        if kind == "response.function_call_arguments.delta":
            del where["content_index"]
        return self._event(kind, **where, delta=text, **fields)

    def _close(self, status: str) -> list[SseEvent]:
        """End the open item: its text goes in, its done events go out (`output_item.done` held
        when sealed)."""
        item, self.open = self.open, None
        if item is None:
            return []
        where = self._where()
        text = "".join(self.text)
        item.status = status
        out: list[SseEvent] = []
        if isinstance(item, ReasoningOut):
            item.content, item.summary = [ReasoningText(text)], [SummaryText(text)] if text else []
            out += self._event("response.reasoning_text.done", **where, text=text)
            out += self._event("response.content_part.done", **where, part=item.content[0])
        elif isinstance(item, MessageOut):
            item.content = [OutputText(text=text)]
            out += self._event("response.output_text.done", **where, text=text, logprobs=[])
            out += self._event("response.content_part.done", **where, part=item.content[0])
        elif isinstance(item, FunctionCallOut):
            item.arguments = text
            del where["content_index"]
            out += self._event("response.function_call_arguments.done", **where, arguments=text)
        else:
            item.input = _custom_input(text)
            del where["content_index"]
            out += self._event("response.custom_tool_call_input.delta", **where, delta=item.input)
            out += self._event("response.custom_tool_call_input.done", **where, input=item.input)
        if self.sealed:
            self.held.append(item)
            return out
        return out + self._item_done(item)

    def _item_done(self, item: OutputItem) -> list[SseEvent]:
        return self._event("response.output_item.done", output_index=self.items.index(item), item=item)

    def finish(self, done: Done, job: Job, blob: Callable[[], str | None]) -> list[SseEvent]:
        """Close the output (sealing it when asked) and end the response."""
        cut = done.finish_reason == "length"
        out = self._close("incomplete" if cut else "completed")
        if self.sealed and not self.items:
            out += self._open_reasoning() + self._close("completed")
        if self.reasoning_tokens is None:
            self.reasoning_tokens = self.num_tokens if self.thinking else 0
        if self.sealed:
            first = self.items[0]
            assert isinstance(first, ReasoningOut)
            first.encrypted_content = blob()
            for item in self.held:
                out += self._item_done(item)
        r = self.response
        r.status = "incomplete" if cut else "completed"
        r.incomplete_details = IncompleteDetails("max_output_tokens") if cut else None
        stats = job.stats
        r.usage = Usage(
            input_tokens=stats.num_tokens,
            input_tokens_details=InputTokensDetails(stats.num_cached_tokens),
            output_tokens=done.num_generated_tokens,
            output_tokens_details=OutputTokensDetails(self.reasoning_tokens),
            total_tokens=stats.num_tokens + done.num_generated_tokens,
        )
        return out + self._event(f"response.{r.status}", response=r)

    def fail(self, message: str, code: str = "server_error") -> list[SseEvent]:
        self.response.status = "failed"
        self.response.error = ResponseError(code, message)
        return self._event("response.failed", response=self.response)


def _custom_input(arguments: str) -> str:
    """A free-form tool's raw input from the arguments the parser made of it."""
    try:
        value = msgspec.json.decode(arguments or "{}")
    except msgspec.DecodeError:
        return arguments
    return value.get(CUSTOM_INPUT, "") if isinstance(value, dict) and isinstance(value.get(CUSTOM_INPUT), str) else ""


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
    job: Job, plan: Plan, builder: _Builder, finish: _Finisher, keepalive: float | None
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
    request: web.Request, job: Job, plan: Plan, keepalive: float, builder: _Builder, finish: _Finisher
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


async def _collect(job: Job, plan: Plan, builder: _Builder, finish: _Finisher) -> web.Response:
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
    builder = _Builder(shell, Tools(), thinking=False, stream=True, sealed=False)
    await _send(response, builder.start() + builder.fail(message, code))
    return response
