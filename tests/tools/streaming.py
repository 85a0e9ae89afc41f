"""Helpers the streaming tests share (tool-call parsers, reasoning splitter): every way to cut a
text into pieces, a check that the result does not depend on the cuts, tool-call events compared
without their random ids, and the official chat template's rendering of an assistant turn."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from tools.events import Event, ToolCallStart, collect, merge_deltas

OFFICIAL_TEMPLATE = Path(__file__).parents[2].parent / "shared/templates/qwen3.5-chat-template.jinja"

T = TypeVar("T")


class Streamer(Protocol):
    def feed(self, text: str) -> list[Event]: ...

    def finish(self) -> list[Event]: ...


def feed_all(streamer: Streamer, pieces: list[str], truncated: bool = False) -> list[Event]:
    """What the streamer emits for the pieces and at the finish (cut off by the token limit when
    `truncated`), adjacent deltas merged."""
    events = [event for piece in pieces for event in streamer.feed(piece)]
    return merge_deltas(events + (streamer.finish(truncated=True) if truncated else streamer.finish()))


def splits(text: str, seed: int = 0) -> Iterator[list[str]]:
    """The text whole, at every single cut, char by char, and at random sets of cuts."""
    yield [text]
    yield list(text)
    for cut in range(1, len(text)):
        yield [text[:cut], text[cut:]]
    rng = random.Random(seed)
    for _ in range(40):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(2, 12))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def same_for_every_split(run: Callable[[list[str]], T], text: str) -> T:
    """run([text]), after checking that every split of `text` gives the same result."""
    reference = run([text])
    for pieces in splits(text):
        result = run(pieces)
        assert result == reference, f"split {pieces!r}: {result!r} != {reference!r}"
    return reference


def without_ids(events: list[Event]) -> list[Event]:
    """The events with each call's id blanked, after checking that the ids are distinct and of
    the OpenAI shape."""
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    ids = [e.id for e in starts]
    assert len(set(ids)) == len(ids) and all(i.startswith("call_") and len(i) > 10 for i in ids)
    return [ToolCallStart(e.index, "", e.name) if e in starts else e for e in events]


def outcome(events: list[Event]) -> tuple[str, list[tuple[str, dict]]]:
    """Content text and (name, arguments) per call; collect() checks the order of the events."""
    turn = collect(events)
    return turn.content, [(call.name, json.loads(call.arguments)) for call in turn.tool_calls]


def check_cut_offs(parse: Callable[[list[str], bool], list[Event]], content: str, text: str) -> None:
    """Cut off by the token limit anywhere in `content` + `text` (whose calls follow the content),
    the content is a prefix of `content`, never markup, and the calls are a prefix of the calls
    of the whole text, with arguments that are JSON."""
    whole = [name for name, _ in outcome(parse([content + text], False))[1]]
    for end in range(len(content) + len(text) + 1):
        got, calls = outcome(parse([(content + text)[:end]], True))
        assert content.startswith(got), f"cut at {end}: content {got!r}"
        assert [name for name, _ in calls] == whole[: len(calls)], f"cut at {end}: calls {calls!r}"


def check_random_garbage(parse: Callable[[list[str]], list[Event]], atoms: list[str]) -> None:
    """Texts of random atoms (pieces of the format and of JSON, junk) never make `parse` raise,
    give calls whose arguments are JSON, and give the same events char by char as whole."""
    rng = random.Random(7)
    for _ in range(300):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 30)))
        reference = without_ids(parse([text]))
        outcome(reference)
        by_char = without_ids(parse(list(text)))
        assert by_char == reference, f"{text!r}: {by_char!r} != {reference!r}"


def first_assistant_turn(messages: list[dict]) -> str:
    """The text of the first assistant turn in `messages` as transformers renders it with the
    official template: what the model learned to write."""
    if not OFFICIAL_TEMPLATE.exists():
        pytest.skip(f"official chat template fixture missing: {OFFICIAL_TEMPLATE}")
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    rendered, _ = utils.render_jinja_template([messages], chat_template=OFFICIAL_TEMPLATE.read_text())
    return rendered[0].split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>", 1)[0]
