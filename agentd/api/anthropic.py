"""Anthropic Messages API: `POST /v1/messages` (streamed or not) and `POST /v1/messages/count_tokens`.

Event sequence (serving-anchors.md 3.3): message_start, then per content block
content_block_start / content_block_delta... / content_block_stop, then message_delta (stop_reason,
usage) and message_stop; ping events while the prompt is processed. message_start waits for the
first output event, so its usage already counts the tokens restored from the session cache.
The non-streamed body is built by applying the same stream events, so both forms always agree.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Callable

import msgspec
from aiohttp import web

from agentd import sse
from agentd.api.anthropic_wire import (
    THINKING_SIGNATURE,
    BlockOut,
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    InputJsonDeltaOut,
    MessageDelta,
    MessageOut,
    MessageStart,
    MessageStop,
    Ping,
    SignatureDeltaOut,
    StopInfo,
    StopReason,
    StreamEvent,
    TextDeltaOut,
    TextOut,
    ThinkingDeltaOut,
    ThinkingOut,
    TokenCount,
    ToolUseOut,
    Usage,
    chat_input,
    decode_count_tokens,
    decode_messages,
    encode,
    event_name,
    prompt_input,
)
from agentd.api.common import CONFIG, TURNS, TurnRecorder, admitted, decode_body, loaded_model, log_request, make_plan
from agentd.errors import ApiError, invalid_request
from agentd.output import Done, KeepAlive, OutputEvent, output_events
from agentd.plan import ChatInput, ContextOverflow, Plan, PlanError, chat_prompt, plan_chat
from agentd.runner import Failed, Job, Token
from agentd.threads import cancellable
from tools.events import ReasoningDelta, TextDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart

log = logging.getLogger("agentd")

_STOP_REASONS: dict[str, StopReason] = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


async def messages(request: web.Request) -> web.StreamResponse:
    req = await decode_body(request, decode_messages)
    loaded = loaded_model(request)
    config = request.app[CONFIG]
    chat = _converted(chat_input, req)
    message_id = "msg_" + uuid.uuid4().hex[:24]
    turns = request.app[TURNS]
    try:
        plan = await make_plan(lambda: plan_chat(loaded, config, message_id, chat, turns))
    except ContextOverflow as exc:
        raise _too_long(exc) from exc
    reply = _Reply(message_id, req.model or loaded.name, loaded.model.tokenizer, chat.stops)
    async with admitted(request, plan) as job:
        recorder = TurnRecorder(turns, loaded.model.tokenizer, chat, job, tool_use_id)
        if req.stream:
            return await _stream(request, job, plan, config.keepalive_seconds, reply, recorder)
        return await _collect(job, plan, reply, recorder)


async def count_tokens(request: web.Request) -> web.Response:
    """The prompt tokens a Messages request with this body would have (rendered exactly the same)."""
    req = await decode_body(request, decode_count_tokens)
    loaded = loaded_model(request)
    chat = _converted(prompt_input, req)
    config = request.app[CONFIG]
    literal = not config.parse_special_in_content
    try:
        turns = request.app[TURNS]
        prompt = await cancellable(lambda: chat_prompt(loaded, chat, turns, config.preserve_thinking, literal))
        num_tokens = len(prompt.ids)
    except PlanError as exc:
        raise invalid_request(str(exc), param=exc.param) from exc
    except ContextOverflow as exc:  # so long that counting it is not worth the time
        raise _too_long(exc) from exc
    return web.Response(body=encode(TokenCount(num_tokens)), content_type="application/json")


def _too_long(exc: ContextOverflow) -> ApiError:
    """The wording Claude Code reacts to by compacting its history."""
    return invalid_request(f"prompt is too long: {exc.num_tokens} tokens > {exc.n_ctx - 1} maximum")


def tool_use_id(call_id: str) -> str:
    """The Anthropic id of a parsed tool call."""
    return "toolu_" + call_id.removeprefix("call_")


def _converted(convert: Callable[[Any], ChatInput], req: Any) -> ChatInput:
    try:
        return convert(req)
    except PlanError as exc:
        raise invalid_request(str(exc), param=exc.param) from exc


class _Reply:
    """What one response repeats, and what it learns on the way: the generated token ids, to name
    the stop sequence that ended the text (the pipeline cuts it out)."""

    def __init__(self, message_id: str, model: str, tokenizer: Any, stops: list[str]):
        self.id = message_id
        self.model = model
        self._tokenizer = tokenizer
        self._stops = [s for s in stops if s]
        self._token_ids: list[int] = []

    def add(self, token: Token) -> None:
        if self._stops:
            self._token_ids.append(token.token_id)

    def stop_info(self, done: Done) -> StopInfo:
        if done.finish_reason == "stop" and self._stops:
            text = self._tokenizer.decode(self._token_ids)
            found = [(text.find(s), -len(s), s) for s in self._stops if s in text]
            if found:
                return StopInfo("stop_sequence", min(found)[2])
        return StopInfo(_STOP_REASONS[done.finish_reason], None)

    def start(self, job: Job) -> MessageStart:
        return MessageStart(MessageOut(id=self.id, model=self.model, content=[], usage=_usage(job, 0)))


def _usage(job: Job, output_tokens: int) -> Usage:
    cached = job.stats.num_cached_tokens
    return Usage(
        input_tokens=job.stats.num_tokens - cached, output_tokens=output_tokens, cache_read_input_tokens=cached
    )


class _Blocks:
    """Output events -> content block events: a block opens when the kind of output changes and
    closes before the next one opens; a thinking block gets its signature just before it closes."""

    def __init__(self) -> None:
        self.index = -1
        self.open: type[BlockOut] | None = None

    def event(self, event: OutputEvent) -> list[StreamEvent]:
        if isinstance(event, TextDelta):
            return self._ensure(TextOut) + [ContentBlockDelta(self.index, TextDeltaOut(event.text))]
        if isinstance(event, ReasoningDelta):
            return self._ensure(ThinkingOut) + [ContentBlockDelta(self.index, ThinkingDeltaOut(event.text))]
        if isinstance(event, ToolCallStart):
            return self._open(ToolUseOut(tool_use_id(event.id), event.name, {}))
        if isinstance(event, ToolCallArgsDelta):
            return [ContentBlockDelta(self.index, InputJsonDeltaOut(event.fragment))]
        if isinstance(event, ToolCallEnd):
            return self.close()
        return []

    def close(self) -> list[StreamEvent]:
        if self.open is None:
            return []
        events: list[StreamEvent] = []
        if self.open is ThinkingOut:
            events.append(ContentBlockDelta(self.index, SignatureDeltaOut(THINKING_SIGNATURE)))
        self.open = None
        return events + [ContentBlockStop(self.index)]

    def _ensure(self, kind: type[TextOut] | type[ThinkingOut]) -> list[StreamEvent]:
        if self.open is kind:
            return []
        return self._open(TextOut("") if kind is TextOut else ThinkingOut("", ""))

    def _open(self, block: BlockOut) -> list[StreamEvent]:
        events = self.close()
        self.index += 1
        self.open = type(block)
        return events + [ContentBlockStart(self.index, block)]


class _MessageBuilder:
    """The non-streamed message: stream events applied the way the anthropic SDK accumulates them."""

    def __init__(self) -> None:
        self.content: list[BlockOut] = []
        self._json: dict[int, list[str]] = {}

    def apply(self, event: StreamEvent) -> None:
        if isinstance(event, ContentBlockStart):
            self.content.append(msgspec.structs.replace(event.content_block))  # a copy to fill
        elif isinstance(event, ContentBlockDelta):
            block, delta = self.content[event.index], event.delta
            if isinstance(delta, TextDeltaOut):
                block.text += delta.text
            elif isinstance(delta, ThinkingDeltaOut):
                block.thinking += delta.thinking
            elif isinstance(delta, SignatureDeltaOut):
                block.signature = delta.signature
            else:
                self._json.setdefault(event.index, []).append(delta.partial_json)
        elif isinstance(event, ContentBlockStop) and event.index in self._json:
            self.content[event.index].input = json.loads("".join(self._json.pop(event.index)))


def _error_event(message: str) -> bytes:
    return ApiError(500, message).anthropic_body()


async def _send(response: web.StreamResponse, events: list[StreamEvent]) -> None:
    for event in events:
        await sse.send_event(response, encode(event), event_name(event))


async def _stream(
    request: web.Request, job: Job, plan: Plan, keepalive: float, reply: _Reply, recorder: TurnRecorder
) -> web.StreamResponse:
    response = await sse.open_stream(request)
    blocks = _Blocks()
    started = False
    outcome: Done | Failed | str = "disconnected"
    try:
        async for event in output_events(job, plan.pipeline, keepalive):
            if isinstance(event, KeepAlive):
                await _send(response, [Ping()])
                continue
            if isinstance(event, Failed):
                outcome = event
                await sse.send_event(response, _error_event(event.message), "error")
                continue
            if not started:
                started = True
                await _send(response, [reply.start(job)])
            recorder.observe(event)  # before the last event: the client may send the next turn at once
            if isinstance(event, Token):
                reply.add(event)
            elif isinstance(event, Done):
                outcome = event
                usage = _usage(job, event.num_generated_tokens)
                await _send(response, blocks.close() + [MessageDelta(reply.stop_info(event), usage), MessageStop()])
            else:
                await _send(response, blocks.event(event))
    except ConnectionError:
        pass  # the client went away mid-stream; leaving cancels the job
    except Exception as exc:  # after the headers went out, an error can only be an event
        outcome = "error"
        log.exception("request %s failed while streaming", job.request.request_id)
        await sse.send_event(response, _error_event(f"generation failed: {type(exc).__name__}: {exc}"), "error")
    finally:
        log_request("messages", job.request.request_id, job, outcome)
    return response


async def _collect(job: Job, plan: Plan, reply: _Reply, recorder: TurnRecorder) -> web.Response:
    blocks = _Blocks()
    message = _MessageBuilder()
    outcome: Done | Failed | str = "disconnected"
    try:
        async for event in output_events(job, plan.pipeline):
            if isinstance(event, Done | Failed):
                outcome = event
            elif isinstance(event, Token):
                reply.add(event)
            else:
                for block_event in blocks.event(event):
                    message.apply(block_event)
            recorder.observe(event)
        for block_event in blocks.close():
            message.apply(block_event)
    except Exception:
        outcome = "error"
        raise  # the error middleware answers 500 and logs the traceback
    finally:
        log_request("messages", job.request.request_id, job, outcome)
    if isinstance(outcome, Failed):
        raise ApiError(500, outcome.message, type="server_error")
    assert isinstance(outcome, Done), "output_events always ends with Done or Failed"
    stop = reply.stop_info(outcome)
    body = MessageOut(
        id=reply.id, model=reply.model, content=message.content, stop_reason=stop.stop_reason,
        stop_sequence=stop.stop_sequence, usage=_usage(job, outcome.num_generated_tokens),
    )  # fmt: skip
    return web.Response(body=encode(body), content_type="application/json")
