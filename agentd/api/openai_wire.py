"""OpenAI wire types (msgspec) for chat and text completions, and request -> `ChatInput`.

Unknown request fields are ignored (msgspec's default); absent and null fields mean "default".
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType

from agentd.plan import ChatInput, CompletionInput, PlanError, ToolChoice

MAX_TOP_LOGPROBS = 20

# -- request types ------------------------------------------------------------------------------


class ContentPart(Struct, kw_only=True):
    type: str
    text: str | None = None


class FunctionCall(Struct, kw_only=True):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(Struct, kw_only=True):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class ChatMessage(Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # another name some clients use for reasoning_content


class FunctionDef(Struct, kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(Struct, kw_only=True):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(Struct):
    name: str


class NamedToolChoice(Struct, kw_only=True):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(Struct, kw_only=True):
    name: str = "response"
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(Struct, kw_only=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(Struct, kw_only=True):
    include_usage: bool = False


class GenerationFields(Struct, kw_only=True):
    """Fields both endpoints share."""

    model: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = None


class ChatCompletionRequest(GenerationFields, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None  # kept as sent: the template renders them verbatim
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: str | None = None


class CompletionRequest(GenerationFields, kw_only=True):
    prompt: str | list[str | int]
    echo: bool | None = None
    logprobs: int | None = None


# -- response types -----------------------------------------------------------------------------


class PromptTokensDetails(Struct):
    cached_tokens: int


class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class TopLogprob(Struct):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(Struct):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(Struct):
    content: list[TokenLogprob]


class FunctionDelta(Struct, omit_defaults=True):
    arguments: str
    name: str | UnsetType = UNSET


class ToolCallDelta(Struct, kw_only=True, omit_defaults=True):
    index: int
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    function: FunctionDelta


class Delta(Struct, kw_only=True, omit_defaults=True):
    role: str | UnsetType = UNSET
    content: str | UnsetType = UNSET
    reasoning_content: str | UnsetType = UNSET
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET


class ChunkChoice(Struct, kw_only=True, omit_defaults=True):
    index: int
    delta: Delta
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(Struct, kw_only=True, omit_defaults=True):
    id: str
    object: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class FunctionOut(Struct):
    name: str
    arguments: str


class ToolCallOut(Struct):
    id: str
    type: str
    function: FunctionOut


class AssistantMessage(Struct, kw_only=True, omit_defaults=True):
    role: str
    content: str | None
    reasoning_content: str | UnsetType = UNSET
    tool_calls: list[ToolCallOut] | UnsetType = UNSET


class Choice(Struct, kw_only=True):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None


class ChatCompletion(Struct, kw_only=True):
    id: str
    object: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class LegacyLogprobs(Struct):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(Struct, kw_only=True):
    index: int
    text: str
    finish_reason: str | None
    logprobs: LegacyLogprobs | None


class Completion(Struct, kw_only=True, omit_defaults=True):
    id: str
    object: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


decode_chat = msgspec.json.Decoder(ChatCompletionRequest).decode
decode_completion = msgspec.json.Decoder(CompletionRequest).decode
encode = msgspec.json.Encoder().encode


# -- request -> plan ----------------------------------------------------------------------------


def chat_input(req: ChatCompletionRequest) -> ChatInput:
    """The API-neutral form of a chat request; raises PlanError naming a bad field."""
    check_common(req)
    if req.logprobs and req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
        raise PlanError(f"top_logprobs must be in 0..{MAX_TOP_LOGPROBS}", "top_logprobs")
    tools = _checked_tools(req.tools)
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_schema" and (fmt.json_schema is None or fmt.json_schema.schema is None):
        raise PlanError("response_format json_schema needs json_schema.schema", "response_format")
    template_kwargs = dict(req.chat_template_kwargs or {})
    if req.reasoning_effort in ("none", "minimal"):
        template_kwargs.setdefault("enable_thinking", False)
    return ChatInput(
        messages=template_messages(req.messages),
        tools=tools,
        tool_choice=_tool_choice(req, tools),
        json_output=fmt is not None and fmt.type != "text",
        json_schema=fmt.json_schema.schema if fmt is not None and fmt.json_schema is not None else None,
        template_kwargs=template_kwargs,
        sampling=sampling_fields(req),
        max_tokens=req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens,
        stops=stop_list(req.stop),
        num_top_logprobs=(req.top_logprobs or 0) if req.logprobs else None,
    )


def _checked_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    for i, tool in enumerate(tools or ()):
        try:
            msgspec.convert(tool, ToolDef)
        except msgspec.ValidationError as exc:
            raise PlanError(f"invalid tool: {exc}", f"tools[{i}]") from exc
    return tools or None


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Chat-template messages: developer -> system, leading system messages merged, parts -> text."""
    if not messages:
        raise PlanError("messages must not be empty", "messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        content = _text(message.content, f"messages[{i}].content")
        if role == "system" and out and all(m["role"] == "system" for m in out):
            out[0]["content"] += "\n\n" + content
            continue
        item: dict[str, Any] = {"role": role, "content": content}
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id or f"call_{i}_{j}",
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
                for j, call in enumerate(message.tool_calls)
            ]
        if message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            item["name"] = message.name
        reasoning = message.reasoning_content if message.reasoning_content is not None else message.reasoning
        if reasoning is not None:
            item["reasoning_content"] = reasoning
        out.append(item)
    return out


def _text(content: str | list[ContentPart] | None, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise PlanError(f"content part type {part.type!r} is not supported (text only)", param)
        texts.append(part.text)
    return "".join(texts)


def _tool_choice(req: ChatCompletionRequest, tools: list[dict[str, Any]] | None) -> ToolChoice:
    parallel = req.parallel_tool_calls is not False
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoice):
        return ToolChoice("named", choice.function.name, parallel)
    if choice is None:
        return ToolChoice("auto" if tools else "none", parallel=parallel)
    return ToolChoice(choice, parallel=parallel)


def check_common(req: GenerationFields) -> None:
    if req.n not in (None, 1):
        raise PlanError("only n=1 is supported", "n")


def sampling_fields(req: GenerationFields) -> dict[str, Any]:
    fields = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
              "repetition_penalty", "seed")  # fmt: skip
    out = {name: getattr(req, name) for name in fields if getattr(req, name) is not None}
    if out.get("seed", 0) < 0:  # llama.cpp clients send -1 for "random"
        del out["seed"]
    return out


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > 16:
        raise PlanError("at most 16 stop sequences are supported", "stop")
    return stops


def completion_input(req: CompletionRequest) -> CompletionInput:
    check_common(req)
    if req.logprobs is not None and not 0 <= req.logprobs <= 5:
        raise PlanError("logprobs must be in 0..5", "logprobs")
    return CompletionInput(
        prompt=_completion_prompt(req.prompt),
        sampling=sampling_fields(req),
        max_tokens=req.max_tokens,
        stops=stop_list(req.stop),
        num_top_logprobs=req.logprobs,
    )


def _completion_prompt(prompt: str | list[str | int]) -> str | list[int]:
    if isinstance(prompt, str):
        return prompt
    if prompt and all(isinstance(p, int) for p in prompt):
        return [int(p) for p in prompt]
    if len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    raise PlanError("prompt must be a string, a list with one string, or a list of token ids", "prompt")
