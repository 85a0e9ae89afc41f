"""ReasoningSplitter: exact deltas for every way the text can be split, streaming before the tag,
and a round trip through the chat template's `<think>` rendering."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tools.events import ReasoningDelta, TextDelta, merge_deltas
from tools.reasoning import ReasoningSplitter

OFFICIAL_TEMPLATE = Path(__file__).parents[2].parent / "shared/templates/qwen3.5-chat-template.jinja"


def split(pieces: list[str], start_in_reasoning: bool) -> list:
    splitter = ReasoningSplitter(start_in_reasoning)
    deltas = [delta for piece in pieces for delta in splitter.feed(piece)]
    return merge_deltas(deltas + splitter.finish())


def splits(text: str, seed: int = 0):
    """The text whole, at every single cut, char by char, and at random sets of cuts."""
    yield [text]
    yield list(text)
    for cut in range(1, len(text)):
        yield [text[:cut], text[cut:]]
    rng = random.Random(seed)
    for _ in range(40):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(2, 12))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def split_all_ways(text: str, start_in_reasoning: bool) -> list:
    reference = split([text], start_in_reasoning)
    for pieces in splits(text):
        assert split(pieces, start_in_reasoning) == reference, pieces
    return reference


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
    if not OFFICIAL_TEMPLATE.exists():
        pytest.skip(f"official chat template fixture missing: {OFFICIAL_TEMPLATE}")
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    reasoning, content = "\nThe user wants <b>.\n\nSo: x < y.\n", "\n\nHere it is:\n\n  code\n"
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "reasoning_content": reasoning, "content": content},
    ]
    rendered, _ = utils.render_jinja_template([messages], chat_template=OFFICIAL_TEMPLATE.read_text())
    turn = rendered[0].split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>", 1)[0]
    assert turn.startswith("<think>\n")
    generated = turn.removeprefix("<think>\n")  # the generation prompt ends with "<think>\n"
    expected = [ReasoningDelta(reasoning.strip()), TextDelta(content.strip())]
    assert split_all_ways(generated, start_in_reasoning=True) == expected
