"""agentd/output.py: stop strings, reasoning split, tool-call parsing and the tool-call cap."""

from __future__ import annotations

import json

import pytest

from agentd.output import StopMatcher, TextPipeline
from tests.agentd.fakes import FakeTokenizer
from tools.events import ReasoningDelta, TextDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart
from tools.qwen_xml import QwenXmlParser

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}]


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


@pytest.mark.parametrize(
    "pieces, stops, expected",
    [
        (["Hello wor", "ld END more"], ["END"], ("Hello world ", True)),
        (["ab", "c", "E", "N", "D"], ["END"], ("abc", True)),  # stop split across pieces
        (["aEN", "x"], ["END"], ("aENx", False)),  # a partial match that fails is released
        (["xxSTOPyyEND"], ["END", "STOP"], ("xx", True)),  # the earliest stop wins
        (["plain"], [], ("plain", False)),
        (["a\n\nb"], ["\n\n"], ("a", True)),
    ],
)
def test_stop_matcher(pieces, stops, expected):
    assert feed_all(StopMatcher(stops), pieces) == expected


def test_stop_matcher_holds_back_only_possible_prefixes():
    matcher = StopMatcher(["<END>"])
    assert matcher.feed("abc<E") == ("abc", False)  # "<E" may start "<END>"
    assert matcher.feed("Z") == ("<EZ", False)


def run(pipeline: TextPipeline, text: str) -> list:
    tokenizer = FakeTokenizer()
    events = []
    for token_id in tokenizer.encode(text):
        events += pipeline.push(token_id)
        if pipeline.stopped:
            return events
    return events + pipeline.finish()


def joined(events: list, kind: type) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


def test_reasoning_and_content_are_split():
    pipeline = TextPipeline(FakeTokenizer(), start_in_reasoning=True)
    events = run(pipeline, "Plan: greet.\n</think>\n\nHi there")
    assert joined(events, ReasoningDelta) == "Plan: greet."
    assert joined(events, TextDelta) == "Hi there"


def test_raw_text_without_reasoning_split():
    events = run(TextPipeline(FakeTokenizer()), "a <think>b</think> c")
    assert joined(events, TextDelta) == "a <think>b</think> c"


def test_stop_string_ends_the_pipeline_and_drops_the_rest():
    pipeline = TextPipeline(FakeTokenizer(), stops=["STOP"], start_in_reasoning=False)
    events = run(pipeline, "one two STOP three")
    assert pipeline.stopped
    assert joined(events, TextDelta) == "one two"  # trailing whitespace is trimmed by the splitter


def test_held_back_stop_prefix_is_released_at_the_end():
    events = run(TextPipeline(FakeTokenizer(), stops=["STOP"]), "ends with STO")
    assert joined(events, TextDelta) == "ends with STO"


def call(a: int) -> str:
    return f"<tool_call>\n<function=f>\n<parameter=a>\n{a}\n</parameter>\n</function>\n</tool_call>"


def test_tool_calls_are_parsed_from_the_token_stream():
    pipeline = TextPipeline(FakeTokenizer(), start_in_reasoning=False, tool_parser=QwenXmlParser(TOOLS))
    events = run(pipeline, call(1) + "\n" + call(2))
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [(s.index, s.name) for s in starts] == [(0, "f"), (1, "f")]
    for index, value in ((0, 1), (1, 2)):
        args = "".join(e.fragment for e in events if isinstance(e, ToolCallArgsDelta) and e.index == index)
        assert json.loads(args) == {"a": value}
    assert pipeline.num_tool_calls == 2


def test_tool_call_cap_stops_generation_after_the_last_allowed_call():
    pipeline = TextPipeline(
        FakeTokenizer(), start_in_reasoning=False, tool_parser=QwenXmlParser(TOOLS), max_tool_calls=1
    )
    events = run(pipeline, call(1) + "\n" + call(2) + "\n" + call(3))
    assert pipeline.stopped
    assert [e.index for e in events if isinstance(e, ToolCallEnd)] == [0]
    assert not any(isinstance(e, ToolCallStart) and e.index > 0 for e in events)
