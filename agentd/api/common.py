"""What every handler shares: typed app state, body decoding, runner errors, the request log line,
and the recording of generated chat turns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from typing import Any, AsyncIterator, Callable, TypeVar

import msgspec
from aiohttp import web

from agentd.config import ServeConfig
from agentd.errors import ApiError, invalid_request
from agentd.history import GeneratedTurns, TurnFrame
from agentd.json_depth import MAX_NESTING, nests_deeper_than
from agentd.loader import LoadedModel
from agentd.output import Done, OutputEvent
from agentd.plan import ChatInput, Plan, PlanError
from agentd.runner import Failed, Job, NotReady, QueueFull, Runner, Token
from agentd.threads import cancellable
from tools.events import Event as ParsedEvent
from tools.events import collect

CONFIG = web.AppKey("config", ServeConfig)
RUNNER = web.AppKey("runner", Runner)
TURNS = web.AppKey("turns", GeneratedTurns)

log = logging.getLogger("agentd")
request_log = logging.getLogger("agentd.request")

T = TypeVar("T")
_PATH = re.compile(r"at `\$\.?(.*)`$")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


async def _read_body(request: web.Request) -> bytes:
    """The whole body, which must arrive within the read timeout: a client that sends its headers
    and then stalls or trickles would otherwise hold its connection for as long as it likes."""
    timeout = request.app[CONFIG].read_timeout
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError as exc:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s", code="request_timeout") from exc


async def decode_body(request: web.Request, decode: Callable[[bytes], T]) -> T:
    """Decode the JSON body with a module-level msgspec decoder; a bad body is a 400 naming the field.
    The body must arrive within the read timeout (408) and nest at most MAX_NESTING levels."""
    body = await _read_body(request)
    if await asyncio.to_thread(nests_deeper_than, body):
        raise _too_deep()
    try:
        return decode(body)
    except msgspec.ValidationError as exc:
        match = _PATH.search(str(exc))
        raise invalid_request(str(exc), param=match.group(1) if match else None) from exc
    except msgspec.DecodeError as exc:
        raise invalid_request(f"the request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # invalid JSON that the depth check could not see as such
        raise _too_deep() from exc


def _too_deep() -> ApiError:
    return invalid_request(f"nesting too deep: JSON arrays and objects nest more than {MAX_NESTING} levels")


def loaded_model(request: web.Request) -> LoadedModel:
    try:
        return request.app[RUNNER].require_ready()
    except NotReady as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "5"}) from exc


async def make_plan(build: Callable[[], Plan]) -> Plan:
    """Run a plan builder off the event loop (its tokenization stops when the handler is
    cancelled), mapping its input errors to 400."""
    try:
        return await cancellable(build)
    except PlanError as exc:
        raise invalid_request(str(exc), param=exc.param) from exc


@contextlib.asynccontextmanager
async def admitted(request: web.Request, plan: Plan) -> AsyncIterator[Job]:
    """The plan's job in the runner, cancelled when the handler leaves (client gone included)."""
    runner = request.app[RUNNER]
    try:
        job = runner.submit(plan.request)
    except QueueFull as exc:
        raise ApiError(503, f"Server busy: {exc}; retry later", headers={"Retry-After": "1"}) from exc
    except NotReady as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "5"}) from exc
    try:
        yield job
    finally:
        runner.cancel(job)


def log_request(endpoint: str, request_id: str, job: Job, outcome: Done | Failed | str) -> None:
    """One line per request: what came in, what went out, how fast."""
    stats = job.stats
    ttft = stats.time_to_first_token
    if isinstance(outcome, Done):
        finish, generated = outcome.finish_reason, outcome.num_generated_tokens
    else:
        finish = "error" if isinstance(outcome, Failed) else outcome
        generated = stats.num_generated_tokens
    tps = None
    if stats.first_token_at is not None and generated > 1:
        tps = (generated - 1) / max(time.monotonic() - stats.first_token_at, 1e-9)
    request_log.info(
        "request id=%s endpoint=%s prompt_tokens=%d cached_tokens=%d matched_tokens=%d generated_tokens=%d "
        "ttft_ms=%s tokens_per_s=%s finish=%s",
        request_id,
        endpoint,
        stats.num_tokens,
        stats.num_cached_tokens,
        stats.num_matched_tokens,
        generated,
        "-" if ttft is None else f"{ttft * 1000:.0f}",
        "-" if tps is None else f"{tps:.1f}",
        finish,
    )


class TurnRecorder:
    """Watches one chat completion's events and, when it ends normally, remembers the reply as
    returned with the ids it was generated as (agentd.history). Only when the runner finished the
    job with exactly the ids the reply was made of, and no stop string cut the text: otherwise
    the ids go on past what the client got."""

    def __init__(
        self,
        turns: GeneratedTurns | None,
        tokenizer: Any,
        chat: ChatInput,
        job: Job,
        call_id: Callable[[str], str] = str,
    ):
        self._turns = turns  # None: only find `body_ids` (the client gets them back another way)
        self._tokenizer = tokenizer
        self._chat = chat
        self._job = job
        self._call_id = call_id  # the id the client saw for a parsed call's id
        self._ids: list[int] = []
        self._parsed: list[ParsedEvent] = []
        self.body_ids: list[int] | None = None  # the turn's ids after its opening, once recorded

    def observe(self, event: OutputEvent) -> None:
        if isinstance(event, Token):
            self._ids.append(event.token_id)
        elif isinstance(event, Done):
            self._record()
        elif isinstance(event, ParsedEvent):
            self._parsed.append(event)

    def _record(self) -> None:
        job = self._job
        if not job.done or job.cancelled or job.generated != self._ids:
            return
        text = self._tokenizer.decode(self._ids)
        if any(stop and stop in text for stop in self._chat.stops):
            return
        frame = TurnFrame.of(self._tokenizer)
        prefix = frame.body(job.request.prompt_ids) if frame is not None else None
        if prefix is None:
            return
        try:
            turn = collect(self._parsed)
        except ValueError:  # events out of order: remember nothing rather than something wrong
            log.exception("request %s: reply events out of order", job.request.request_id)
            return
        calls = [
            {"id": self._call_id(c.id), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in turn.tool_calls
        ]
        reply = {"role": "assistant", "content": turn.content, "reasoning_content": turn.reasoning, "tool_calls": calls}
        self.body_ids = prefix + self._ids
        if self._turns is not None:
            self._turns.record(self._chat.messages, reply, self.body_ids)
