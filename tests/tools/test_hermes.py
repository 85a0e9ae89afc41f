"""HermesParser: exact events for every way the text can be split, arguments streamed as they are
written, and malformed or cut-off JSON."""

from __future__ import annotations

import json
import random

import pytest

from tools.events import ToolCallArgsDelta, ToolCallEnd, ToolCallStart, collect, merge_deltas
from tools.hermes import HermesParser


def tool(name: str) -> dict:
    schema = {"type": "object", "properties": {"path": {"type": "string"}}}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


TOOLS = [tool("read_file"), tool("write_file")]


CALL_HEAD = '{"name": "read_file", "arguments": '
HEAD = "<tool_call>\n" + CALL_HEAD


def call_json(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def parse(pieces: list[str], tools: list[dict] | None = TOOLS) -> list:
    parser = HermesParser(tools)
    events = [event for piece in pieces for event in parser.feed(piece)]
    return merge_deltas(events + parser.finish())


def without_ids(events: list) -> list:
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    ids = [e.id for e in starts]
    assert len(set(ids)) == len(ids) and all(i.startswith("call_") for i in ids)
    return [ToolCallStart(e.index, "", e.name) if e in starts else e for e in events]


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


def outcome(events: list) -> tuple[str, list[tuple[str, dict]]]:
    """Content text and (name, arguments) per call; collect() checks the order of the events."""
    turn = collect(events)
    return turn.content, [(call.name, json.loads(call.arguments)) for call in turn.tool_calls]


def parse_all_ways(text: str, tools: list[dict] | None = TOOLS) -> tuple[str, list]:
    reference = without_ids(parse([text], tools))
    for pieces in splits(text):
        assert without_ids(parse(pieces, tools)) == reference, pieces
    return outcome(reference)


NESTED = {
    "path": 'a "quoted" \\ back\nslash\t🚀 中文',
    "n": [1, -2.5e-3, 0, {"deep": [True, False, None, {}]}, []],
    "e": "\u0001",
}


def test_content_then_calls():
    text = "Reading both.\n\n" + call_json("read_file", NESTED) + "\n" + call_json("write_file", {})
    expected = ("Reading both.", [("read_file", NESTED), ("write_file", {})])
    assert parse_all_ways(text) == expected


def test_arguments_stream_as_written():
    parser = HermesParser(TOOLS)
    events = parser.feed('<tool_call>\n{"name": "write_file", "arguments": {"path": "src/ma')
    assert [type(e) for e in events] == [ToolCallStart, ToolCallArgsDelta]
    assert events[0].name == "write_file"
    assert events[1] == ToolCallArgsDelta(0, '{"path": "src/ma')
    assert parser.feed('in.py", "n": ') == [ToolCallArgsDelta(0, 'in.py"')]  # the key waits
    assert parser.feed("12") == [ToolCallArgsDelta(0, ', "n": 12')]
    assert parser.feed("}}\n</tool_call>") == [ToolCallArgsDelta(0, "}"), ToolCallEnd(0)]


def test_other_key_orders_are_parsed_whole():
    text = '<tool_call>\n{"arguments": {"path": "x"}, "name": "read_file"}\n</tool_call>'
    assert parse_all_ways(text) == ("", [("read_file", {"path": "x"})])


def test_arguments_given_as_a_json_string():
    text = '<tool_call>\n{"name": "read_file", "arguments": "{\\"path\\": \\"x\\"}"}\n</tool_call>'
    assert parse_all_ways(text) == ("", [("read_file", {"path": "x"})])


def test_several_objects_in_one_wrapper():
    text = HEAD + '{"path": "a"}}\n' + CALL_HEAD + '{"path": "b"}}\n</tool_call>'
    expected = [("read_file", {"path": "a"}), ("read_file", {"path": "b"})]
    assert parse_all_ways(text) == ("", expected)


def test_tool_call_close_inside_a_string_is_text_of_the_string():
    arguments = {"path": "</tool_call> <tool_call>"}
    assert parse_all_ways(call_json("write_file", arguments)) == ("", [("write_file", arguments)])


def test_undeclared_function_is_content():
    text = call_json("rm_rf", {"path": "/"})
    assert parse_all_ways(text) == (text, [])


def test_without_tool_list_every_function_is_a_call():
    assert parse_all_ways(call_json("rm_rf", {"x": 1}), tools=None) == ("", [("rm_rf", {"x": 1})])


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>\n{bad json}\n</tool_call>",
        '<tool_call>\n{"name": "read_file", "arguments": [1]}\n</tool_call>',
        '<tool_call>\n["read_file"]\n</tool_call>',
        '<tool_call>\n{"name": "read_file", "arguments": "not json"}\n</tool_call>',
        "<tool_call>\nplain words\n</tool_call>",
    ],
)
def test_malformed_calls_that_never_started_are_content(text):
    assert parse_all_ways(text) == (text, [])


def test_malformed_json_after_the_start_closes_the_call():
    text = HEAD + '{"path": "a", "b": tru}}\n</tool_call> after'
    expected = (', "b": tru}}\n</tool_call> after', [("read_file", {"path": "a"})])
    assert parse_all_ways(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<tool_call>\n", ("<tool_call>", [])),
        ('<tool_call>\n{"name": "read_fi', ('<tool_call>\n{"name": "read_fi', [])),
        (HEAD + '{"path": "src/ma', ("", [("read_file", {"path": "src/ma"})])),
        (HEAD + '{"n": [1, {"a": 2.5', ("", [("read_file", {"n": [1, {"a": 2.5}]})])),
        (HEAD + '{"n": 1, "pa', (', "pa', [("read_file", {"n": 1})])),
        (HEAD + '{"p": "\\u00', ("\\u00", [("read_file", {"p": ""})])),
        (HEAD + '{"path": "x"}}', ("", [("read_file", {"path": "x"})])),
    ],
)
def test_generation_that_stops_inside_a_call(text, expected):
    assert parse_all_ways(text) == expected


def test_every_prefix_closes_into_valid_arguments():
    text = "Ok.\n" + call_json("read_file", NESTED) + call_json("read_file", {"p": "</tool_call>"})
    for end in range(len(text) + 1):
        outcome(parse([text[:end]]))


def test_garbage_never_raises_and_calls_stay_valid_json():
    atoms = [
        "<tool_call>", "</tool_call>", CALL_HEAD, '{"name": "nope", "arguments": ',
        "{", "}", "[", "]", '"', ":", ",", "\\", "1", "-", "e", "tru", "null", " ", "\n", "x", "<",
    ]
    rng = random.Random(7)
    for _ in range(300):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 30)))
        reference = without_ids(parse([text]))
        outcome(reference)
        assert without_ids(parse(list(text))) == reference, text
