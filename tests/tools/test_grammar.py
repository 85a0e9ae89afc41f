"""Grammars for response_format and tool_choice, driven by a random sampler over the real Qwen3.5
tokenizer: generation must terminate and parse into values that validate against the schemas."""

from __future__ import annotations

import itertools
import json
import random
import re

import numpy as np
import pytest

from engine.sampling import Sampler, SamplingParams
from tests.engine.grammar_helpers import IM_END, VOCAB_SIZE, compiler, encoding, generate
from tools.grammar import MAX_PARALLEL_CALLS, _text_without, json_schema_grammar, tool_call_grammar

CAP = 16  # max_string_chars in the random runs, so they stay short
SEEDS = range(3)

READ_FILE = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 500},
        "mode": {"type": "string", "enum": ["text", "binary"]},
        "ranges": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 3},
        "options": {
            "type": "object",
            "properties": {"follow": {"type": "boolean"}, "encoding": {"type": "string"}},
            "required": ["follow"],
            "additionalProperties": False,
        },
    },
    "required": ["path", "mode"],
}
RUN = {
    "type": "object",
    "properties": {
        "command": {"type": "string", "maxLength": 30},
        "timeout": {"type": ["number", "null"]},
    },
    "required": ["command"],
}
MARK = {
    "type": "object",
    "properties": {
        "at": {"$ref": "#/$defs/point"},
        "label": {"type": "string", "minLength": 2, "maxLength": 5},
    },
    "required": ["at", "label"],
    "$defs": {
        "point": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
            "required": ["x", "y"],
            "additionalProperties": False,
        }
    },
}
SCHEMAS = {"read_file": READ_FILE, "run": RUN, "mark": MARK, "ping": {"type": "object", "properties": {}}}
TOOLS = [{"type": "function", "function": {"name": n, "parameters": p}} for n, p in SCHEMAS.items()]

CALL = re.compile(r"<tool_call>\n<function=([^\s<>]+)>\n(.*?)</function>\n</tool_call>", re.S)
PARAMETER = re.compile(r"<parameter=([^\s<>]+)>\n(.*?)\n</parameter>\n", re.S)
HERMES_CALL = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.S)


def accepts(compiler, encoding, grammar: str, text: str) -> bool:
    """Whether `text` (special tokens as such) is a complete output of the grammar."""
    constraint = compiler.matcher(grammar)
    try:
        for token in encoding.encode(text, allowed_special="all"):
            constraint.advance(token)
    except ValueError:
        return False
    return constraint.can_stop()


def xml_call(function: str, **params: str) -> str:
    """A call as the Qwen3.5 chat template renders it."""
    body = "".join(f"<parameter={name}>\n{value}\n</parameter>\n" for name, value in params.items())
    return f"<tool_call>\n<function={function}>\n{body}</function>\n</tool_call>"


def schema_errors(value, schema: dict, root: dict | None = None) -> list[str]:
    """A small JSON-schema check (the keywords these tests use); empty when `value` is valid."""
    root = root or schema
    if "$ref" in schema:
        return schema_errors(value, root["$defs"][schema["$ref"].split("/")[-1]], root)
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    if kinds and not any(checks[kind](value) for kind in kinds):
        return [f"{value!r} is not of type {kinds}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{value!r} not in {schema['enum']}")
    if isinstance(value, (int, float)):
        if not schema.get("minimum", value) <= value <= schema.get("maximum", value):
            errors.append(f"{value!r} out of range")
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            errors.append(f"{value!r} has a bad length")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            errors.append("too many items")
        for item in value:
            errors += schema_errors(item, schema.get("items", {}), root)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors += [f"missing {key}" for key in schema.get("required", []) if key not in value]
        if schema.get("additionalProperties") is False:
            errors += [f"undeclared {key}" for key in value if key not in properties]
        for key, item in value.items():
            errors += schema_errors(item, properties.get(key, {}), root)
    return errors


def split_calls(text: str, pattern: re.Pattern) -> list[re.Match]:
    """The calls in `text`, checking it holds nothing else (calls may be joined by newlines)."""
    matches, position = [], 0
    for match in pattern.finditer(text):
        gap = text[position : match.start()]
        assert gap in (("", "\n", "\n\n") if matches else ("",)), text
        matches.append(match)
        position = match.end()
    assert matches and position == len(text), text
    return matches


def parse_xml_calls(text: str) -> list[tuple[str, dict]]:
    calls = []
    for match in split_calls(text, CALL):
        name, body = match.groups()
        assert PARAMETER.sub("", body) == "", f"stray text in {body!r}"
        properties = SCHEMAS[name]["properties"]
        arguments = {}
        for param, raw in PARAMETER.findall(body):
            is_text = properties.get(param, {"type": "string"}).get("type") == "string"
            arguments[param] = raw if is_text else json.loads(raw)
        calls.append((name, arguments))
    return calls


def parse_hermes_calls(text: str) -> list[tuple[str, dict]]:
    calls = []
    for match in split_calls(text, HERMES_CALL):
        call = json.loads(match.group(1))
        assert set(call) == {"name", "arguments"}
        calls.append((call["name"], call["arguments"]))
    return calls


def assert_valid(calls: list[tuple[str, dict]], names: set[str]) -> None:
    for name, arguments in calls:
        assert name in names
        schema = SCHEMAS[name]
        assert schema_errors(arguments, schema) == [], (name, arguments)
        if schema["properties"]:
            assert set(arguments) <= set(schema["properties"])


PARSERS = {"qwen_xml": parse_xml_calls, "hermes": parse_hermes_calls}


@pytest.mark.parametrize("fmt", ["qwen_xml", "hermes"])
@pytest.mark.parametrize("seed", SEEDS)
def test_required_calls_terminate_and_validate(compiler, encoding, fmt, seed):
    grammar = tool_call_grammar(TOOLS, "required", fmt=fmt, max_string_chars=CAP)
    calls = PARSERS[fmt](generate(compiler, encoding, grammar, seed))
    assert 1 <= len(calls) <= MAX_PARALLEL_CALLS
    assert_valid(calls, set(SCHEMAS))


@pytest.mark.parametrize("fmt", ["qwen_xml", "hermes"])
@pytest.mark.parametrize("seed", SEEDS)
def test_named_single_call_uses_the_named_function(compiler, encoding, fmt, seed):
    name = ["read_file", "mark"][seed % 2]
    grammar = tool_call_grammar(TOOLS, "named", name, parallel=False, fmt=fmt, max_string_chars=CAP)
    calls = PARSERS[fmt](generate(compiler, encoding, grammar, seed))
    assert [call_name for call_name, _ in calls] == [name]
    assert_valid(calls, {name})


@pytest.mark.parametrize("seed", SEEDS)
def test_auto_allows_plain_text_that_may_end(compiler, encoding, seed):
    constraint = compiler.matcher(tool_call_grammar(TOOLS, "auto", max_string_chars=CAP))
    sampler = Sampler(SamplingParams(seed=seed))
    rng = np.random.default_rng(seed)
    tokens: list[int] = []
    # Text, then EOS as soon as the text is whole (a token may end inside a UTF-8 character).
    while len(tokens) < 30 or not constraint.can_stop():
        assert len(tokens) < 40
        mask = constraint.mask()
        mask[[IM_END, encoding.encode_single_token("<tool_call>")]] = False
        token = sampler.sample(rng.standard_normal(VOCAB_SIZE, dtype=np.float32), mask=mask)
        constraint.advance(token)
        tokens.append(token)
    text = encoding.decode(tokens)
    assert len(text) > 30 and "<tool_call>" not in text
    constraint.advance(IM_END)
    assert constraint.is_done()


@pytest.mark.parametrize("fmt", ["qwen_xml", "hermes"])
@pytest.mark.parametrize("seed", SEEDS)
def test_auto_switches_to_enforced_calls_at_the_tool_call_token(compiler, encoding, fmt, seed):
    grammar = tool_call_grammar(TOOLS, "auto", fmt=fmt, max_string_chars=CAP)
    text_before = "Let me look.</think>\n\nReading the file.\n\n" if seed % 2 else "Reading it.\n\n"
    text = generate(compiler, encoding, grammar, seed, prefix=text_before + "<tool_call>")
    assert text.startswith(text_before)
    assert_valid(PARSERS[fmt](text[len(text_before) :]), set(SCHEMAS))


@pytest.mark.parametrize("seed", SEEDS)
def test_json_schema_output_parses_and_validates(compiler, encoding, seed):
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "rating": {"type": "integer", "minimum": 1, "maximum": 5},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4},
            "kind": {"enum": ["book", "film"]},
            "meta": {
                "type": "object",
                "properties": {"draft": {"type": "boolean"}, "score": {"type": ["number", "null"]}},
                "required": ["draft"],
                "additionalProperties": False,
            },
        },
        "required": ["title", "rating", "kind"],
        "additionalProperties": False,
    }
    text = generate(compiler, encoding, json_schema_grammar(schema, max_string_chars=CAP), seed)
    assert schema_errors(json.loads(text), schema) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_json_object_output_is_a_json_object(compiler, encoding, seed):
    # Only strings are capped: nesting is a random walk, so shorter strings keep the run short.
    text = generate(compiler, encoding, json_schema_grammar(None, max_string_chars=8), seed)
    assert isinstance(json.loads(text), dict)


def test_json_object_without_a_cap_is_any_object(compiler, encoding):
    grammar = json_schema_grammar(None, max_string_chars=None)
    assert accepts(compiler, encoding, grammar, '{"k": [1, {"deep": "x" }], "n": null}')
    assert not accepts(compiler, encoding, grammar, "[1, 2]")


def test_json_whitespace_is_bounded(compiler, encoding):
    grammar = json_schema_grammar({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert accepts(compiler, encoding, grammar, '{"a":1}')
    assert accepts(compiler, encoding, grammar, '{"a": 1}')
    assert accepts(compiler, encoding, grammar, '{\n  "a": 1\n}')
    assert not accepts(compiler, encoding, grammar, "{\n" + " " * 40 + '"a": 1\n}')
    assert not accepts(compiler, encoding, grammar, '{"a":   1}')


def test_template_rendered_calls_are_accepted(compiler, encoding):
    grammar = tool_call_grammar(TOOLS, "required")
    read = xml_call("read_file", path="src/main.py", mode="text", ranges="[1, 20]")
    run = xml_call("run", command="ls -la")
    assert accepts(compiler, encoding, grammar, read)
    assert accepts(compiler, encoding, grammar, read + "\n" + run)
    tricky = "line one\n  a </param b</parameter c <<</p\n\n<"
    assert accepts(compiler, encoding, grammar, xml_call("read_file", path=tricky, mode="text"))
    hermes = '<tool_call>\n{"name": "run", "arguments": {"command": "ls", "timeout": 2.5}}\n</tool_call>'
    assert accepts(compiler, encoding, tool_call_grammar(TOOLS, "required", fmt="hermes"), hermes)
    anthropic_style = [{"name": "run", "input_schema": RUN}]
    assert accepts(compiler, encoding, tool_call_grammar(anthropic_style, "required"), run)


def test_calls_breaking_the_schema_are_refused(compiler, encoding):
    grammar = tool_call_grammar(TOOLS, "required")
    assert accepts(compiler, encoding, grammar, xml_call("read_file", path="a.py", mode="text"))
    refused = [
        xml_call("read_file", path="a.py"),  # required `mode` missing
        xml_call("read_file", mode="text", path="a.py"),  # not in schema order
        xml_call("read_file", path="a</parameter>b", mode="text"),
        xml_call("read_file", path="a.py", mode="audio"),
        xml_call("read_file", path="a.py", mode="text", extra="x"),
        xml_call("read_file", path="a.py", limit="0", mode="text"),
        xml_call("read_file", path="a.py", mode="text") + " trailing text",
        xml_call("mark", at='{"x": 1}', label="ab"),  # the $ref'd object needs y
    ]
    for text in refused:
        assert not accepts(compiler, encoding, grammar, text), text
    spelled = encoding.encode(xml_call("ping"), disallowed_special=())  # <tool_call> as plain text
    with pytest.raises(ValueError, match="not allowed"):
        compiler.matcher(grammar).advance(spelled[0])


def test_parallel_calls_are_capped_and_can_be_turned_off(compiler, encoding):
    ping = xml_call("ping")
    parallel = tool_call_grammar(TOOLS, "required")
    assert accepts(compiler, encoding, parallel, "\n".join([ping] * MAX_PARALLEL_CALLS))
    assert not accepts(compiler, encoding, parallel, "\n".join([ping] * (MAX_PARALLEL_CALLS + 1)))
    single = tool_call_grammar(TOOLS, "required", parallel=False)
    assert accepts(compiler, encoding, single, ping)
    assert not accepts(compiler, encoding, single, ping + "\n" + ping)


def test_named_mode_refuses_other_functions(compiler, encoding):
    grammar = tool_call_grammar(TOOLS, "named", name="run")
    assert accepts(compiler, encoding, grammar, xml_call("run", command="ls"))
    assert not accepts(compiler, encoding, grammar, xml_call("ping"))
    assert not accepts(compiler, encoding, grammar, "Sure.")


def test_auto_mode_refuses_text_after_calls(compiler, encoding):
    grammar = tool_call_grammar(TOOLS, "auto")
    assert accepts(compiler, encoding, grammar, "Checking.\n\n" + xml_call("ping"))
    assert accepts(compiler, encoding, grammar, "thinking</think>\n\nJust text.")
    assert not accepts(compiler, encoding, grammar, xml_call("ping") + "\nDone.")


def test_text_parameters_honour_their_length_bounds(compiler, encoding):
    grammar = tool_call_grammar(TOOLS, "named", name="mark")
    at = '{"x": 1, "y": -2}'
    assert accepts(compiler, encoding, grammar, xml_call("mark", at=at, label="abcde"))
    assert not accepts(compiler, encoding, grammar, xml_call("mark", at=at, label="a"))
    assert not accepts(compiler, encoding, grammar, xml_call("mark", at=at, label="abcdef"))


PATCH = [{"type": "function", "function": {"name": "apply_patch", "parameters": {
    "type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}}}]  # fmt: skip
PATCH_LARK = 'start: "*** Begin\\n" line{1,3} "*** End"\nline: /[+-]/ WORD "\\n"\nWORD: /[a-z ]{1,12}/\n'


@pytest.mark.parametrize("mode", ["named", "auto"])
def test_a_text_parameter_can_follow_a_lark_grammar(compiler, encoding, mode):
    grammar = tool_call_grammar(PATCH, mode, name="apply_patch" if mode == "named" else None,
                                text_grammars={("apply_patch", "input"): ("lark", PATCH_LARK)})  # fmt: skip
    assert json.loads(grammar)["grammars"][1]["lark_grammar"] == PATCH_LARK  # nested, as given
    assert accepts(compiler, encoding, grammar, xml_call("apply_patch", input="*** Begin\n+add it\n-drop\n*** End"))
    assert not accepts(compiler, encoding, grammar, xml_call("apply_patch", input="*** Begin\n*** End"))
    assert not accepts(compiler, encoding, grammar, xml_call("apply_patch", input="+add it"))
    if mode == "named":
        for seed in range(3):
            text = generate(compiler, encoding, grammar, seed)
            value = PARAMETER.search(text).group(2)
            assert re.fullmatch(r"\*\*\* Begin\n(?:[+-][a-z ]{1,12}\n){1,3}\*\*\* End", value), value


def test_a_text_parameter_can_follow_a_regex(compiler, encoding):
    grammar = tool_call_grammar(PATCH, "required", text_grammars={("apply_patch", "input"): ("regex", r"[0-9]{2,3}")})
    assert accepts(compiler, encoding, grammar, xml_call("apply_patch", input="123"))
    assert not accepts(compiler, encoding, grammar, xml_call("apply_patch", input="1234"))
    assert not accepts(compiler, encoding, grammar, xml_call("apply_patch", input="ab"))
    with pytest.raises(ValueError, match="syntax"):
        tool_call_grammar(PATCH, "required", text_grammars={("apply_patch", "input"): ("ebnf", "x")})


def test_raw_text_regex_refuses_exactly_the_texts_containing_the_word():
    # Every short text for a short word; random near misses for the real one.
    short = ("".join(chars) for n in range(8) for chars in itertools.product("</x>a", repeat=n))
    rng = random.Random(0)
    pieces = ["<", "/", "p", "parameter", ">", "</param", "</parameter>", "x", "\n"]
    near_misses = ("".join(rng.choices(pieces, k=rng.randint(0, 8))) for _ in range(20000))
    for word, texts in (("</x>", short), ("</parameter>", near_misses)):
        regex = re.compile("(?s:%s)" % _text_without(word, None))
        for text in texts:
            assert bool(regex.fullmatch(text)) == (word not in text), (word, text)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tools": [], "mode": "required"}, "non-empty"),
        ({"tools": TOOLS, "mode": "named", "name": "nope"}, "nope"),
        ({"tools": TOOLS, "mode": "named"}, "None"),
        ({"tools": TOOLS, "mode": "required", "name": "run"}, "named"),
        ({"tools": TOOLS, "mode": "none"}, "mode"),
        ({"tools": TOOLS, "mode": "required", "fmt": "xml"}, "fmt"),
        ({"tools": TOOLS, "mode": "required", "max_string_chars": 0}, "max_string_chars"),
        ({"tools": TOOLS + TOOLS[:1], "mode": "required"}, "twice"),
        ({"tools": [{"name": "bad name", "parameters": {}}], "mode": "required"}, "bad name"),
        ({"tools": [{"name": "f", "parameters": {"type": "array"}}], "mode": "required"}, "object"),
        ({"tools": [{"name": "f", "parameters": {"required": ["x"]}}], "mode": "required"}, "required"),
    ],
)
def test_bad_tool_requests_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tool_call_grammar(**kwargs)


def test_bad_response_schemas_raise(compiler):
    with pytest.raises(ValueError, match="object"):
        json_schema_grammar(["not", "a", "schema"])
    with pytest.raises(ValueError, match="invalid grammar"):
        compiler.matcher(json_schema_grammar({"type": "string", "format": "no-such-format"}))


# -- schemas are enforced exactly or refused -------------------------------------------------------


def one_tool(parameters: dict, name: str = "lookup") -> list[dict]:
    return [{"type": "function", "function": {"name": name, "parameters": parameters}}]


POINT = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"], "additionalProperties": False}


@pytest.mark.parametrize("fmt", ["qwen_xml", "hermes"])
def test_a_root_ref_is_followed_and_enforced(compiler, encoding, fmt):
    """Before: the XML grammar saw no properties and let any parameter through."""
    tools = one_tool({"$ref": "#/$defs/Point", "$defs": {"Point": POINT}})
    grammar = tool_call_grammar(tools, "required", fmt=fmt)
    if fmt == "qwen_xml":
        good, bad = xml_call("lookup", x="3"), xml_call("lookup", evil="rm -rf /")
    else:
        good, bad = (HERMES_CALL_OF("lookup", args) for args in ({"x": 3}, {"evil": "rm -rf /"}))
    assert accepts(compiler, encoding, grammar, good) and not accepts(compiler, encoding, grammar, bad)


def HERMES_CALL_OF(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


@pytest.mark.parametrize("fmt", ["qwen_xml", "hermes"])
@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"$ref": "#/$defs/Missing", "$defs": {"Point": POINT}}, r"lookup.*'#/\$defs/Missing' does not resolve"),
        ({"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}}, r"lookup.*refers to itself"),
        ({"$ref": "https://example.com/schema.json"}, r"lookup.*not a local reference"),
        ({"type": "object", "properties": {"ids": {"type": "array", "uniqueItems": True}}}, r"lookup.*uniqueItems"),
        ({"type": "object", "properties": {"id": {"type": "integer", "not": {"const": 1}}}}, r"lookup.*not"),
        ({"type": "object", "properties": {"q": {"type": "string", "pattern": "^(?=a)b$"}}}, r"lookup.*look-around"),
        ({"type": "object", "properties": {"q": {"type": "string", "pattern": "(a)\\1"}}}, r"lookup.*backreference"),
    ],
)
def test_what_cannot_be_enforced_is_refused_naming_the_tool(fmt, parameters, message):
    with pytest.raises(ValueError, match=message):
        tool_call_grammar(one_tool(parameters), "required", fmt=fmt)


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"anyOf": [POINT, {"type": "object", "properties": {"y": {"type": "string"}}}]}, "anyOf at the root"),
        ({"type": "object", "additionalProperties": {"type": "integer"}}, "additionalProperties"),
        ({"type": "object", "minProperties": 1, "properties": {"x": {"type": "string"}}}, "minProperties at the root"),
        ({"type": "object", "properties": {"q": {"type": "string", "contentEncoding": "base64"}}},
         "parameter q: contentEncoding"),
        ({"type": "object", "properties": {"q": {"anyOf": [{"type": "string"}, {"type": "string", "maxLength": 3}]}}},
         "parameter q: 2 branches"),
    ],
)  # fmt: skip
def test_xml_format_refuses_what_raw_text_cannot_carry(parameters, message):
    with pytest.raises(ValueError, match=f"function lookup.*{message}"):
        tool_call_grammar(one_tool(parameters), "required")


@pytest.mark.parametrize("pattern", ["^[a-z]+-[0-9]{2}$", "[0-9]{2}", "^a/b"])
def test_text_parameter_patterns_are_enforced(compiler, encoding, pattern):
    """Before: a text parameter's pattern was not enforced at all. JSON Schema patterns search
    (unanchored unless ^ or $ say so)."""
    optional = {"anyOf": [{"type": "string", "pattern": pattern}, {"type": "null"}]}
    grammar = tool_call_grammar(one_tool({"type": "object", "properties": {"q": optional}}), "required")
    for text in ["abc-12", "x 12 y", "a/bc", "a/b\n12", "ABC", "12", "abc-123", ""]:
        expected = re.search(pattern, text) is not None
        assert accepts(compiler, encoding, grammar, xml_call("lookup", q=text)) == expected, text


def test_tool_formats_are_enforced_when_known_and_annotations_otherwise(compiler, encoding):
    properties = {"n": {"type": "integer", "format": "int32"}, "when": {"type": "array", "items": {
        "type": "string", "format": "date"}}}  # fmt: skip
    grammar = tool_call_grammar(one_tool({"type": "object", "properties": properties}), "required")
    assert accepts(compiler, encoding, grammar, xml_call("lookup", n="5", when='["2024-01-31"]'))
    assert not accepts(compiler, encoding, grammar, xml_call("lookup", n="5", when='["soon"]'))
