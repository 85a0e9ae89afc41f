"""Tool definitions as the parsers need them: which functions exist and how to type each argument.

The Qwen XML format carries every argument as raw text. The tool's JSON schema decides what the
text is: a string (streamed into the arguments as it arrives) or a JSON value (number, boolean,
array, object, null) parsed once the parameter closes.
"""

from __future__ import annotations

import json
from typing import Any

_JSON_TYPE_NAMES = {
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    type(None): "null",
    list: "array",
    dict: "object",
}
# Keywords that say nothing about which values are valid.
ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment", "$schema", "$id", "deprecated",
                         "readOnly", "writeOnly"})  # fmt: skip
# The chat template renders non-string scalars with Jinja's `|string`, i.e. Python spellings.
_PYTHON_SPELLINGS: dict[str, Any] = {"True": True, "False": False, "None": None}


class ToolSchemas:
    """Function names and per-parameter typing from a request's tool list.

    `tools=None` means no tool list is known: every function name is accepted and every
    parameter is a string. Accepts OpenAI entries `{"type": "function", "function": {"name",
    "parameters"}}` and Anthropic entries `{"name", "input_schema"}`.
    """

    def __init__(self, tools: list[dict] | None) -> None:
        self._params: dict[str, dict[str, bool]] | None = None
        if tools is None:
            return
        if not isinstance(tools, list):
            raise ValueError(f"tools must be a list of definitions, not {type(tools).__name__}")
        self._params = {}
        for number, tool in enumerate(tools):
            name, parameters = name_and_parameters(tool, number)
            properties = parameters.get("properties")
            if not isinstance(properties, dict):
                properties = {}
            self._params[name] = {
                param: _is_string_schema(schema, parameters) for param, schema in properties.items()
            }

    def knows(self, function: str) -> bool:
        return self._params is None or function in self._params

    def declares(self, function: str, param: str) -> bool:
        """Whether `param` can be a parameter of `function`: declared, or nothing is declared."""
        params = self._params.get(function) if self._params is not None else None
        return not params or param in params

    @staticmethod
    def admits_string(schema: dict, root: dict) -> bool:
        """Whether `schema` (in parameters `root`) admits strings, or does not say."""
        return _is_string_schema(schema, root)

    def is_string(self, function: str, param: str) -> bool:
        """String-typed, or of no known type: such values are taken as raw text."""
        if self._params is None:
            return True
        return self._params.get(function, {}).get(param, True)


def typed_json(raw: str) -> str:
    """JSON text for the raw text of a non-string parameter; text that is no JSON value (nor a
    Python spelling of one) stays a JSON string, so the arguments remain valid JSON."""
    text = raw.strip()
    try:
        return json.dumps(json.loads(text, parse_constant=_reject_non_finite), ensure_ascii=False)
    except (ValueError, RecursionError):
        return json.dumps(_PYTHON_SPELLINGS.get(text, raw), ensure_ascii=False)


def _reject_non_finite(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def name_and_parameters(tool: Any, number: int) -> tuple[str, dict]:
    """(name, parameters JSON schema) of tool definition `number`, OpenAI or Anthropic style;
    ValueError naming the tool where the definition is malformed."""
    if not isinstance(tool, dict):
        raise ValueError(f"tool {number} must be an object, got {type(tool).__name__}")
    if "function" in tool:
        function = tool["function"]
        if not isinstance(function, dict):
            raise ValueError(f"tool {number}: 'function' must be an object")
        name, parameters = function.get("name"), function.get("parameters")
    else:
        name, parameters = tool.get("name"), tool.get("input_schema", tool.get("parameters"))
    if not isinstance(name, str) or not name:
        raise ValueError(f"tool {number} has no function name")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise ValueError(f"tool {number} ({name}): parameters must be a JSON schema object")
    return name, _without_root_ref(parameters, f"tool {number} ({name})")


def _without_root_ref(parameters: dict, tool: str) -> dict:
    """Parameters whose root is a local `$ref` (pydantic writes these) as the schema it points to,
    with the definitions kept: what the parsers and grammars read. A `$ref` that points nowhere,
    out of the document, or round in a circle is refused: nothing could be enforced."""
    seen: list[str] = []
    schema = parameters
    while isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise ValueError(f"{tool}: parameters $ref {ref!r} is not a local reference (#/...)")
        if ref in seen:
            raise ValueError(f"{tool}: parameters $ref {ref!r} refers to itself ({' -> '.join([*seen, ref])})")
        seen.append(ref)
        siblings = set(schema) - {"$ref", "$defs", "definitions", *ANNOTATIONS}
        if siblings:
            raise ValueError(f"{tool}: parameters $ref {ref!r} has sibling keywords {sorted(siblings)}")
        schema = resolve_local_ref(ref, parameters, tool)
    if not seen:
        return parameters
    if not isinstance(schema, dict):
        raise ValueError(f"{tool}: parameters $ref {seen[-1]!r} does not point to a schema object")
    definitions = {k: parameters[k] for k in ("$defs", "definitions") if isinstance(parameters.get(k), dict)}
    return {**definitions, **schema}


def _is_string_schema(schema: Any, root: dict) -> bool:
    types = _schema_types(schema, root, frozenset())
    return not types or "string" in types


def _schema_types(schema: Any, root: dict, seen: frozenset[str]) -> set[str]:
    """The JSON types a schema admits (empty when it does not say)."""
    if not isinstance(schema, dict):
        return set()
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref not in seen:
        return _schema_types(resolve_local_ref(ref, root), root, seen | {ref})
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    if isinstance(schema.get("enum"), list):
        return {_JSON_TYPE_NAMES.get(type(v), "string") for v in schema["enum"]}
    if "const" in schema:
        return {_JSON_TYPE_NAMES.get(type(schema["const"]), "string")}
    types: set[str] = set()
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        for branch in branches if isinstance(branches, list) else ():
            types |= _schema_types(branch, root, seen)
    if not types and "properties" in schema:
        types.add("object")
    if not types and "items" in schema:
        types.add("array")
    return types


def resolve_local_ref(ref: str, root: dict, refuse_as: str | None = None) -> Any:
    """Follow a `#/...` JSON pointer inside the parameters schema; anything else resolves to {},
    or, with `refuse_as` (who asks), is a ValueError."""
    node: Any = root if ref.startswith("#") else None
    for part in ref[1:].split("/")[1:] if node is not None else ():
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            break
    if node is None and refuse_as is not None:
        raise ValueError(f"{refuse_as}: $ref {ref!r} does not resolve in its parameters schema")
    return {} if node is None else node
