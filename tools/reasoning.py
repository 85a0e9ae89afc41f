"""Splits generated text into reasoning (`<think>...</think>`) and content, incrementally.

With thinking on, Qwen3.5's generation prompt ends with `<think>\\n`, so generation starts inside
the reasoning and the first `</think>` ends it; a `<think>` in the output opens reasoning too. The
template renders a turn back as `<think>\\n{reasoning}\\n</think>\\n\\n{content}` with both parts
trimmed, so both are streamed without the whitespace around them. A tag split across pieces is
held back until decided; tags that change nothing (a second `<think>`, a `</think>` outside
reasoning) are dropped.
"""

from __future__ import annotations

from tools.events import ReasoningDelta, TextDelta, TrimmedText, find_marker, merge_deltas

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class ReasoningSplitter:
    """feed() decoded text pieces as they are generated, then finish() once; both return deltas."""

    def __init__(self, start_in_reasoning: bool) -> None:
        self._in_reasoning = start_in_reasoning
        self._buf = ""
        self._reasoning = TrimmedText()
        self._content = TrimmedText()

    def feed(self, text: str) -> list[ReasoningDelta | TextDelta]:
        self._buf += text
        return self._split(at_end=False)

    def finish(self) -> list[ReasoningDelta | TextDelta]:
        return self._split(at_end=True)

    def _split(self, at_end: bool) -> list[ReasoningDelta | TextDelta]:
        deltas: list[ReasoningDelta | TextDelta] = []
        while True:
            pos, marker = find_marker(self._buf, (THINK_OPEN, THINK_CLOSE), at_end)
            segment = self._reasoning if self._in_reasoning else self._content
            text = segment.push(self._buf[:pos])
            if text:
                deltas.append(ReasoningDelta(text) if self._in_reasoning else TextDelta(text))
            self._buf = self._buf[pos + len(marker or "") :]
            if marker is None:
                return merge_deltas(deltas)
            if (marker == THINK_OPEN) != self._in_reasoning:
                self._in_reasoning = not self._in_reasoning
                segment.cut()
