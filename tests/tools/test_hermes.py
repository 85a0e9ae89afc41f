"""HermesParser: exact events for every way the text can be split, arguments streamed as they are
written, and malformed or cut-off JSON."""

from __future__ import annotations

import json

import pytest

from tests.tools.streaming import (
    check_cut_offs,
    check_random_garbage,
    feed_all,
    outcome,
    same_for_every_split,
    without_ids,
)
from tools.events import ToolCallArgsDelta, ToolCallEnd, ToolCallStart
from tools.hermes import HermesParser


def tool(name: str) -> dict:
    schema = {"type": "object", "properties": {"path": {"type": "string"}}}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


TOOLS = [tool("read_file"), tool("write_file")]


CALL_HEAD = '{"name": "read_file", "arguments": '
HEAD = "<tool_call>\n" + CALL_HEAD


def call_json(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def parse(pieces: list[str], tools: list[dict] | None = TOOLS, truncated: bool = False) -> list:
    return feed_all(HermesParser(tools), pieces, truncated)


def parse_all_ways(text: str, tools: list[dict] | None = TOOLS) -> tuple[str, list]:
    """The outcome of parsing `text`, after checking that every split gives the same events."""
    return outcome(same_for_every_split(lambda pieces: without_ids(parse(pieces, tools)), text))


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


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Done. <tool_call>\n", ("Done.", [])),
        ('<tool_call>\n{"name": "read_fi', ("", [])),
        (HEAD + '{"n": 1, "pa', ("", [("read_file", {"n": 1})])),
        (HEAD + '{"p": "\\u00', ("", [("read_file", {"p": ""})])),
        (call_json("read_file", {"path": "a"}) + "\n<tool_call>\n" + CALL_HEAD, ("", [("read_file", {"path": "a"})])),
        (HEAD + '{"path": "a"}}\n</tool_', ("", [("read_file", {"path": "a"})])),
    ],
)
def test_generation_cut_off_inside_a_call_leaves_no_markup(text, expected):
    """The token limit ends generation inside a call: what the model did not finish is dropped."""
    assert outcome(same_for_every_split(lambda p: without_ids(parse(p, truncated=True)), text)) == expected


def test_every_cut_off_keeps_content_clean_and_calls_whole():
    calls = call_json("read_file", NESTED) + "\n" + call_json("write_file", {"path": "</tool_call>"})
    check_cut_offs(lambda pieces, truncated: parse(pieces, truncated=truncated), "Ok, two calls.\n", calls)


def test_every_prefix_closes_into_valid_arguments():
    text = "Ok.\n" + call_json("read_file", NESTED) + call_json("read_file", {"p": "</tool_call>"})
    for end in range(len(text) + 1):
        outcome(parse([text[:end]]))


def test_garbage_never_raises_and_calls_stay_valid_json():
    atoms = [
        "<tool_call>", "</tool_call>", CALL_HEAD, '{"name": "nope", "arguments": ',
        "{", "}", "[", "]", '"', ":", ",", "\\", "1", "-", "e", "tru", "null", " ", "\n", "x", "<",
    ]
    check_random_garbage(parse, atoms)
