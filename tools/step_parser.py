"""The driver both tool-call parsers share: text pieces in, events out, one state step at a time."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping

from tools.events import Event, EventSink
from tools.schema import ToolSchemas

Step = Callable[[bool], bool]


class StepParser:
    """feed() decoded text pieces as they are generated, then finish() once; both return events.

    A subclass is a state machine over the text in `_buf`: `steps` maps each state to a method
    that consumes what it can decide (emitting into `_sink`), may change `_state`, and returns
    whether another step may progress. Its argument `at_end` says that no more text will come.
    """

    def __init__(
        self, tools: list[dict] | None, state: enum.Enum, steps: Mapping[enum.Enum, Step]
    ) -> None:
        self._schemas = ToolSchemas(tools)
        self._sink = EventSink()
        self._state = state
        self._buf = ""  # text received and not yet consumed
        self._steps = steps

    def feed(self, text: str) -> list[Event]:
        self._buf += text
        self._run(at_end=False)
        return self._sink.take()

    def finish(self, truncated: bool = False) -> list[Event]:
        """No more text comes. `truncated`: generation was cut off (the token limit), so text held
        back as a tag not yet complete is dropped, not returned as content, and an open call is
        closed with the arguments parsed so far."""
        if truncated:
            self._cut_off()
        self._run(at_end=True)
        return self._sink.take()

    def _cut_off(self) -> None:
        """Drop the undecided text in `_buf` and go to a state that closes what is open."""
        raise NotImplementedError

    def _run(self, at_end: bool) -> None:
        while self._steps[self._state](at_end):
            pass
