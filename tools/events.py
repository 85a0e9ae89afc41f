"""Events that the tool-call parsers and the reasoning splitter emit, and helpers they share.

The daemon maps events to wire deltas: TextDelta -> `content` / `text_delta`, ReasoningDelta ->
`reasoning_content` / `thinking_delta`, ToolCallStart/ToolCallArgsDelta/ToolCallEnd -> `tool_calls`
deltas / a `tool_use` block with `input_json_delta`. The argument fragments of one call concatenate
to the text of one JSON object, even when generation stops in the middle of the call.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import msgspec


class TextDelta(msgspec.Struct, frozen=True):
    text: str


class ReasoningDelta(msgspec.Struct, frozen=True):
    text: str


class ToolCallStart(msgspec.Struct, frozen=True):
    index: int
    id: str
    name: str


class ToolCallArgsDelta(msgspec.Struct, frozen=True):
    index: int
    fragment: str


class ToolCallEnd(msgspec.Struct, frozen=True):
    index: int


Event = TextDelta | ReasoningDelta | ToolCallStart | ToolCallArgsDelta | ToolCallEnd


class CollectedCall(msgspec.Struct, frozen=True):
    id: str
    name: str
    arguments: str  # JSON object text, as OpenAI's `function.arguments`


class CollectedTurn(msgspec.Struct, frozen=True):
    content: str
    reasoning: str
    tool_calls: list[CollectedCall]


def collect(events: Iterable[Event]) -> CollectedTurn:
    """A whole turn from its events, for non-streaming responses.

    Checks the order the parsers promise (calls numbered from 0, each started before its
    fragments and ended before anything else) and raises ValueError naming the first violation.
    """
    content, reasoning, calls, fragments = [], [], [], []
    open_index = None
    for number, event in enumerate(events):
        if isinstance(event, ToolCallArgsDelta):
            if event.index != open_index:
                raise ValueError(f"event {number}: arguments for call {event.index}, not open")
            fragments[-1].append(event.fragment)
            continue
        if open_index is not None and not isinstance(event, ToolCallEnd):
            raise ValueError(f"event {number}: {type(event).__name__} inside call {open_index}")
        if isinstance(event, ToolCallStart):
            if event.index != len(calls):
                raise ValueError(f"event {number}: call {event.index} starts, not {len(calls)}")
            calls.append(event)
            fragments.append([])
            open_index = event.index
        elif isinstance(event, ToolCallEnd):
            if event.index != open_index:
                raise ValueError(f"event {number}: call {event.index} ends, but it is not open")
            open_index = None
        elif isinstance(event, TextDelta):
            content.append(event.text)
        else:
            reasoning.append(event.text)
    if open_index is not None:
        raise ValueError(f"call {open_index} never ends")
    tool_calls = [CollectedCall(c.id, c.name, "".join(f)) for c, f in zip(calls, fragments)]
    return CollectedTurn("".join(content), "".join(reasoning), tool_calls)


def new_call_id() -> str:
    """A fresh OpenAI-style tool-call id; unique without coordination between requests."""
    return "call_" + uuid.uuid4().hex[:24]


def merge_deltas(events: Iterable[Event]) -> list[Event]:
    """Join adjacent deltas of one kind (and one call), so fewer, larger chunks go on the wire."""
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, TextDelta | ReasoningDelta) and type(last) is type(event):
            merged[-1] = type(event)(last.text + event.text)
        elif (
            isinstance(event, ToolCallArgsDelta)
            and isinstance(last, ToolCallArgsDelta)
            and last.index == event.index
        ):
            merged[-1] = ToolCallArgsDelta(event.index, last.fragment + event.fragment)
        else:
            merged.append(event)
    return merged


def marker_at(buf: str, pos: int, markers: tuple[str, ...], at_end: bool) -> str | None:
    """The marker that starts at buf[pos]; "" when none does; None while the text there is still
    only a prefix of one (more text decides; at the end of generation nothing is undecided)."""
    undecided = False
    for marker in markers:
        rest = buf[pos : pos + len(marker)]
        if rest == marker:
            return marker
        if not at_end and len(rest) < len(marker) and marker.startswith(rest):
            undecided = True
    return None if undecided else ""


def find_marker(buf: str, markers: tuple[str, ...], at_end: bool) -> tuple[int, str | None]:
    """The first of `markers` (each starting with "<") in `buf`: (position, marker); or
    (position, None) where the buffer ends in text that may still grow into a marker (hold it
    back); or (len(buf), None) when there is none."""
    pos = buf.find("<")
    while pos != -1:
        marker = marker_at(buf, pos, markers, at_end)
        if marker != "":
            return pos, marker
        pos = buf.find("<", pos + 1)
    return len(buf), None


class TrimmedText:
    """Streams text without leading whitespace and without whitespace before a cut.

    A trailing whitespace run is held back until more text shows it was inner whitespace; `cut()`
    drops it, where the text stops before a tool call or `</think>` (or ends): the chat template
    trims these parts when it renders them back.
    """

    def __init__(self) -> None:
        self._held = ""
        self._started = False

    def push(self, text: str) -> str:
        """The part of `text` (with whitespace held before it) that is safe to emit now."""
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        text = self._held + text
        body = text.rstrip()
        self._held = text[len(body) :]
        return body

    def cut(self) -> None:
        self._held = ""


class EventSink:
    """Collects a parser's events: content without the whitespace that separates it from tool
    calls, calls numbered 0, 1, 2, ... in the order they start, each with a fresh id.

    Between a call's start and end there are only that call's argument fragments (an Anthropic
    `tool_use` block cannot be interrupted); stray text found inside a call follows its end.
    """

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._content = TrimmedText()
        self._num_calls = 0
        self._in_call = False
        self._deferred: list[str] = []

    def text(self, text: str) -> None:
        if self._in_call:
            self._deferred.append(text)
            return
        text = self._content.push(text)
        if text:
            self._events.append(TextDelta(text))

    def start_call(self, name: str) -> None:
        self._content.cut()
        self._events.append(ToolCallStart(self._num_calls, new_call_id(), name))
        self._num_calls += 1
        self._in_call = True

    def args(self, fragment: str) -> None:
        if fragment:
            self._events.append(ToolCallArgsDelta(self._num_calls - 1, fragment))

    def end_call(self) -> None:
        self._events.append(ToolCallEnd(self._num_calls - 1))
        self._in_call = False
        deferred, self._deferred = "".join(self._deferred), []
        self.text(deferred)

    def drop_whitespace(self) -> None:
        """Whitespace before a stray format tag is the format's, not content."""
        self._content.cut()

    def take(self) -> list[Event]:
        events, self._events = merge_deltas(self._events), []
        return events
