"""From sampled tokens to API-neutral output events: text, reasoning, tool calls, the finish.

tokens -> incremental detokenizer -> stop strings -> <think> splitter -> tool-call parser. Each
API module (OpenAI, Anthropic) only maps these events to its wire format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Literal, Sequence

from agentd.runner import Failed, Finished, Job, JobStats, Token
from tools.events import Event as ParsedEvent
from tools.events import TextDelta, ToolCallEnd, ToolCallStart
from tools.reasoning import ReasoningSplitter

FinishReason = Literal["stop", "length", "tool_calls"]


class StopMatcher:
    """Cuts streamed text at the first stop string; holds back a tail that may begin one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was found); after True, discard the rest."""
        buf = self._held + text
        hits = [pos for pos in (buf.find(s) for s in self.stops) if pos >= 0]
        if hits:
            self._held = ""
            return buf[: min(hits)], True
        keep = max((self._partial_suffix(buf, s) for s in self.stops), default=0)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    @staticmethod
    def _partial_suffix(buf: str, stop: str) -> int:
        for k in range(min(len(stop) - 1, len(buf)), 0, -1):
            if buf.endswith(stop[:k]):
                return k
        return 0


class TextPipeline:
    """Synchronous core: push token ids, get events; `stopped` turns True at a stop string or at
    the tool-call cap, after which the caller should end generation (and call nothing more)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        stops: Sequence[str] = (),
        start_in_reasoning: bool | None = None,  # None: raw text, no <think> splitting
        tool_parser: Any = None,
        max_tool_calls: int = 16,
    ):
        self._decoder = tokenizer.stream_decoder()
        self._stop = StopMatcher(list(stops))
        self._splitter = ReasoningSplitter(start_in_reasoning) if start_in_reasoning is not None else None
        self._parser = tool_parser
        self.max_tool_calls = max_tool_calls
        self.num_tool_calls = 0
        self._num_calls_ended = 0
        self.stopped = False

    def push(self, token_id: int) -> list[ParsedEvent]:
        if self.stopped:
            return []
        emit, hit = self._stop.feed(self._decoder.push(token_id))
        events = self._route(emit)
        if hit or self._num_calls_ended >= self.max_tool_calls:
            events += self._close()
        return events

    def finish(self, truncated: bool = False) -> list[ParsedEvent]:
        """Generation ended: release held text and close open reasoning / tool calls.
        `truncated` (the token limit): a tool-call tag cut off half-way is dropped, not content."""
        if self.stopped:
            return []
        emit, hit = self._stop.feed(self._decoder.flush())
        return self._route(emit if hit else emit + self._stop.flush()) + self._close(truncated)

    def _route(self, text: str) -> list[ParsedEvent]:
        if not text:
            return []
        pieces = self._splitter.feed(text) if self._splitter else [TextDelta(text)]
        return self._parse(pieces)

    def _parse(self, pieces: list[ParsedEvent]) -> list[ParsedEvent]:
        out: list[ParsedEvent] = []
        for piece in pieces:
            if self._parser is not None and isinstance(piece, TextDelta):
                out += self._parser.feed(piece.text)
            else:
                out.append(piece)
        return self._count_calls(out)

    def _count_calls(self, events: list[ParsedEvent]) -> list[ParsedEvent]:
        kept: list[ParsedEvent] = []
        for event in events:
            if self._num_calls_ended >= self.max_tool_calls:
                break
            self.num_tool_calls += isinstance(event, ToolCallStart)
            self._num_calls_ended += isinstance(event, ToolCallEnd)
            kept.append(event)
        return kept

    def _close(self, truncated: bool = False) -> list[ParsedEvent]:
        self.stopped = True
        events = self._parse(self._splitter.finish()) if self._splitter else []
        if self._parser is not None:
            events += self._count_calls(self._parser.finish(truncated))
        return events


@dataclass(frozen=True)
class Done:
    finish_reason: FinishReason
    num_generated_tokens: int
    stats: JobStats


@dataclass(frozen=True)
class KeepAlive:
    """Nothing happened for a while (long prompt processing); streams send a comment."""


OutputEvent = ParsedEvent | Token | Done | Failed | KeepAlive


async def output_events(
    job: Job, pipeline: TextPipeline, keepalive_seconds: float | None = None
) -> AsyncIterator[OutputEvent]:
    """Events for one job, ending with `Done` or `Failed`. `Token`s come before the text they
    produce, for logprobs; leaving early is fine (the caller's `runner.open` cancels the job)."""
    num_tokens = 0
    while True:
        event = await job.next_event(keepalive_seconds)
        if event is None:
            yield KeepAlive()
        elif isinstance(event, Token):
            num_tokens += 1
            yield event
            for parsed in pipeline.push(event.token_id):
                yield parsed
            if pipeline.stopped:
                yield Done(_reason("stop", pipeline), num_tokens, job.stats)
                return
        elif isinstance(event, Finished):
            for parsed in pipeline.finish(truncated=event.reason == "length"):
                yield parsed
            yield Done(_reason(event.reason, pipeline), num_tokens, job.stats)
            return
        else:
            yield event
            return


def _reason(reason: Literal["stop", "length"], pipeline: TextPipeline) -> FinishReason:
    return "tool_calls" if reason == "stop" and pipeline.num_tool_calls else reason


