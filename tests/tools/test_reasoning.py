"""ReasoningSplitter: exact deltas for every way the text can be split, streaming before the tag,
and a round trip through the chat template's `<think>` rendering."""

from __future__ import annotations

import pytest

from tests.tools.streaming import feed_all, first_assistant_turn, same_for_every_split
from tools.events import ReasoningDelta, TextDelta
from tools.reasoning import ReasoningSplitter


def split(pieces: list[str], start_in_reasoning: bool) -> list:
    return feed_all(ReasoningSplitter(start_in_reasoning), pieces)


def split_all_ways(text: str, start_in_reasoning: bool) -> list:
    return same_for_every_split(lambda pieces: split(pieces, start_in_reasoning), text)


@pytest.mark.parametrize(
    "text, start_in_reasoning, expected",
    [
        (
            "Let me think.\n\nStep 2.\n</think>\n\nThe answer.",
            True,
            [ReasoningDelta("Let me think.\n\nStep 2."), TextDelta("The answer.")],
        ),
        ("<think>\nhmm\n</think>\n\nHi", False, [ReasoningDelta("hmm"), TextDelta("Hi")]),
        ("  Hello <b>\n", False, [TextDelta("Hello <b>")]),
        ("thinking... <thin\n", True, [ReasoningDelta("thinking... <thin")]),
        ("a<think>b</think>c</think>d", True, [ReasoningDelta("ab"), TextDelta("cd")]),
        ("\n</think>\n\nHi", True, [TextDelta("Hi")]),
        ("\n\n</think>\n\n", True, []),
        ("</think>x", False, [TextDelta("x")]),
    ],
)
def test_split(text, start_in_reasoning, expected):
    assert split_all_ways(text, start_in_reasoning) == expected


def test_reasoning_streams_before_the_closing_tag():
    splitter = ReasoningSplitter(start_in_reasoning=True)
    assert splitter.feed("Let me") == [ReasoningDelta("Let me")]
    assert splitter.feed(" think\n") == [ReasoningDelta(" think")]
    assert splitter.feed("</thi") == []
    assert splitter.feed("nk>\n\n") == []
    assert splitter.feed("Answer\n") == [TextDelta("Answer")]
    assert splitter.finish() == []


def test_round_trip_through_the_chat_template():
    reasoning, content = "\nThe user wants <b>.\n\nSo: x < y.\n", "\n\nHere it is:\n\n  code\n"
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "reasoning_content": reasoning, "content": content},
    ]
    turn = first_assistant_turn(messages)
    assert turn.startswith("<think>\n")
    generated = turn.removeprefix("<think>\n")  # the generation prompt ends with "<think>\n"
    expected = [ReasoningDelta(reasoning.strip()), TextDelta(content.strip())]
    assert split_all_ways(generated, start_in_reasoning=True) == expected
