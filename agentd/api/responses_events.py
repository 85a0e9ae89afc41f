"""Output events -> the Responses API's stream events, building the response's output items on
the way (the non-streamed body is the same builder's result, so both forms always agree).

Event order per item (clients/codex.md): `response.output_item.added`, its content part, the
deltas, the `.done` events, `response.output_item.done`; a tool call's arguments stream as
`response.function_call_arguments.delta` while generated, a free-form tool's input once its call
ends. Every event carries its `type` and a `sequence_number`.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

import msgspec

from agentd.api.responses_input import CUSTOM_INPUT, Tools
from agentd.api.responses_wire import (
    CustomToolCallOut,
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
    SummaryText,
    Usage,
    encode,
)
from agentd.output import Done, OutputEvent
from agentd.runner import Job, Token
from tools.events import ReasoningDelta, TextDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart

SseEvent = tuple[str, bytes]  # event name, data


class EventBuilder:
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
