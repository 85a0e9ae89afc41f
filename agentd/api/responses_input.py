"""Responses request -> `ChatInput` (clients/codex.md).

Input items become chat-template messages: system and developer messages (and `instructions`)
merge into the one leading system turn the Qwen template allows; a run of reasoning, assistant
message and function calls is one assistant turn; a call output is a tool message answering a
call made before it. Ids, `client_metadata`, `prompt_cache_key` and the like never reach the
prompt. A reasoning item's `encrypted_content` that opens (agentd.turn_seal) and matches the
turn as sent back puts the turn's generated ids into `ChatInput.turn_ids`.

Tools: functions as they are; a namespace's inner functions under their own names (qualified
`namespace.name` only where two would clash), returned with their `namespace`; free-form
(`custom`) tools as a function of one text parameter `input`, constrained by their Lark or regex
format. Hosted tools (web_search, ...) cannot run here: they are left out, logged once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec

from agentd.api.openai_wire import check_common, sampling_fields, stop_list
from agentd.api.responses_wire import (
    ITEM_TYPES,
    CallOutputItem,
    FunctionCallItem,
    MessageItem,
    Part,
    ReasoningItem,
    ResponsesRequest,
)
from agentd.history import reply_key
from agentd.plan import ChatInput, PlanError, ToolChoice
from agentd.turn_seal import SealedTurn, digest
from tools.grammar import TextGrammar

log = logging.getLogger("agentd")

CUSTOM_INPUT = "input"  # the one parameter of a free-form tool as the model sees it
_logged_hosted_tools: set[str] = set()


# -- tools --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolRef:
    """What the client calls a tool the model knows by its prompt name."""

    name: str
    namespace: str | None = None
    custom: bool = False


@dataclass
class Tools:
    chat: list[dict[str, Any]] = field(default_factory=list)  # OpenAI function tools for the template
    refs: dict[str, ToolRef] = field(default_factory=dict)  # prompt name -> as the client knows it
    grammars: dict[tuple[str, str], TextGrammar] = field(default_factory=dict)  # of free-form tools' input

    def prompt_name(self, name: str, namespace: str | None) -> str:
        """The prompt name of a tool the client names (a tool not offered keeps its own name)."""
        found = [p for p, ref in self.refs.items() if ref.name == name and ref.namespace == namespace]
        return found[0] if found else name

    def add(self, tool: dict[str, Any], namespace: str | None, param: str) -> None:
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise PlanError("a tool needs a name", param)
        custom = tool.get("type") == "custom"
        if custom:
            parameters = {"type": "object", "properties": {CUSTOM_INPUT: {"type": "string"}},
                          "required": [CUSTOM_INPUT]}  # fmt: skip
        else:
            parameters = tool.get("parameters") or {"type": "object", "properties": {}}
            if not isinstance(parameters, dict):
                raise PlanError("a function's parameters must be a JSON schema object", param)
        prompt = f"{namespace}.{name}" if name in self.refs and namespace else name
        if prompt in self.refs:
            raise PlanError(f"tool {prompt!r} is defined twice", param)
        function: dict[str, Any] = {"name": prompt}  # the order chat clients send (the template renders it)
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        function["parameters"] = parameters
        self.chat.append({"type": "function", "function": function})
        self.refs[prompt] = ToolRef(name, namespace, custom)
        if custom:
            self._add_grammar(prompt, tool.get("format"), param)

    def _add_grammar(self, prompt: str, fmt: Any, param: str) -> None:
        """A free-form tool's `format`: plain text, or a grammar its input is constrained to."""
        if fmt is None or isinstance(fmt, dict) and fmt.get("type") == "text":
            return
        if not isinstance(fmt, dict) or fmt.get("type") != "grammar":
            raise PlanError("a custom tool's format is {'type': 'text'} or {'type': 'grammar', ...}", param)
        syntax, definition = fmt.get("syntax"), fmt.get("definition")
        if syntax not in ("lark", "regex") or not isinstance(definition, str):
            raise PlanError("a grammar format needs syntax 'lark' or 'regex' and a definition", param)
        self.grammars[(prompt, CUSTOM_INPUT)] = (syntax, definition)


def convert_tools(tools: list[dict[str, Any]] | None) -> Tools:
    out = Tools()
    for i, tool in enumerate(tools or ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in ("function", "custom"):
            out.add(tool, None, f"tools[{i}]")
        elif kind == "namespace":
            inner = tool.get("tools")
            if not isinstance(inner, list) or not isinstance(tool.get("name"), str):
                raise PlanError("a namespace tool needs a name and a list of tools", f"tools[{i}]")
            for j, function in enumerate(inner):
                if not isinstance(function, dict) or function.get("type", "function") not in ("function", "custom"):
                    raise PlanError("a namespace holds function or custom tools", f"tools[{i}].tools[{j}]")
                out.add(function, tool["name"], f"tools[{i}].tools[{j}]")
        elif isinstance(kind, str):
            _log_hosted_tool(kind)
        else:
            raise PlanError("a tool needs a type", f"tools[{i}]")
    return out


def _log_hosted_tool(kind: str) -> None:
    if kind not in _logged_hosted_tools:
        _logged_hosted_tools.add(kind)
        log.info("tool type %r cannot run here; it is left out of the prompt", kind)


def _tool_choice(req: ResponsesRequest, tools: Tools) -> tuple[ToolChoice, Tools]:
    """The choice, and the tools to offer (allowed_tools narrows them)."""
    parallel = req.parallel_tool_calls is not False
    choice = req.tool_choice
    if choice is None:
        return ToolChoice("auto" if tools.chat else "none", parallel=parallel), tools
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise PlanError(f"tool_choice must be 'auto', 'none' or 'required', got {choice!r}", "tool_choice")
        return ToolChoice(choice, parallel=parallel), tools
    kind = choice.get("type")
    if kind in ("function", "custom") and isinstance(choice.get("name"), str):
        name = tools.prompt_name(choice["name"], choice.get("namespace"))
        return ToolChoice("named", name, parallel), tools
    if kind == "allowed_tools" and isinstance(choice.get("tools"), list):
        mode = choice.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise PlanError("allowed_tools mode must be 'auto' or 'required'", "tool_choice")
        allowed = {tools.prompt_name(t.get("name"), t.get("namespace")) for t in choice["tools"] if isinstance(t, dict)}
        narrowed = Tools([t for t in tools.chat if t["function"]["name"] in allowed],
                         {p: ref for p, ref in tools.refs.items() if p in allowed}, tools.grammars)  # fmt: skip
        return ToolChoice(mode if narrowed.chat else "none", parallel=parallel), narrowed
    raise PlanError(f"tool_choice {choice!r} names no function or custom tool this daemon can run", "tool_choice")


# -- input items -> messages --------------------------------------------------------------------


def item_type(item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    return "message" if kind is None and "role" in item else kind


@dataclass
class _Turn:
    """An assistant turn being assembled from items: reasoning, then a message, then calls."""

    phase: int = 0
    reasoning: str | None = None
    content: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    blob: str | None = None


_PHASES = {"reasoning": 0, "message": 1, "function_call": 2, "custom_tool_call": 2}


class _Conversation:
    def __init__(self, tools: Tools, unseal: Callable[[str], SealedTurn | None]):
        self.tools = tools
        self.unseal = unseal
        self.system: list[str] = []
        self.messages: list[dict[str, Any]] = []
        self.turn_ids: dict[int, list[int]] = {}
        self.calls: set[str] = set()
        self.turn: _Turn | None = None

    def add(self, item: dict[str, Any], param: str) -> None:
        kind = item_type(item)
        model = ITEM_TYPES.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise PlanError(f"input item type {kind!r} is not supported", param)
        try:
            parsed = msgspec.convert(item, model)
        except msgspec.ValidationError as exc:
            raise PlanError(f"invalid {kind} item: {exc}", param) from exc
        if isinstance(parsed, MessageItem) and parsed.role != "assistant":
            self._message(parsed, param)
        elif isinstance(parsed, CallOutputItem):
            if parsed.call_id not in self.calls:
                call = kind.removesuffix("_output")
                raise PlanError(f"no {call} with call_id {parsed.call_id!r} before this output", param)
            self._close_turn()
            self.messages.append({"role": "tool", "tool_call_id": parsed.call_id,
                                  "content": _text(parsed.output, param)})  # fmt: skip
        else:
            self._assistant(kind, parsed, param)

    def _message(self, message: MessageItem, param: str) -> None:
        text = _text(message.content, param)
        if message.role in ("system", "developer"):
            self.system.append(text)
            return
        self._close_turn()
        self.messages.append({"role": "user", "content": text})

    def _assistant(self, kind: str, parsed: Any, param: str) -> None:
        phase = _PHASES[kind]
        turn = self.turn
        if turn is None or phase < turn.phase or (phase == turn.phase and phase < 2):
            self._close_turn()
            turn = self.turn = _Turn()
        turn.phase = phase
        if isinstance(parsed, ReasoningItem):
            parts = parsed.content or parsed.summary
            turn.reasoning = "\n\n".join(p.text or "" for p in parts) if parts else None
            turn.blob = parsed.encrypted_content
        elif isinstance(parsed, MessageItem):
            turn.content = _text(parsed.content, param)
        else:
            self.calls.add(parsed.call_id)
            name = self.tools.prompt_name(parsed.name, parsed.namespace)
            if isinstance(parsed, FunctionCallItem):
                arguments = parsed.arguments
            else:
                arguments = json.dumps({CUSTOM_INPUT: parsed.input})
            function = {"name": name, "arguments": arguments}
            turn.calls.append({"id": parsed.call_id, "type": "function", "function": function})

    def _close_turn(self) -> None:
        turn, self.turn = self.turn, None
        if turn is None:
            return
        message: dict[str, Any] = {"role": "assistant", "content": turn.content}
        if turn.reasoning is not None:
            message["reasoning_content"] = turn.reasoning
        if turn.calls:
            message["tool_calls"] = turn.calls
        sealed = self.unseal(turn.blob) if turn.blob else None
        if sealed is not None and _seals(sealed, message):
            self.turn_ids[len(self.messages)] = sealed.body_ids
        self.messages.append(message)

    def finish(self, instructions: str | None) -> tuple[list[dict[str, Any]], dict[int, list[int]]]:
        self._close_turn()
        system = [instructions] if instructions else []
        system += self.system
        if not system:
            return self.messages, self.turn_ids
        shifted = {i + 1: ids for i, ids in self.turn_ids.items()}
        return [{"role": "system", "content": "\n\n".join(system)}, *self.messages], shifted


def assistant_message(items: list[dict[str, Any]], tools: Tools) -> dict[str, Any]:
    """The template message our output items come back as (what a seal must match)."""
    conversation = _Conversation(tools, lambda blob: None)
    for i, item in enumerate(items):
        conversation.add(item, f"output[{i}]")
    return conversation.finish(None)[0][0]


def seal_key(message: dict[str, Any]) -> str:
    key = reply_key(message)
    assert key is not None, "our own output items always make a keyable reply"
    return key


def _seals(sealed: SealedTurn, message: dict[str, Any]) -> bool:
    """Whether the sealed ids are those of this turn as sent back: the same reply, and the same
    reasoning when the client sent its text."""
    key = reply_key(message)
    reasoning = message.get("reasoning_content")
    if key is None or digest(key) != sealed.reply:
        return False
    return not reasoning or digest(reasoning.strip()) == sealed.reasoning


def _text(content: str | list[Part], param: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        text = part.text if part.type in ("input_text", "output_text", "text") else part.refusal
        if text is None:
            raise PlanError(f"content part type {part.type!r} is not supported (text only)", param)
        texts.append(text)
    return "".join(texts)


def chat_input(
    req: ResponsesRequest, previous: list[dict[str, Any]], unseal: Callable[[str], SealedTurn | None]
) -> tuple[ChatInput, Tools]:
    """The API-neutral form of a Responses request continuing `previous` (the items of the stored
    response it names); raises PlanError naming a bad field."""
    check_common(req)
    tools = convert_tools(req.tools)
    choice, offered = _tool_choice(req, tools)
    conversation = _Conversation(tools, unseal)
    for item in previous:
        conversation.add(item, "previous_response_id")
    for i, item in enumerate(input_items(req)):
        conversation.add(item, f"input[{i}]")
    messages, turn_ids = conversation.finish(req.instructions)
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_schema" and fmt.schema is None:
        raise PlanError("text.format json_schema needs a schema", "text.format")
    effort = req.reasoning.effort if req.reasoning is not None else None
    chat = ChatInput(
        messages=messages,
        tools=offered.chat or None,
        tool_choice=choice,
        json_output=fmt is not None and fmt.type != "text",
        json_schema=fmt.schema if fmt is not None else None,
        template_kwargs={"enable_thinking": False} if effort in ("none", "minimal") else {},
        sampling=sampling_fields(req),
        max_tokens=req.max_output_tokens if req.max_output_tokens is not None else req.max_tokens,
        stops=stop_list(req.stop),
        turn_ids=turn_ids,
        tool_grammars=offered.grammars,
    )
    return chat, tools


def input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    if isinstance(req.input, str):
        return [{"type": "message", "role": "user", "content": req.input}]
    if not req.input and req.previous_response_id is None:
        raise PlanError("input must not be empty", "input")
    return req.input
