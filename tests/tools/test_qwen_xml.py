"""QwenXmlParser: exact events for every way the text can be split into pieces, typed arguments,
the malformed outputs of serving-anchors.md section 5, a round trip through the chat template."""

from __future__ import annotations

import json

import pytest

from tests.tools.streaming import (
    check_cut_offs,
    check_random_garbage,
    feed_all,
    first_assistant_turn,
    outcome,
    same_for_every_split,
    without_ids,
)
from tools.events import ToolCallArgsDelta, ToolCallEnd, ToolCallStart
from tools.qwen_xml import QwenXmlParser


WRITING = "<tool_call>\n<function=write_file>\n<parameter=content>\n"


def tool(name: str, **properties: dict) -> dict:
    schema = {"type": "object", "properties": properties}
    return {"type": "function", "function": {"name": name, "parameters": schema}}


TOOLS = [
    tool("read_file", path={"type": "string"}),
    tool("write_file", path={"type": "string"}, content={"type": "string"}),
    tool(
        "run",
        command={"type": "string"},
        timeout={"type": "integer"},
        background={"type": "boolean"},
        env={"type": "object"},
        args={"type": "array"},
        ratio={"type": "number"},
        note={"type": ["string", "null"]},
        limit={"anyOf": [{"type": "integer"}, {"type": "null"}]},
        mode={"$ref": "#/$defs/Mode"},
        level={"enum": [1, 2, 3]},
        anything={},
    ),
    tool("list_files"),
]
TOOLS[2]["function"]["parameters"]["$defs"] = {"Mode": {"enum": ["fast", "slow"]}}


def call_xml(name: str, *params: tuple[str, str], wrapped: bool = True) -> str:
    """A call as the chat template writes it: raw values between the format's newlines."""
    body = f"<function={name}>\n"
    body += "".join(f"<parameter={key}>\n{value}\n</parameter>\n" for key, value in params)
    body += "</function>"
    return f"<tool_call>\n{body}\n</tool_call>" if wrapped else body


def parse(pieces: list[str], tools: list[dict] | None = TOOLS, truncated: bool = False) -> list:
    return feed_all(QwenXmlParser(tools), pieces, truncated)


def parse_all_ways(text: str, tools: list[dict] | None = TOOLS) -> tuple[str, list]:
    """The outcome of parsing `text`, after checking that every split gives the same events."""
    return outcome(same_for_every_split(lambda pieces: without_ids(parse(pieces, tools)), text))


def test_content_then_call():
    text = "I'll read it.\n\n" + call_xml("read_file", ("path", "src/main.py"))
    assert parse_all_ways(text) == ("I'll read it.", [("read_file", {"path": "src/main.py"})])


def test_arguments_are_typed_by_schema():
    text = call_xml(
        "run",
        ("command", "ls -la"),
        ("timeout", "30"),
        ("background", "true"),
        ("env", '{"A": "1", "B": [1, 2]}'),
        ("args", '["-x", 2, null]'),
        ("ratio", "0.5"),
        ("note", "null"),
        ("limit", "7"),
        ("mode", "fast"),
        ("level", "2"),
        ("anything", "42"),
        ("undeclared", "3"),
    )
    expected = {
        "command": "ls -la",
        "timeout": 30,
        "background": True,
        "env": {"A": "1", "B": [1, 2]},
        "args": ["-x", 2, None],
        "ratio": 0.5,
        "note": "null",  # string among the types: the raw text is the value
        "limit": 7,
        "mode": "fast",
        "level": 2,
        "anything": "42",  # no type known: raw text
        "undeclared": "3",
    }
    assert parse_all_ways(text) == ("", [("run", expected)])


def test_typed_values_that_are_not_json():
    text = call_xml(
        "run", ("timeout", "soon"), ("background", "True"), ("limit", "None"), ("ratio", "NaN")
    )
    expected = {"timeout": "soon", "background": True, "limit": None, "ratio": "NaN"}
    assert parse_all_ways(text) == ("", [("run", expected)])


def test_string_values_are_escaped_exactly():
    content = 'print("hi\\n")\n\tquote = \'\\\\\' \x01\n\nünïcødé 🚀 中文 \\u0041 {"j": true}\n'
    text = call_xml("write_file", ("path", "dir/a b.py"), ("content", content))
    expected = [("write_file", {"path": "dir/a b.py", "content": content})]
    assert parse_all_ways(text) == ("", expected)


def test_only_the_format_newlines_are_removed():
    content = "\n\n  indented\n\n"
    text = call_xml("write_file", ("path", ""), ("content", content))
    assert parse_all_ways(text) == ("", [("write_file", {"path": "", "content": content})])


def test_values_without_the_format_newlines():
    text = (
        "<tool_call><function=write_file><parameter=path>a.py</parameter>"
        "<parameter=content>x</parameter></function></tool_call>"
    )
    assert parse_all_ways(text) == ("", [("write_file", {"path": "a.py", "content": "x"})])


def test_literal_closing_tags_inside_a_value():
    content = (
        "a</parameter>b\n</parameter>\nstill value\n</parameter>  \n text"
        "</function>x\n<parameter=unknown>y"
    )
    text = call_xml("write_file", ("content", content), ("path", "a.xml"))
    assert parse_all_ways(text) == ("", [("write_file", {"content": content, "path": "a.xml"})])


def test_missing_parameter_close_before_next_parameter_and_function_close():
    text = (
        "<tool_call>\n<function=write_file>\n<parameter=path>\nsrc/a.py\n"
        "<parameter=content>\nhello\n</function>\n</tool_call>"
    )
    assert parse_all_ways(text) == ("", [("write_file", {"path": "src/a.py", "content": "hello"})])


def test_several_functions_in_one_wrapper_are_separate_calls():
    text = (
        "<tool_call>\n"
        + call_xml("read_file", ("path", "a"), wrapped=False)
        + "\n"
        + call_xml("read_file", ("path", "b"), wrapped=False)
        + "\n</tool_call>\n"
        + call_xml("run", ("timeout", "1"))
    )
    expected = [("read_file", {"path": "a"}), ("read_file", {"path": "b"}), ("run", {"timeout": 1})]
    assert parse_all_ways(text) == ("", expected)


def test_bare_function_without_wrapper_is_a_call():
    text = "Sure.\n" + call_xml("read_file", ("path", "x"), wrapped=False) + "\n"
    assert parse_all_ways(text) == ("Sure.", [("read_file", {"path": "x"})])


def test_text_before_between_and_after_calls():
    call = call_xml("read_file", ("path", "x"))
    text = f"Before.\n\n{call}\n{call}\n\nAfter, <b>bold</b> < 3 <tool <tooling>.\n"
    expected_content = "Before.\n\nAfter, <b>bold</b> < 3 <tool <tooling>."
    assert parse_all_ways(text) == (expected_content, [("read_file", {"path": "x"})] * 2)


def test_undeclared_function_is_content():
    text = "Hm.\n" + call_xml("rm_rf", ("path", "/")) + "\n" + call_xml("read_file", ("path", "y"))
    content = "Hm.\n<function=rm_rf>\n<parameter=path>\n/\n</parameter>\n</function>"
    assert parse_all_ways(text) == (content, [("read_file", {"path": "y"})])


def test_without_tool_list_every_function_is_a_call_of_strings():
    text = call_xml("anything", ("n", "5"), ("flag", "true"))
    assert parse_all_ways(text, tools=None) == ("", [("anything", {"n": "5", "flag": "true"})])


def test_function_without_parameters():
    text = "<tool_call>\n<function=list_files>\n</function>\n</tool_call>"
    assert parse_all_ways(text) == ("", [("list_files", {})])


def test_tool_call_close_without_function_close():
    text = "<tool_call>\n<function=read_file>\n<parameter=path>\na\n</parameter>\n</tool_call>x"
    assert parse_all_ways(text) == ("x", [("read_file", {"path": "a"})])


def test_function_open_ends_the_call_before_it():
    text = (
        "<tool_call>\n<function=read_file>\n<parameter=path>\na\n</parameter>\n"
        "<function=list_files>\n</function>"
    )
    assert parse_all_ways(text) == ("", [("read_file", {"path": "a"}), ("list_files", {})])


def test_wrapper_without_function_is_content():
    text = '<tool_call>\n{"name": "read_file"}\n</tool_call>'
    assert parse_all_ways(text) == ('<tool_call>\n{"name": "read_file"}', [])


def test_malformed_tags_are_content():
    call = call_xml("read_file", ("path", "p"), ("<parameter=", "q"))
    text = "<function=read file\n> and <function=>" + call
    content = "<function=read file\n> and <function=><parameter=<parameter=>\nq\n</parameter>"
    assert parse_all_ways(text) == (content, [("read_file", {"path": "p"})])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<tool_ca", ("<tool_ca", [])),
        ("<tool_call>\n", ("<tool_call>", [])),
        ("<tool_call>\n<function=read_fi", ("<function=read_fi", [])),
        ("<tool_call>\n<function=read_file>", ("", [("read_file", {})])),
        ("<tool_call>\n<function=read_file>\n<parameter=pa", ("<parameter=pa", [("read_file", {})])),
        (WRITING + "line1\nli", ("", [("write_file", {"content": "line1\nli"})])),
        (WRITING + "x\n</param", ("", [("write_file", {"content": "x\n</param"})])),
        (WRITING + "x\n</parameter>\n", ("", [("write_file", {"content": "x"})])),
        ("<tool_call>\n<function=run>\n<parameter=timeout>\n3", ("", [("run", {"timeout": 3})])),
        ("<tool_call>\n<function=run>\n<parameter=args>\n[1, 2", ("", [("run", {"args": "[1, 2"})])),
    ],
)
def test_generation_that_stops_inside_a_call(text, expected):
    assert parse_all_ways(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<tool_ca", ("", [])),
        ("Done. <tool_call>\n", ("Done.", [])),
        ("<tool_call>\n<function=read_fi", ("", [])),
        ("<tool_call>\n<function=read_file>\n<parameter=pa", ("", [("read_file", {})])),
        (WRITING + "x\n</param", ("", [("write_file", {"content": "x"})])),
        (call_xml("read_file", ("path", "a")) + "\n<tool_call>\n<function=wr", ("", [("read_file", {"path": "a"})])),
    ],
)
def test_generation_cut_off_inside_a_call_leaves_no_markup(text, expected):
    """The token limit ends generation inside a tag: what the model did not finish is dropped."""
    assert outcome(same_for_every_split(lambda p: without_ids(parse(p, truncated=True)), text)) == expected


def test_every_cut_off_keeps_content_clean_and_calls_whole():
    calls = call_xml("run", ("command", 'echo "</parameter>"'), ("env", '{"a": [1]}')) + "\n" + call_xml(
        "write_file", ("content", "x\n</parameter>y")
    ) + call_xml("read_file", ("path", "p"), wrapped=False)
    check_cut_offs(lambda pieces, truncated: parse(pieces, truncated=truncated), "Ok, two calls.\n", calls)


def test_every_prefix_closes_into_valid_arguments():
    text = "Ok.\n" + call_xml(
        "run", ("command", 'echo "</parameter>"'), ("env", '{"a": [1]}'), ("timeout", "12")
    ) + call_xml("write_file", ("content", "x\n</parameter>y"))
    for end in range(len(text) + 1):
        outcome(parse([text[:end]]))  # asserts the grammar and that every call's JSON parses


def test_string_values_stream_before_the_parameter_closes():
    parser = QwenXmlParser(TOOLS)
    events = parser.feed(WRITING)
    assert [type(e) for e in events] == [ToolCallStart, ToolCallArgsDelta]
    assert events[1].fragment == '{"content": "'
    assert parser.feed("line 1\nline 2") == [ToolCallArgsDelta(0, "line 1\\nline 2")]
    assert parser.feed("\n") == []  # maybe the format's newline before </parameter>
    assert parser.feed("</parameter>") == []  # closing only if a tag or the end follows
    assert parser.feed(" more") == [ToolCallArgsDelta(0, "\\n</parameter> more")]
    assert parser.feed("\n</parameter>\n</function>") == [
        ToolCallArgsDelta(0, '"}'),
        ToolCallEnd(0),
    ]
    assert parser.feed("\n</tool_call>") == [] and parser.finish() == []


def test_large_value_streams_in_pieces():
    parser = QwenXmlParser(TOOLS)
    parser.feed(WRITING)
    line = 'x = "<b>" + y  # 1 < 2\n'
    streamed = ""
    for _ in range(500):
        events = parser.feed(line)
        streamed += "".join(e.fragment for e in events if isinstance(e, ToolCallArgsDelta))
    assert json.loads('"' + streamed + '"') == (line * 500)[:-1]


def test_garbage_never_raises_and_calls_stay_valid_json():
    atoms = [
        "<tool_call>", "</tool_call>", "<function=run>", "<function=read_file>", "<function=nope>",
        "</function>", "<parameter=timeout>", "<parameter=command>", "<parameter=env>",
        "</parameter>", "<parameter=", "<function=", "<", ">", "\n", " ", "x", '"', "\\", "{", "1",
    ]
    check_random_garbage(parse, atoms)


def test_bad_tool_definitions_are_rejected():
    with pytest.raises(ValueError, match="no function name"):
        QwenXmlParser([{"type": "function", "function": {"parameters": {}}}])
    with pytest.raises(ValueError, match="must be a list"):
        QwenXmlParser({"type": "function"})


def test_round_trip_through_the_chat_template():
    arguments = [
        ("write_file", {"path": "a.py", "content": '\ndef f():\n    return "</parameter>"\n\n'}),
        ("run", {"command": "make", "timeout": 60, "background": False, "env": {"K": "v"},
                 "args": ["-j", 4], "ratio": 1.5e-3}),
        ("read_file", {"path": "naïve/文件.txt"}),
    ]
    message = {
        "role": "assistant",
        "content": "Writing the file.",
        "tool_calls": [
            {"type": "function", "function": {"name": name, "arguments": args}}
            for name, args in arguments
        ],
    }
    messages = [{"role": "user", "content": "go"}, message, {"role": "user", "content": "next"}]
    assert parse_all_ways(first_assistant_turn(messages)) == ("Writing the file.", arguments)
