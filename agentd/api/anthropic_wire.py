"""Anthropic Messages wire types (msgspec) and request -> `ChatInput`.

Requests keep Anthropic's shapes; unknown fields (cache_control, context_management,
output_config, container, ...) are ignored. The conversion renders a conversation to the same
chat-template messages whatever shape its content takes (a string or text blocks joined without a
separator, as the template joins parts), so a client that turns an earlier turn's blocks into a
string, or moves its cache_control markers, still shares the rendered prefix:

- `system` (string or text blocks) and every `role: "system"` message inside `messages` (Claude
  Code sends one for models it does not know) form the one leading system message, joined by a
  blank line; the template allows system turns only first. A system block starting with
  `x-anthropic-billing-header:` changes between sessions and would defeat the prefix cache at
  token 0, so it is dropped.
- assistant blocks: text -> content, thinking -> reasoning_content (redacted_thinking is dropped),
  tool_use -> tool_calls with the input as an object.
- user blocks: tool_result -> role "tool" messages in order, right after the assistant turn; the
  text blocks follow them as one user message. `is_error` results are rendered as "Error: ...".
- tools become OpenAI function tools, the shape Qwen templates were trained on, so both APIs
  render a tool list identically; `defer_loading` is ignored (every tool is rendered).
- thinking enabled or adaptive -> enable_thinking; disabled or absent (Anthropic's default) ->
  off. `budget_tokens` is not enforced: thinking ends when the model closes it or at max_tokens.
Images and documents are refused: the served models read text only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import msgspec
from msgspec import Struct

from agentd.plan import ChatInput, PlanError, ToolChoice

BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
MAX_STOP_SEQUENCES = 16
THINKING_SIGNATURE = "agentd"  # clients send thinking back with it; nothing checks it
ERROR_PREFIX = "Error: "  # before the text of a tool_result with is_error

# -- request types ------------------------------------------------------------------------------


class Block(Struct, tag_field="type", kw_only=True):
    """A content block; `type` picks the subclass."""


class TextBlock(Block, tag="text"):
    text: str


class ImageBlock(Block, tag="image"):
    source: Any = None


class DocumentBlock(Block, tag="document"):
    source: Any = None


class ToolUseBlock(Block, tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any] = {}


class ToolResultBlock(Block, tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock] | None = None
    is_error: bool = False


class ThinkingBlock(Block, tag="thinking"):
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(Block, tag="redacted_thinking"):
    data: str = ""


ContentBlock = (
    TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock
)


class Message(Struct, kw_only=True):
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class Tool(Struct, kw_only=True):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None  # absent or "custom"; server tools (web_search_..., bash_...) are refused


class ToolChoiceMode(Struct, tag_field="type", kw_only=True):
    disable_parallel_tool_use: bool = False


class ToolChoiceAuto(ToolChoiceMode, tag="auto"):
    pass


class ToolChoiceAny(ToolChoiceMode, tag="any"):
    pass


class ToolChoiceTool(ToolChoiceMode, tag="tool"):
    name: str


class ToolChoiceNone(ToolChoiceMode, tag="none"):
    pass


class Thinking(Struct, tag_field="type", kw_only=True):
    pass


class ThinkingEnabled(Thinking, tag="enabled"):
    budget_tokens: int


class ThinkingDisabled(Thinking, tag="disabled"):
    pass


class ThinkingAdaptive(Thinking, tag="adaptive"):
    pass


class CountTokensRequest(Struct, kw_only=True):
    """What decides the prompt; `POST /v1/messages/count_tokens` takes exactly this."""

    model: str = ""
    messages: list[Message]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone | None = None
    thinking: ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive | None = None


class MessagesRequest(CountTokensRequest, kw_only=True):
    max_tokens: int
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None  # checked to be an object, otherwise unused


# -- response types -----------------------------------------------------------------------------


class TextOut(Struct, tag_field="type", tag="text"):
    text: str


class ThinkingOut(Struct, tag_field="type", tag="thinking"):
    thinking: str
    signature: str


class ToolUseOut(Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


BlockOut = TextOut | ThinkingOut | ToolUseOut


class Usage(Struct):
    """input_tokens excludes the tokens read from the session cache (Anthropic's convention):
    the prompt is input_tokens + cache_read_input_tokens. Nothing is billed as cache creation."""

    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int = 0


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageOut(Struct, kw_only=True):
    id: str
    type: str = "message"
    role: str = "assistant"
    model: str
    content: list[BlockOut]
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: Usage


class TextDeltaOut(Struct, tag_field="type", tag="text_delta"):
    text: str


class ThinkingDeltaOut(Struct, tag_field="type", tag="thinking_delta"):
    thinking: str


class SignatureDeltaOut(Struct, tag_field="type", tag="signature_delta"):
    signature: str


class InputJsonDeltaOut(Struct, tag_field="type", tag="input_json_delta"):
    partial_json: str


class StreamEvent(Struct, tag_field="type"):
    """An SSE event; its `type` tag is also the SSE event name."""


class MessageStart(StreamEvent, tag="message_start"):
    message: MessageOut


class ContentBlockStart(StreamEvent, tag="content_block_start"):
    index: int
    content_block: BlockOut


class ContentBlockDelta(StreamEvent, tag="content_block_delta"):
    index: int
    delta: TextDeltaOut | ThinkingDeltaOut | SignatureDeltaOut | InputJsonDeltaOut


class ContentBlockStop(StreamEvent, tag="content_block_stop"):
    index: int


class StopInfo(Struct):
    stop_reason: StopReason
    stop_sequence: str | None


class MessageDelta(StreamEvent, tag="message_delta"):
    delta: StopInfo
    usage: Usage  # cumulative, like message_start's


class MessageStop(StreamEvent, tag="message_stop"):
    pass


class Ping(StreamEvent, tag="ping"):
    pass


class TokenCount(Struct):
    input_tokens: int


decode_messages = msgspec.json.Decoder(MessagesRequest).decode
decode_count_tokens = msgspec.json.Decoder(CountTokensRequest).decode
encode = msgspec.json.Encoder().encode


def event_name(event: StreamEvent) -> str:
    return type(event).__struct_config__.tag


# -- request -> plan ----------------------------------------------------------------------------


def prompt_input(req: CountTokensRequest) -> ChatInput:
    """The part of a request that decides the prompt (all count_tokens needs); raises PlanError."""
    tools = _function_tools(req.tools)
    return ChatInput(
        messages=template_messages(req.system, req.messages),
        tools=tools,
        tool_choice=_tool_choice(req.tool_choice, bool(tools)),
        template_kwargs={"enable_thinking": isinstance(req.thinking, ThinkingEnabled | ThinkingAdaptive)},
    )


def chat_input(req: MessagesRequest) -> ChatInput:
    """The API-neutral form of a Messages request; raises PlanError naming a bad field."""
    stops = req.stop_sequences or []
    if len(stops) > MAX_STOP_SEQUENCES:
        raise PlanError(f"at most {MAX_STOP_SEQUENCES} stop_sequences are supported", "stop_sequences")
    fields = {"temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k}
    return dataclasses.replace(
        prompt_input(req),
        sampling={name: value for name, value in fields.items() if value is not None},
        max_tokens=req.max_tokens,
        stops=stops,
    )


def template_messages(system: str | list[TextBlock] | None, messages: list[Message]) -> list[dict[str, Any]]:
    if not messages:
        raise PlanError("messages must not be empty", "messages")
    system_texts = [_system_text(system)]
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}].content"
        if message.role == "system":
            system_texts.append(_text(message.content, param))
        elif message.role == "user":
            out += _user_messages(message.content, param)
        else:
            out.append(_assistant_message(message.content, param))
    system_text = "\n\n".join(text for text in system_texts if text)
    return ([{"role": "system", "content": system_text}] if system_text else []) + out


def _system_text(system: str | list[TextBlock] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    return "".join(block.text for block in system if not block.text.startswith(BILLING_HEADER_PREFIX))


def _text(content: str | list[Any] | None, param: str) -> str:
    """The text of string-or-blocks content that may hold only text blocks."""
    if content is None or isinstance(content, str):
        return content or ""
    for block in content:
        if not isinstance(block, TextBlock):
            raise PlanError(_unsupported(block, "here (text only)"), param)
    return "".join(block.text for block in content)


def _unsupported(block: Block, where: str) -> str:
    kind = type(block).__struct_config__.tag
    if isinstance(block, ImageBlock | DocumentBlock):
        return f"{kind!r} content blocks are not supported: the served model reads text only"
    return f"a {kind!r} content block is not allowed {where}"


def _user_messages(content: str | list[ContentBlock], param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages, texts = [], []
    for block in content:
        if isinstance(block, ToolResultBlock):
            text = _text(block.content, param)
            text = ERROR_PREFIX + text if block.is_error else text
            tool_messages.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
        elif isinstance(block, TextBlock):
            texts.append(block.text)
        else:
            raise PlanError(_unsupported(block, "in a user message"), param)
    if texts or not tool_messages:
        return tool_messages + [{"role": "user", "content": "".join(texts)}]
    return tool_messages


def _assistant_message(content: str | list[ContentBlock], param: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts, thoughts, calls = [], [], []
    for block in content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ThinkingBlock):
            thoughts.append(block.thinking)
        elif isinstance(block, ToolUseBlock):
            function = {"name": block.name, "arguments": block.input}
            calls.append({"id": block.id, "type": "function", "function": function})
        elif not isinstance(block, RedactedThinkingBlock):  # encrypted elsewhere: nothing to render
            raise PlanError(_unsupported(block, "in an assistant message"), param)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    return message


def _function_tools(tools: list[Tool] | None) -> list[dict[str, Any]] | None:
    out = []
    for i, tool in enumerate(tools or ()):
        if tool.type not in (None, "custom"):
            raise PlanError(f"tool type {tool.type!r} is not supported (custom tools only)", f"tools[{i}].type")
        if tool.input_schema is None:
            raise PlanError(f"tool {tool.name!r} needs an input_schema", f"tools[{i}].input_schema")
        function: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        function["parameters"] = tool.input_schema
        out.append({"type": "function", "function": function})
    return out or None


def _tool_choice(choice: ToolChoiceMode | None, has_tools: bool) -> ToolChoice:
    if choice is None:
        return ToolChoice("auto" if has_tools else "none")
    parallel = not choice.disable_parallel_tool_use
    if isinstance(choice, ToolChoiceTool):
        return ToolChoice("named", choice.name, parallel)
    mode = {ToolChoiceAuto: "auto", ToolChoiceAny: "required", ToolChoiceNone: "none"}[type(choice)]
    return ToolChoice(mode, parallel=parallel)
