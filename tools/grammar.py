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
Schemas are enforced exactly or refused (ValueError naming the tool, parameter and keyword; the
daemon answers 400): a keyword or `pattern` regex llguidance cannot enforce, a root `$ref` that
does not resolve, and, in the Qwen XML format, root keywords other than properties/required/
additionalProperties (true or false) and text-parameter keywords other than enum, const,
minLength, maxLength and pattern (`format` on raw text is an annotation). In tool schemas a
`format` llguidance does not know is an annotation too (as JSON Schema has it) and is dropped;
known ones are enforced on JSON values. response_format refuses unknown formats.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Literal

import llguidance

from tools.schema import ANNOTATIONS, ToolSchemas, name_and_parameters, resolve_local_ref

TextGrammar = tuple[str, str]  # syntax ("lark" | "regex"), definition
DEFAULT_MAX_STRING_CHARS = 32768
MAX_PARALLEL_CALLS = 8
MAX_UNDECLARED_PARAMETERS = 16  # for functions whose schema declares no properties

PARAMETER_CLOSE = "</parameter>"
PARAMETER_END = "\n</parameter>\n"  # the template's newline before the tag and after it
_JSON_OPTIONS = {"whitespace_pattern": r"(?:\n[ \t]{0,32}| )?"}
# What the Qwen XML format can enforce at the root of a function's parameters and on a raw text value.
_XML_ROOT_KEYWORDS = ANNOTATIONS | {"type", "properties", "required", "additionalProperties", "$defs", "definitions"}
_RAW_TEXT_KEYWORDS = ANNOTATIONS | {"type", "enum", "const", "minLength", "maxLength", "pattern", "format"}
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
    text_grammars: dict[tuple[str, str], TextGrammar] | None = None,
) -> str:
    """Grammar for tool_choice.

    required: one call (up to MAX_PARALLEL_CALLS with `parallel`) and nothing else.
    named: the same, calling only function `name`.
    auto: free text, optionally after reasoning closed by </think>; once the model emits the
    <tool_call> token the calls are enforced and nothing may follow them.
    text_grammars: (function, text parameter) -> the grammar its raw value follows (Responses'
    free-form tools; Qwen XML only). A Lark one is a nested grammar, which makes the result
    llguidance's JSON form instead of Lark text.
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
        writer: _QwenXmlRules | _HermesRules = _QwenXmlRules(ToolSchemas(tools), max_string_chars, text_grammars)
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
    grammar = "\n".join(lines) + "\n"
    nested = getattr(writer, "nested", {})
    if not nested:
        return grammar
    named = [{"name": name, "lark_grammar": definition} for name, definition in nested.items()]
    return json.dumps({"grammars": [{"lark_grammar": grammar}, *named]})


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
        self.rules.append(f"{rule}: " + _json_value(call, _JSON_OPTIONS, self._max_chars, f"function {name}"))
        return rule


class _QwenXmlRules:
    """`<function=NAME>` and the parameters in schema order, each raw text or JSON.

    Raw text and the `\\n</parameter>\\n` after it form one terminal: llguidance's lexemes are
    greedy, so a separate text lexeme would swallow the newline the closing tag needs. As the
    text cannot contain `</parameter>`, the terminal ends exactly at the first closing tag.
    """

    def __init__(
        self, schemas: ToolSchemas, max_string_chars: int | None, text_grammars: dict | None = None
    ) -> None:
        self._schemas = schemas
        self._max_chars = max_string_chars
        self._text_grammars: dict[tuple[str, str], TextGrammar] = text_grammars or {}
        self.nested: dict[str, str] = {}  # name -> Lark text of the nested grammars `@name` refers to
        self.rules = [
            f"PARAM_END: {_literal(PARAMETER_END)}",
            f"RAW_TEXT: /{_text_without(PARAMETER_CLOSE, max_string_chars)}/",
            "RAW: RAW_TEXT PARAM_END",
            r"PARAM_NAME: /[^\s<>]{1,64}/",
        ]

    def function(self, rule: str, name: str, params: dict) -> str:
        _check_tag_name(name, "function name")
        unenforced = sorted(set(params) - _XML_ROOT_KEYWORDS)
        if unenforced or not isinstance(params.get("additionalProperties", False), bool):
            keyword = unenforced[0] if unenforced else "additionalProperties (a schema)"
            raise ValueError(f"function {name}: {keyword} at the root of its parameters cannot be enforced "
                             "in the Qwen XML tool-call format")  # fmt: skip
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
        where = f"function {function}, parameter {param}"
        if not self._schemas.is_string(function, param):
            value = _json_value(_with_definitions(schema, params), _JSON_OPTIONS, self._max_chars, where)
            self.rules.append(f"{rule}_json: {value}")
            return f"{rule}_json PARAM_END"
        custom = self._text_grammars.get((function, param))
        if custom is not None:
            return self._custom_value(rule, custom)
        schema = _raw_text_schema(schema, params, where)
        choices = schema.get("enum", [schema["const"]] if "const" in schema else None)
        if isinstance(choices, list):
            texts = [choice for choice in choices if isinstance(choice, str)]
            if not texts:
                raise ValueError(f"function {function}: text parameter {param} allows no string value")
            return "(" + " | ".join(_literal(text) for text in texts) + ") PARAM_END"
        if {"minLength", "maxLength", "pattern"} & schema.keys():
            high = _length(schema, "maxLength", self._max_chars)
            length = f"{{{_length(schema, 'minLength', 0)},{'' if high is None else high}}}"
            terminal = rule.upper()
            pattern = f" & /{_searched(schema['pattern'], where)}/" if "pattern" in schema else ""
            text = f"/(?s:.{length})/{pattern} & /{_text_without(PARAMETER_CLOSE, None)}/"
            self.rules.append(f"{terminal}_TEXT: {text}")
            self.rules.append(f"{terminal}: {terminal}_TEXT PARAM_END")
            return terminal
        return "RAW"

    def _custom_value(self, rule: str, grammar: TextGrammar) -> str:
        syntax, definition = grammar
        if syntax == "lark":
            self.nested[f"{rule}_grammar"] = definition
            return f"@{rule}_grammar PARAM_END"
        if syntax != "regex":
            raise ValueError(f"a text grammar's syntax is 'lark' or 'regex', not {syntax!r}")
        terminal = rule.upper()
        without_close = _text_without(PARAMETER_CLOSE, None)
        self.rules.append(f"{terminal}_TEXT: /(?:{definition})/ & /{without_close}/")
        self.rules.append(f"{terminal}: {terminal}_TEXT PARAM_END")
        return terminal


def _raw_text_schema(schema: dict, root: dict, where: str) -> dict:
    """The schema a text parameter's raw value must meet: `$ref`s followed, and of an anyOf/oneOf
    the one branch that admits strings. ValueError where raw text cannot enforce it."""
    seen: set[str] = set()
    while True:
        ref = schema.get("$ref")
        branches = schema.get("anyOf", schema.get("oneOf"))
        if isinstance(ref, str) and ref not in seen and not set(schema) - {"$ref", *ANNOTATIONS}:
            seen.add(ref)
            schema = resolve_local_ref(ref, root, where)
        elif isinstance(branches, list) and not set(schema) - {"anyOf", "oneOf", *ANNOTATIONS}:
            texts = [b for b in branches if isinstance(b, dict) and ToolSchemas.admits_string(b, root)]
            if len(texts) != 1:
                raise ValueError(f"{where}: {len(texts)} branches of its anyOf/oneOf admit text; "
                                 "the Qwen XML format can enforce one")  # fmt: skip
            schema = texts[0]
        else:
            break
    unenforced = sorted(set(schema) - _RAW_TEXT_KEYWORDS)
    if unenforced:
        raise ValueError(f"{where}: {unenforced[0]} cannot be enforced on a text parameter in the Qwen XML format")
    return schema


def _searched(pattern: Any, where: str) -> str:
    """A Lark regex body of the texts in which JSON Schema `pattern` finds a match (it is not
    anchored unless it starts with ^ / ends with $); ValueError where llguidance cannot run it."""
    if not isinstance(pattern, str):
        raise ValueError(f"{where}: pattern must be a string, got {type(pattern).__name__}")
    body = re.sub(r"(?<!\\)((?:\\\\)*)/", r"\1\\/", pattern)  # / ends a Lark regex
    start = "" if body.startswith("^") else "(?s:.*)"
    end = "" if re.search(r"(?<!\\)(?:\\\\)*\$$", body) else "(?s:.*)"
    body = body[len(body) - len(body.removeprefix("^")) : len(body) - (0 if end else 1)]
    regex = f"{start}(?:{body}){end}"
    error = llguidance.LLMatcher.validate_grammar(f"start: X\nX: /{regex}/")
    if error:
        raise ValueError(f"{where}: pattern {pattern!r} cannot be enforced: {_reason(error)}")
    return regex


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


def _json_value(schema: dict, options: dict, max_chars: int | None, where: str | None = None) -> str:
    """Inline `%json` of `schema` with our compile options (replacing any the schema carries).
    With `where` (a tool's schema), checked here, so that a refusal names the tool."""
    capped = {**_cap_strings(schema, max_chars, unknown_formats_kept=where is None), "x-guidance": options}
    value = "%json " + json.dumps(capped, ensure_ascii=False)
    error = llguidance.LLMatcher.validate_grammar("start: " + value) if where else None
    if error:
        raise ValueError(f"{where}: the schema cannot be enforced: {_reason(error)}")
    return value


def _reason(error: str) -> str:
    """The telling line of an llguidance compile error (its regex error, else its first line)."""
    lines = error.splitlines()
    told = next((line.strip() for line in lines if line.startswith("error: ")), lines[0])
    return told.split("failed to compile JSON schema: ")[-1]


def _cap_strings(schema: Any, max_chars: int | None, unknown_formats_kept: bool = True) -> Any:
    """Copy of `schema` in which string schemas without maxLength, enum or const get one, and
    unless `unknown_formats_kept`, formats llguidance does not know are dropped (tools: a client
    cannot change its tools, and JSON Schema makes an unknown format an annotation)."""
    if not isinstance(schema, dict) or max_chars is None and unknown_formats_kept:
        return schema
    capped = dict(schema)
    if not unknown_formats_kept and "format" in capped and not _known_format(capped["format"]):
        del capped["format"]
    kind = capped.get("type")
    is_string = kind == "string" or isinstance(kind, list) and "string" in kind
    if max_chars is not None and is_string and not {"maxLength", "enum", "const"} & capped.keys():
        capped["maxLength"] = max(max_chars, _length(capped, "minLength", 0))
    for key in _SUBSCHEMA_MAPS:
        if isinstance(capped.get(key), dict):
            capped[key] = {k: _cap_strings(v, max_chars, unknown_formats_kept) for k, v in capped[key].items()}
    for key in _SUBSCHEMAS:
        value = capped.get(key)
        if isinstance(value, list):
            capped[key] = [_cap_strings(v, max_chars, unknown_formats_kept) for v in value]
        elif isinstance(value, dict):
            capped[key] = _cap_strings(value, max_chars, unknown_formats_kept)
    return capped


@functools.lru_cache(maxsize=256)
def _known_format(name: Any) -> bool:
    """Whether llguidance enforces string format `name`."""
    if not isinstance(name, str):
        return False
    schema = {"type": "string", "format": name, "x-guidance": _JSON_OPTIONS}
    return not llguidance.LLMatcher.validate_grammar("start: %json " + json.dumps(schema))


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
