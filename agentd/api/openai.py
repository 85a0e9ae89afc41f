"""OpenAI-compatible `POST /v1/chat/completions` and `POST /v1/completions`.

Chunk shapes follow serving-anchors.md 3.1: same id/created on every chunk, `index` on every
tool-call delta, id/type/name only in a call's first delta, `finish_reason` "tool_calls" when a
call was made, a usage chunk with `choices: []` only with `stream_options.include_usage`.
Each endpoint has a formatter (events -> SSE chunks) and a collector (events -> one JSON body);
`_stream` and `_collect` drive them and own the error handling and the request log line.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol

from aiohttp import web

from agentd import sse
from agentd.api.common import (
    CONFIG,
    TURNS,
    TurnRecorder,
    admitted,
    decode_body,
    loaded_model,
    log_request,
    make_plan,
    new_id,
)
from agentd.api.openai_wire import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    Delta,
    FunctionDelta,
    FunctionOut,
    LegacyLogprobs,
    PromptTokensDetails,
    StreamOptions,
    TokenLogprob,
    ToolCallDelta,
    ToolCallOut,
    TopLogprob,
    Usage,
    chat_input,
    completion_input,
    decode_chat,
    decode_completion,
    encode,
)
from agentd.errors import ApiError, invalid_request
from agentd.output import Done, KeepAlive, OutputEvent, output_events
from agentd.plan import ContextOverflow, Plan, PlanError, plan_chat, plan_completion
from agentd.runner import Failed, Job, Token
from tools.events import ReasoningDelta, TextDelta, ToolCallArgsDelta, ToolCallStart

log = logging.getLogger("agentd")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = await decode_body(request, decode_chat)
    loaded = loaded_model(request)
    config = request.app[CONFIG]
    chat = _converted(chat_input, req)
    request_id = new_id("chatcmpl")
    turns = request.app[TURNS]
    plan = await _plan(lambda: plan_chat(loaded, config, request_id, chat, turns), "messages")
    logprobs = _Logprobs(loaded.model.tokenizer, chat.num_top_logprobs is not None)
    reply = _Reply(request_id, req.model or loaded.name, logprobs)
    async with admitted(request, plan) as job:
        recorder = TurnRecorder(turns, loaded.model.tokenizer, chat, job)
        if req.stream:
            chunks = _ChatChunks(reply, job, _include_usage(req.stream_options))
            return await _stream(request, job, plan, config.keepalive_seconds, chunks, "chat", recorder)
        return await _collect(job, plan, _ChatBody(reply, job), "chat", recorder)


async def completions(request: web.Request) -> web.StreamResponse:
    req = await decode_body(request, decode_completion)
    loaded = loaded_model(request)
    config = request.app[CONFIG]
    inp = _converted(completion_input, req)
    request_id = new_id("cmpl")
    plan = await _plan(lambda: plan_completion(loaded, config, request_id, inp), "prompt")
    logprobs = _Logprobs(loaded.model.tokenizer, inp.num_top_logprobs is not None)
    reply = _Reply(request_id, req.model or loaded.name, logprobs)
    echo = plan.prompt if req.echo else ""
    async with admitted(request, plan) as job:
        if req.stream:
            chunks = _TextChunks(reply, job, _include_usage(req.stream_options), echo)
            return await _stream(request, job, plan, config.keepalive_seconds, chunks, "completions")
        return await _collect(job, plan, _TextBody(reply, job, echo), "completions")


def _converted(convert: Callable[[Any], Any], req: Any) -> Any:
    try:
        return convert(req)
    except PlanError as exc:
        raise invalid_request(str(exc), param=exc.param) from exc


async def _plan(build: Callable[[], Plan], param: str) -> Plan:
    try:
        return await make_plan(build)
    except ContextOverflow as exc:
        raise context_length_error(exc, param) from exc


def context_length_error(exc: ContextOverflow, param: str) -> ApiError:
    """OpenAI's wording, which clients match to trim their history."""
    return invalid_request(
        f"This model's maximum context length is {exc.n_ctx} tokens. However, your request has "
        f"{'at least ' if exc.at_least else ''}{exc.num_tokens} prompt tokens, which leaves no room for output. "
        f"Please reduce the length of the {param}.",
        param=param,
        code="context_length_exceeded",
    )


def _include_usage(options: StreamOptions | None) -> bool:
    return options is not None and options.include_usage


# -- shared pieces ------------------------------------------------------------------------------


class _Logprobs:
    """Per-token logprob entries, held until the next chunk (or the final body) carries them."""

    def __init__(self, tokenizer: Any, enabled: bool):
        self._tokenizer = tokenizer
        self.enabled = enabled
        self._pending: list[Token] = []

    def add(self, token: Token) -> None:
        if token.logprobs is not None:
            self._pending.append(token)

    def _piece(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id])

    def _bytes(self, token_id: int) -> list[int]:
        return list(self._tokenizer.token_bytes(token_id))

    def _take(self) -> list[Token]:
        taken, self._pending = self._pending, []
        return taken

    def chat(self) -> ChoiceLogprobs | None:
        if not self._pending:
            return None
        entries = []
        for token in self._take():
            top = [TopLogprob(self._piece(i), lp, self._bytes(i)) for i, lp in token.logprobs.top]
            token_id = token.token_id
            entries.append(TokenLogprob(self._piece(token_id), token.logprobs.logprob, self._bytes(token_id), top))
        return ChoiceLogprobs(entries)

    def legacy(self, offset: int) -> LegacyLogprobs | None:
        if not self._pending:
            return None
        out = LegacyLogprobs([], [], [], [])
        for token in self._take():
            piece = self._piece(token.token_id)
            out.tokens.append(piece)
            out.token_logprobs.append(token.logprobs.logprob)
            out.top_logprobs.append({self._piece(i): lp for i, lp in token.logprobs.top})
            out.text_offset.append(offset)
            offset += len(piece)
        return out


class _Reply:
    """What every chunk or body of one response repeats."""

    def __init__(self, request_id: str, model: str, logprobs: _Logprobs):
        self.id = request_id
        self.model = model
        self.created = int(time.time())
        self.logprobs = logprobs


def _usage(job: Job, done: Done) -> Usage:
    stats = job.stats
    return Usage(
        prompt_tokens=stats.num_tokens,
        completion_tokens=done.num_generated_tokens,
        total_tokens=stats.num_tokens + done.num_generated_tokens,
        prompt_tokens_details=PromptTokensDetails(stats.num_cached_tokens),
    )


async def _send_error(response: web.StreamResponse, message: str) -> None:
    """An error event, then `[DONE]`: clients that read until `[DONE]` (as OpenAI-compatible
    servers end every stream) stop there instead of waiting for the connection to close."""
    await sse.send_event(response, ApiError(500, message, type="server_error").body())
    await sse.send_done(response)


class _Chunks(Protocol):
    def start(self) -> list[bytes]: ...
    def event(self, event: OutputEvent) -> list[bytes]: ...
    def done(self, done: Done) -> list[bytes]: ...


class _Body(Protocol):
    def event(self, event: OutputEvent) -> None: ...
    def response(self, done: Done) -> bytes: ...


async def _stream(
    request: web.Request,
    job: Job,
    plan: Plan,
    keepalive: float,
    chunks: _Chunks,
    endpoint: str,
    recorder: TurnRecorder | None = None,
) -> web.StreamResponse:
    response = await sse.open_stream(request)
    outcome: Done | Failed | str = "disconnected"
    try:
        for data in chunks.start():
            await sse.send_event(response, data)
        async for event in output_events(job, plan.pipeline, keepalive):
            if isinstance(event, KeepAlive):
                await sse.send_keepalive(response)
            elif isinstance(event, Failed):
                outcome = event
                await _send_error(response, event.message)
            else:
                if recorder is not None:  # before the last chunk: the client may send the next turn at once
                    recorder.observe(event)
                for data in chunks.done(event) if isinstance(event, Done) else chunks.event(event):
                    await sse.send_event(response, data)
                if isinstance(event, Done):
                    outcome = event
                    await sse.send_done(response)
    except ConnectionError:
        pass  # the client went away mid-stream; leaving cancels the job
    except Exception as exc:  # after the headers went out, an error can only be an event
        outcome = "error"
        log.exception("request %s failed while streaming", job.request.request_id)
        await _send_error(response, f"generation failed: {type(exc).__name__}: {exc}")
    finally:
        log_request(endpoint, job.request.request_id, job, outcome)
    return response


async def _collect(
    job: Job, plan: Plan, body: _Body, endpoint: str, recorder: TurnRecorder | None = None
) -> web.Response:
    outcome: Done | Failed | str = "disconnected"
    try:
        async for event in output_events(job, plan.pipeline):
            if isinstance(event, Done | Failed):
                outcome = event
            else:
                body.event(event)
            if recorder is not None:
                recorder.observe(event)
    except Exception:
        outcome = "error"
        raise  # the error middleware answers 500 and logs the traceback
    finally:
        log_request(endpoint, job.request.request_id, job, outcome)
    if isinstance(outcome, Failed):
        raise ApiError(500, outcome.message, type="server_error")
    assert isinstance(outcome, Done), "output_events always ends with Done or Failed"
    return web.Response(body=body.response(outcome), content_type="application/json")


# -- chat ---------------------------------------------------------------------------------------


class _ChatChunks:
    def __init__(self, reply: _Reply, job: Job, include_usage: bool):
        self.reply = reply
        self.job = job
        self.include_usage = include_usage

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        r = self.reply
        return encode(ChatCompletionChunk(
            id=r.id, object="chat.completion.chunk", created=r.created, model=r.model, choices=choices, usage=usage
        ))  # fmt: skip

    def _delta(self, delta: Delta, finish_reason: str | None = None) -> bytes:
        logprobs = self.reply.logprobs.chat()
        return self._chunk([ChunkChoice(index=0, delta=delta, finish_reason=finish_reason, logprobs=logprobs)])

    def start(self) -> list[bytes]:
        return [self._delta(Delta(role="assistant", content=""))]

    def event(self, event: OutputEvent) -> list[bytes]:
        if isinstance(event, Token):
            self.reply.logprobs.add(event)
            return []
        if isinstance(event, TextDelta):
            return [self._delta(Delta(content=event.text))]
        if isinstance(event, ReasoningDelta):
            return [self._delta(Delta(reasoning_content=event.text))]
        if isinstance(event, ToolCallStart):
            function = FunctionDelta(arguments="", name=event.name)
            call = ToolCallDelta(index=event.index, id=event.id, type="function", function=function)
            return [self._delta(Delta(tool_calls=[call]))]
        if isinstance(event, ToolCallArgsDelta):
            call = ToolCallDelta(index=event.index, function=FunctionDelta(arguments=event.fragment))
            return [self._delta(Delta(tool_calls=[call]))]
        return []  # ToolCallEnd: the next call's start or the finish says it

    def done(self, done: Done) -> list[bytes]:
        chunks = [self._delta(Delta(), done.finish_reason)]
        if self.include_usage:
            chunks.append(self._chunk([], _usage(self.job, done)))
        return chunks


class _ChatBody:
    def __init__(self, reply: _Reply, job: Job):
        self.reply = reply
        self.job = job
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, ToolCallOut] = {}

    def event(self, event: OutputEvent) -> None:
        if isinstance(event, Token):
            self.reply.logprobs.add(event)
        elif isinstance(event, TextDelta):
            self.content.append(event.text)
        elif isinstance(event, ReasoningDelta):
            self.reasoning.append(event.text)
        elif isinstance(event, ToolCallStart):
            self.calls[event.index] = ToolCallOut(event.id, "function", FunctionOut(event.name, ""))
        elif isinstance(event, ToolCallArgsDelta):
            self.calls[event.index].function.arguments += event.fragment

    def response(self, done: Done) -> bytes:
        content = "".join(self.content)
        message = AssistantMessage(role="assistant", content=content if content or not self.calls else None)
        if self.reasoning:
            message.reasoning_content = "".join(self.reasoning)
        if self.calls:
            message.tool_calls = [self.calls[i] for i in sorted(self.calls)]
        r = self.reply
        logprobs = (r.logprobs.chat() or ChoiceLogprobs([])) if r.logprobs.enabled else None
        choice = Choice(index=0, message=message, finish_reason=done.finish_reason, logprobs=logprobs)
        return encode(ChatCompletion(
            id=r.id, object="chat.completion", created=r.created, model=r.model, choices=[choice],
            usage=_usage(self.job, done),
        ))  # fmt: skip


# -- text completions ---------------------------------------------------------------------------


class _TextChunks:
    def __init__(self, reply: _Reply, job: Job, include_usage: bool, echo: str):
        self.reply = reply
        self.job = job
        self.include_usage = include_usage
        self.echo = echo
        self.offset = 0  # characters of text sent so far (for legacy logprob offsets)

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
        r = self.reply
        return encode(Completion(
            id=r.id, object="text_completion", created=r.created, model=r.model, choices=choices, usage=usage
        ))  # fmt: skip

    def _text(self, text: str, finish_reason: str | None = None) -> bytes:
        logprobs = self.reply.logprobs.legacy(self.offset)
        self.offset += len(text)
        return self._chunk([CompletionChoice(index=0, text=text, finish_reason=finish_reason, logprobs=logprobs)])

    def start(self) -> list[bytes]:
        return [self._text(self.echo)] if self.echo else []

    def event(self, event: OutputEvent) -> list[bytes]:
        if isinstance(event, Token):
            self.reply.logprobs.add(event)
        elif isinstance(event, TextDelta):
            return [self._text(event.text)]
        return []

    def done(self, done: Done) -> list[bytes]:
        chunks = [self._text("", done.finish_reason)]
        if self.include_usage:
            chunks.append(self._chunk([], _usage(self.job, done)))
        return chunks


class _TextBody:
    def __init__(self, reply: _Reply, job: Job, echo: str):
        self.reply = reply
        self.job = job
        self.echo = echo
        self.texts: list[str] = []

    def event(self, event: OutputEvent) -> None:
        if isinstance(event, Token):
            self.reply.logprobs.add(event)
        elif isinstance(event, TextDelta):
            self.texts.append(event.text)

    def response(self, done: Done) -> bytes:
        r = self.reply
        logprobs = (r.logprobs.legacy(len(self.echo)) or LegacyLogprobs([], [], [], [])) if r.logprobs.enabled else None
        text = self.echo + "".join(self.texts)
        choice = CompletionChoice(index=0, text=text, finish_reason=done.finish_reason, logprobs=logprobs)
        return encode(Completion(
            id=r.id, object="text_completion", created=r.created, model=r.model, choices=[choice],
            usage=_usage(self.job, done),
        ))  # fmt: skip


