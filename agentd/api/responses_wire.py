"""OpenAI Responses wire types (msgspec): the request, the input items it may hold, the response
and its output items (clients/codex.md). agentd.api.responses_input turns a request into a
`ChatInput`.

Unknown request fields are ignored (msgspec's default): Codex sends `client_metadata` and more.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType

from agentd.api.openai_wire import GenerationFields

ENCRYPTED_REASONING = "reasoning.encrypted_content"

# -- request types ------------------------------------------------------------------------------


class TextFormat(Struct, kw_only=True):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class TextConfig(Struct, kw_only=True):
    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(Struct, kw_only=True):
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(GenerationFields, kw_only=True):
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    store: bool | None = None
    include: list[str] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    prompt_cache_key: str | None = None
    previous_response_id: str | None = None
    truncation: str | None = None

    @property
    def stored(self) -> bool:
        return self.store is not False  # the API's default is to store

    @property
    def wants_encrypted_reasoning(self) -> bool:
        return ENCRYPTED_REASONING in (self.include or ())


class Part(Struct, kw_only=True):
    type: str
    text: str | None = None
    refusal: str | None = None


class MessageItem(Struct, kw_only=True):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]


class ReasoningItem(Struct, kw_only=True):
    summary: list[Part] = []
    content: list[Part] | None = None
    encrypted_content: str | None = None


class FunctionCallItem(Struct, kw_only=True):
    call_id: str
    name: str
    arguments: str
    namespace: str | None = None


class CustomToolCallItem(Struct, kw_only=True):
    call_id: str
    name: str
    input: str
    namespace: str | None = None


class CallOutputItem(Struct, kw_only=True):
    call_id: str
    output: str | list[Part]


ITEM_TYPES: dict[str, type[Struct]] = {
    "message": MessageItem,
    "reasoning": ReasoningItem,
    "function_call": FunctionCallItem,
    "custom_tool_call": CustomToolCallItem,
    "function_call_output": CallOutputItem,
    "custom_tool_call_output": CallOutputItem,
}

decode_request = msgspec.json.Decoder(ResponsesRequest).decode

# -- response types -----------------------------------------------------------------------------


class OutputText(Struct, kw_only=True, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class ReasoningText(Struct, tag_field="type", tag="reasoning_text"):
    text: str


class SummaryText(Struct, tag_field="type", tag="summary_text"):
    text: str


class MessageOut(Struct, kw_only=True, tag_field="type", tag="message"):
    id: str
    status: str
    content: list[OutputText]
    role: str = "assistant"


class ReasoningOut(Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="reasoning"):
    id: str
    summary: list[SummaryText]
    content: list[ReasoningText] | UnsetType = UNSET
    encrypted_content: str | None | UnsetType = UNSET
    status: str | UnsetType = UNSET


class _CallOut(Struct, kw_only=True, omit_defaults=True, tag_field="type"):
    id: str
    call_id: str
    name: str
    status: str
    namespace: str | UnsetType = UNSET


class FunctionCallOut(_CallOut, tag="function_call"):
    arguments: str


class CustomToolCallOut(_CallOut, tag="custom_tool_call"):
    input: str


OutputItem = MessageOut | ReasoningOut | FunctionCallOut | CustomToolCallOut


class InputTokensDetails(Struct):
    cached_tokens: int


class OutputTokensDetails(Struct):
    reasoning_tokens: int


class Usage(Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(Struct):
    code: str
    message: str


class IncompleteDetails(Struct):
    reason: str


class ResponseOut(Struct, kw_only=True):
    id: str
    object: str = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    model: str
    output: list[OutputItem]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    usage: Usage | None = None
    instructions: str | None
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    temperature: float | None
    top_p: float | None
    max_output_tokens: int | None
    previous_response_id: str | None
    reasoning: dict[str, Any]
    store: bool
    text: dict[str, Any]
    truncation: str
    metadata: dict[str, str]
    prompt_cache_key: str | None
    user: str | None


class Deleted(Struct):
    id: str
    object: str = "response"
    deleted: bool = True


encode = msgspec.json.Encoder().encode


def response_shell(req: ResponsesRequest, response_id: str, model: str, created_at: int) -> ResponseOut:
    """The response as it starts: no output yet, the request's settings echoed."""
    text_format = req.text.format if req.text is not None and req.text.format is not None else TextFormat()
    return ResponseOut(
        id=response_id,
        created_at=created_at,
        status="in_progress",
        model=model,
        output=[],
        instructions=req.instructions,
        tools=req.tools or [],
        tool_choice=req.tool_choice if req.tool_choice is not None else "auto",
        parallel_tool_calls=req.parallel_tool_calls is not False,
        temperature=req.temperature,
        top_p=req.top_p,
        max_output_tokens=req.max_output_tokens,
        previous_response_id=req.previous_response_id,
        reasoning=msgspec.to_builtins(req.reasoning) if req.reasoning is not None else {},
        store=req.stored,
        text={"format": {k: v for k, v in msgspec.to_builtins(text_format).items() if v is not None}},
        truncation=req.truncation or "disabled",
        metadata=req.metadata or {},
        prompt_cache_key=req.prompt_cache_key,
        user=req.user,
    )
