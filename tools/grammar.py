"""llguidance grammars (Lark text) that enforce response_format and tool_choice while decoding.

OpenAI asks for these to be enforced, not prompted (serving-anchors.md 3.1). The grammars follow
the output formats the parsers read:

- Qwen XML (Qwen3.5 chat template, parsed by tools/qwen_xml.py):
  `<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE\\n</parameter>\\n...</function>\\n</tool_call>`.
  A parameter is raw text when tools.schema.ToolSchemas says it is a string (the parser's rule),
  otherwise JSON of its schema. Raw text cannot contain `</parameter>`; of a text parameter's
  schema only enum/const and minLength/maxLength (written on the property itself) are enforced.
  Parameters come in the order of `properties`; required ones must appear, undeclared ones may
  not (unless the schema declares no properties at all).
- Hermes (Qwen2.5/Qwen3, tools/hermes.py): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.
  The arguments object admits no undeclared keys unless its schema says otherwise.

`<tool_call>`, `</tool_call>` and `</think>` are special tokens and are named as such in the
grammar. The end of the output is the tokenizer's EOS (<|im_end|>), which the matcher allows once
the grammar is complete.

Weak models must still terminate, so JSON whitespace is bounded (at each place JSON allows it:
one space, or a newline and up to 32 spaces/tabs) and every string, raw or JSON, is capped at
`max_string_chars` unless its schema sets maxLength. Raw XML values count that cap in regex steps:
one per character, except around `<`, where a step reads up to `</parameter` plus one character
(or a run of `<`-pieces that all start like `</parameter>`; no legitimate text is refused).
Tool schemas compile leniently (unsupported keywords are ignored: a client cannot change its
tools); a response_format schema with unsupported keywords is rejected when compiled.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from tools.schema import ToolSchemas, name_and_parameters

DEFAULT_MAX_STRING_CHARS = 32768
MAX_PARALLEL_CALLS = 8
MAX_UNDECLARED_PARAMETERS = 16  # for functions whose schema declares no properties

PARAMETER_CLOSE = "</parameter>"
PARAMETER_END = "\n</parameter>\n"  # the template's newline before the tag and after it
_JSON_OPTIONS = {"whitespace_pattern": r"(?:\n[ \t]{0,32}| )?"}
_TOOL_JSON_OPTIONS = {**_JSON_OPTIONS, "lenient": True}
# With these an object's keys are not all in its own `properties`: closing it would refuse some.
_OPEN_ENDED = frozenset({"allOf", "anyOf", "oneOf", "$ref", "patternProperties"})
_TAG_NAME = re.compile(r"[^\s<>]+")  # what fits in <function=...> and <parameter=...>
_REGEX_META = frozenset("\\.+*?()|[]{}^$/-")
# Schema keywords holding subschemas: by name (maps), or directly / in a list.
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SUBSCHEMAS = ("items", "additionalProperties", "contains", "prefixItems", "anyOf", "oneOf", "allOf")


def json_schema_grammar(schema: dict | None, max_string_chars: int | None = DEFAULT_MAX_STRING_CHARS) -> str:
    """Grammar for response_format: JSON matching `schema`, or any JSON object when None."""
    _check_cap(max_string_chars)
    if schema is None:
        schema = _any_json_object(max_string_chars)
    elif not isinstance(schema, dict):
        raise ValueError(f"a JSON schema must be an object, got {type(schema).__name__}")
    return "start: " + _json_value(schema, _JSON_OPTIONS, max_string_chars) + "\n"


def tool_call_grammar(
    tools: list[dict],
    mode: Literal["required", "named", "auto"],
    name: str | None = None,
    parallel: bool = True,
    fmt: Literal["qwen_xml", "hermes"] = "qwen_xml",
    max_string_chars: int | None = DEFAULT_MAX_STRING_CHARS,
) -> str:
    """Grammar for tool_choice.

    required: one call (up to MAX_PARALLEL_CALLS with `parallel`) and nothing else.
    named: the same, calling only function `name`.
    auto: free text, optionally after reasoning closed by </think>; once the model emits the
    <tool_call> token the calls are enforced and nothing may follow them.
    """
    _check_cap(max_string_chars)
    functions = _declared_functions(tools)
    if mode == "named":
        if name not in functions:
            raise ValueError(f"tool_choice names function {name!r}, which is not among the tools")
        functions = {name: functions[name]}
    elif mode not in ("required", "auto"):
        raise ValueError(f"mode must be 'required', 'named' or 'auto', got {mode!r}")
    elif name is not None:
        raise ValueError("a function name is only used with mode='named'")
    if fmt == "qwen_xml":
        writer: _QwenXmlRules | _HermesRules = _QwenXmlRules(ToolSchemas(tools), max_string_chars)
    elif fmt == "hermes":
        writer = _HermesRules(max_string_chars)
    else:
        raise ValueError(f"fmt must be 'qwen_xml' or 'hermes', got {fmt!r}")
    bodies = [writer.function(f"fn{i}", fname, params) for i, (fname, params) in enumerate(functions.items())]
    more_calls = f" (CALL_SEP? call){{0,{MAX_PARALLEL_CALLS - 1}}}" if parallel else ""
    lines = [
        "start: (TEXT </think>)? TEXT calls?" if mode == "auto" else "start: calls",
        "calls: call" + more_calls,
        'call: <tool_call> "\\n" (' + " | ".join(bodies) + ') "\\n" </tool_call>',
        r"CALL_SEP: /\n{1,2}/",
        r"TEXT: /(?s:.*)/",
        *writer.rules,
    ]
    return "\n".join(lines) + "\n"


class _HermesRules:
    """Each function is one JSON object {"name": <const>, "arguments": <its parameters schema>}."""

    def __init__(self, max_string_chars: int | None) -> None:
        self._max_chars = max_string_chars
        self.rules: list[str] = []

    def function(self, rule: str, name: str, params: dict) -> str:
        arguments = {k: v for k, v in params.items() if k not in ("$defs", "definitions")}
        if "properties" in arguments and not _OPEN_ENDED & arguments.keys():
            # Like the XML format (and OpenAI's strict mode): no arguments beyond those declared.
            arguments.setdefault("additionalProperties", False)
        call = {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": arguments},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        call = _with_definitions(call, params)
        self.rules.append(f"{rule}: " + _json_value(call, _TOOL_JSON_OPTIONS, self._max_chars))
        return rule


class _QwenXmlRules:
    """`<function=NAME>` and the parameters in schema order, each raw text or JSON.

    Raw text and the `\\n</parameter>\\n` after it form one terminal: llguidance's lexemes are
    greedy, so a separate text lexeme would swallow the newline the closing tag needs. As the
    text cannot contain `</parameter>`, the terminal ends exactly at the first closing tag.
    """

    def __init__(self, schemas: ToolSchemas, max_string_chars: int | None) -> None:
        self._schemas = schemas
        self._max_chars = max_string_chars
        self.rules = [
            f"PARAM_END: {_literal(PARAMETER_END)}",
            f"RAW_TEXT: /{_text_without(PARAMETER_CLOSE, max_string_chars)}/",
            "RAW: RAW_TEXT PARAM_END",
            r"PARAM_NAME: /[^\s<>]{1,64}/",
        ]

    def function(self, rule: str, name: str, params: dict) -> str:
        _check_tag_name(name, "function name")
        properties, required = _properties(params), _required(params)
        items = []
        for index, (param, schema) in enumerate(properties.items()):
            _check_tag_name(param, f"parameter name of {name}")
            value = self._value(f"{rule}_{index}", name, param, schema, params)
            opening = _literal(f"<parameter={param}>\n")
            self.rules.append(f"{rule}_{index}: {opening} {value}")
            items.append(f"{rule}_{index}" + ("" if param in required else "?"))
        if not properties and params.get("additionalProperties") is not False:
            self.rules.append(f'{rule}_any: "<parameter=" PARAM_NAME ">\\n" RAW')
            items.append(f"{rule}_any{{0,{MAX_UNDECLARED_PARAMETERS}}}")
        opening = _literal(f"<function={name}>\n")
        self.rules.append(f'{rule}: {opening} {" ".join(items)} "</function>"')
        return rule

    def _value(self, rule: str, function: str, param: str, schema: Any, params: dict) -> str:
        """The grammar of one parameter's value followed by its closing tag."""
        schema = schema if isinstance(schema, dict) else {}
        if not self._schemas.is_string(function, param):
            value = _json_value(_with_definitions(schema, params), _TOOL_JSON_OPTIONS, self._max_chars)
            self.rules.append(f"{rule}_json: {value}")
            return f"{rule}_json PARAM_END"
        choices = schema.get("enum", [schema["const"]] if "const" in schema else None)
        if isinstance(choices, list):
            texts = [choice for choice in choices if isinstance(choice, str)]
            if not texts:
                raise ValueError(f"function {function}: text parameter {param} allows no string value")
            return "(" + " | ".join(_literal(text) for text in texts) + ") PARAM_END"
        if "minLength" in schema or "maxLength" in schema:
            high = _length(schema, "maxLength", self._max_chars)
            length = f"{{{_length(schema, 'minLength', 0)},{'' if high is None else high}}}"
            terminal = rule.upper()
            self.rules.append(f"{terminal}_TEXT: /(?s:.{length})/ & /{_text_without(PARAMETER_CLOSE, None)}/")
            self.rules.append(f"{terminal}: {terminal}_TEXT PARAM_END")
            return terminal
        return "RAW"


def _declared_functions(tools: list[dict]) -> dict[str, dict]:
    if not isinstance(tools, list) or not tools:
        raise ValueError("tool calls need a non-empty list of tools")
    functions: dict[str, dict] = {}
    for number, tool in enumerate(tools):
        name, params = name_and_parameters(tool, number)
        if name in functions:
            raise ValueError(f"function {name!r} is declared twice")
        if params.get("type", "object") != "object":
            raise ValueError(f"function {name}: parameters must be an object schema, not {params['type']!r}")
        if not all(isinstance(param, str) for param in _required(params)):
            raise ValueError(f"function {name}: required must list parameter names, got {params['required']!r}")
        missing = [param for param in _required(params) if param not in _properties(params)]
        if missing:
            raise ValueError(f"function {name}: required parameters {missing} are not in its properties")
        functions[name] = params
    return functions


def _properties(params: dict) -> dict:
    properties = params.get("properties")
    return properties if isinstance(properties, dict) else {}


def _required(params: dict) -> list:
    required = params.get("required")
    return required if isinstance(required, list) else []


def _length(schema: dict, key: str, default: int | None) -> int | None:
    """A string schema's minLength or maxLength, which must be a non-negative integer."""
    value = schema.get(key, default)
    if value is None or isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    raise ValueError(f"{key} must be a non-negative integer, got {value!r}")


def _json_value(schema: dict, options: dict, max_chars: int | None) -> str:
    """Inline `%json` of `schema` with our compile options (replacing any the schema carries)."""
    capped = {**_cap_strings(schema, max_chars), "x-guidance": options}
    return "%json " + json.dumps(capped, ensure_ascii=False)


def _cap_strings(schema: Any, max_chars: int | None) -> Any:
    """Copy of `schema` in which string schemas without maxLength, enum or const get one."""
    if max_chars is None or not isinstance(schema, dict):
        return schema
    capped = dict(schema)
    kind = capped.get("type")
    is_string = kind == "string" or isinstance(kind, list) and "string" in kind
    if is_string and not {"maxLength", "enum", "const"} & capped.keys():
        capped["maxLength"] = max(max_chars, _length(capped, "minLength", 0))
    for key in _SUBSCHEMA_MAPS:
        if isinstance(capped.get(key), dict):
            capped[key] = {k: _cap_strings(v, max_chars) for k, v in capped[key].items()}
    for key in _SUBSCHEMAS:
        value = capped.get(key)
        if isinstance(value, list):
            capped[key] = [_cap_strings(v, max_chars) for v in value]
        elif isinstance(value, dict):
            capped[key] = _cap_strings(value, max_chars)
    return capped


def _any_json_object(max_chars: int | None) -> dict:
    """Schema of any JSON object; with a cap, keys and strings at every depth are capped too."""
    if max_chars is None:
        return {"type": "object"}
    value = {"$ref": "#/$defs/value"}
    json_object = {
        "type": "object",
        "patternProperties": {f"^[\\s\\S]{{0,{max_chars}}}$": value},
        "additionalProperties": False,
    }
    string = {"type": "string", "maxLength": max_chars}
    others = [{"type": "number"}, {"type": "boolean"}, {"type": "null"}, {"type": "array", "items": value}]
    any_value = {"anyOf": [string, *others, json_object]}
    return {**json_object, "$defs": {"value": any_value}}


def _with_definitions(schema: dict, root: dict) -> dict:
    """`schema` made self-contained: the root's `$defs`/`definitions`, which its local `$ref`s
    point into, are copied next to it."""
    merged = dict(schema)
    for key in ("$defs", "definitions"):
        if isinstance(root.get(key), dict):
            merged[key] = {**root[key], **(schema.get(key) or {})}
    return merged


def _text_without(word: str, max_steps: int | None) -> str:
    """Regex (a Lark /.../ body) of the texts that do not contain `word`, whose first character
    must not recur in it. Split at that character, such a text is pieces none of which starts
    with the rest of `word`. A counted step reads a character other than the first, or any run
    of pieces that are proper prefixes of the rest followed by one that leaves the rest early."""
    if word[0] in word[1:]:
        raise ValueError(f"{word!r}: its first character must not recur in it")
    first, rest = _regex_char(word[0]), word[1:]
    prefix = ""  # a proper prefix of `rest`, nested: (?:a(?:b)?)?
    mismatch = f"[^{_regex_char(rest[-1])}{first}]"  # a prefix of `rest`, then a character off it
    for char in reversed(rest[:-1]):
        prefix = f"(?:{_regex_char(char)}{prefix})?"
        mismatch = f"(?:[^{_regex_char(char)}{first}]|{_regex_char(char)}{mismatch})"
    prefix_pieces = f"(?:{first}{prefix})*"
    steps = "*" if max_steps is None else f"{{0,{max_steps}}}"
    return f"(?:[^{first}]|{prefix_pieces}{first}{mismatch}){steps}{prefix_pieces}"


def _regex_char(char: str) -> str:
    return "\\" + char if char in _REGEX_META else char


def _literal(text: str) -> str:
    """A Lark string literal."""
    return json.dumps(text, ensure_ascii=False)


def _check_cap(max_string_chars: int | None) -> None:
    if max_string_chars is not None and (not isinstance(max_string_chars, int) or max_string_chars < 1):
        raise ValueError(f"max_string_chars must be a positive integer or None, got {max_string_chars!r}")


def _check_tag_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not _TAG_NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} cannot be written in a tag (empty, or has whitespace, < or >)")
