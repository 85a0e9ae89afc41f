"""Turn an API-neutral request into what the runner and the output pipeline need.

Both wire APIs (OpenAI, Anthropic) convert their bodies to `ChatInput` and call `plan_chat`:
render the prompt, tokenize, check the context before any compute, pick the output limit, build
the grammar constraint (forced tool calls, JSON output, or a lazy tool-call grammar) and the
tool-call parser. Slow parts (rendering, tokenizing, grammar compilation): run it in a thread.
"""

from __future__ import annotations

import dataclasses
import secrets
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal

from agentd.config import ServeConfig
from agentd.history import MESSAGE_START, TURN_CLOSE, TURN_OPEN, GeneratedTurns, TurnFrame, last_query_index
from agentd.loader import LoadedModel
from agentd.output import TextPipeline
from agentd.runner import GenerationRequest
from engine.chat_template import RenderedPrompt
from engine.sampling import Sampler, SamplingParams
from tools.grammar import TextGrammar, json_schema_grammar, tool_call_grammar
from tools.hermes import HermesParser
from tools.qwen_xml import QwenXmlParser

ToolMode = Literal["none", "auto", "required", "named"]
_PARSERS = {"qwen_xml": QwenXmlParser, "hermes": HermesParser}
_RESERVED_TEMPLATE_KWARGS = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


class PlanError(ValueError):
    """The request cannot be served as asked; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ContextOverflow(Exception):
    """The prompt leaves no room for output; each API words this its own way. With `at_least`,
    num_tokens is a lower bound, found before tokenizing (check_fits)."""

    def __init__(self, num_tokens: int, n_ctx: int, at_least: bool = False):
        super().__init__(f"{'at least ' if at_least else ''}{num_tokens} prompt tokens, context {n_ctx}")
        self.num_tokens = num_tokens
        self.n_ctx = n_ctx
        self.at_least = at_least


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolMode = "none"
    name: str | None = None  # with mode "named"
    parallel: bool = True


@dataclass(frozen=True)
class ChatInput:
    messages: list[dict[str, Any]]  # chat-template messages (roles system/user/assistant/tool)
    tools: list[dict[str, Any]] | None = None  # OpenAI function tools
    tool_choice: ToolChoice = ToolChoice()
    json_output: bool = False  # constrain the content to JSON ...
    json_schema: dict[str, Any] | None = None  # ... matching this schema, when given
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)  # SamplingParams fields the client set
    max_tokens: int | None = None
    stops: list[str] = field(default_factory=list)
    num_top_logprobs: int | None = None
    turn_ids: dict[int, list[int]] = field(default_factory=dict)  # assistant messages' ids the request carries
    # (function, text parameter) -> the grammar its value follows (Responses' free-form tools)
    tool_grammars: dict[tuple[str, str], TextGrammar] = field(default_factory=dict)


@dataclass
class Plan:
    prompt: str
    request: GenerationRequest
    pipeline: TextPipeline


def render_chat(loaded: LoadedModel, chat: ChatInput, literal_content: bool = True) -> RenderedPrompt:
    """The template's rendering of the conversation (the one place the template runs). With
    `literal_content`, added-token texts in the request's strings are marked as text, so that
    only the template's structure becomes control tokens."""
    literal = loaded.model.tokenizer.added_texts if literal_content else ()
    kwargs = {k: v for k, v in chat.template_kwargs.items() if k not in _RESERVED_TEMPLATE_KWARGS}
    if chat.tool_choice.mode in ("required", "named") or chat.json_output:
        kwargs["enable_thinking"] = False  # the grammar must apply to the first generated token
    try:
        return loaded.model.chat_template.render_prompt(
            chat.messages, tools=chat.tools or None, add_generation_prompt=True, literal=literal, **kwargs
        )
    except (ValueError, TypeError) as exc:  # TemplateError: the template refused this conversation
        raise PlanError(f"could not apply the chat template: {exc}", "messages") from exc


@dataclass(frozen=True)
class Prompt:
    """What the model is given (ids) and their text."""

    text: str
    ids: list[int]


def chat_prompt(
    loaded: LoadedModel,
    chat: ChatInput,
    turns: GeneratedTurns | None = None,
    preserve_thinking: bool = False,
    literal_content: bool = True,
) -> Prompt:
    """The prompt of a chat request, as text and ids (also served by /apply-template and
    count_tokens). Added-token texts the request wrote are ordinary text unless
    `literal_content` is off (--parse-special-in-content). Assistant messages that `turns`
    remembers are put back as the ids they were generated as: those the template renders with
    their reasoning (after the last user query), and with `preserve_thinking` (the serve default,
    or the request's chat_template_kwargs.preserve_thinking) the earlier ones too; those in
    `chat.turn_ids` (ids the request itself carried back, verified) always. Anything that cannot
    be spliced exactly is rendered by the template alone."""
    preserve = _preserve_thinking(chat, preserve_thinking)
    rendered = render_chat(loaded, chat, literal_content)
    check_fits(loaded, rendered.text)
    bodies = _remembered_bodies(chat.messages, turns, preserve, literal_content) if turns is not None else {}
    bodies.update(chat.turn_ids)
    spliced = _splice(loaded, chat, rendered.text, bodies, literal_content) if bodies else None
    return spliced or Prompt(rendered.text, loaded.model.tokenizer.encode(rendered.text, rendered.literal))


def _preserve_thinking(chat: ChatInput, default: bool) -> bool:
    value = chat.template_kwargs.get("preserve_thinking", default)
    if not isinstance(value, bool):
        raise PlanError(f"preserve_thinking must be true or false, got {value!r}", "chat_template_kwargs")
    return value


def _remembered_bodies(
    messages: list[dict[str, Any]], turns: GeneratedTurns, preserve: bool, literal_content: bool
) -> dict[int, list[int]]:
    last_query = last_query_index(messages, markup_in_content=not literal_content)
    if last_query is None:
        return {}
    wanted = [i for i, m in enumerate(messages) if m.get("role") == "assistant" and (preserve or i > last_query)]
    return turns.bodies(messages, wanted)


def _splice(
    loaded: LoadedModel, chat: ChatInput, plain: str, bodies: dict[int, list[int]], literal_content: bool
) -> Prompt | None:
    """Render with each remembered turn replaced by a unique marker, cut the text at the turns'
    frames and put the remembered ids between the pieces. None (render plainly) when the frame
    is not where it must be, the pieces differ from the plain rendering outside the turns, or
    the vocabulary would not split the ids exactly at the frame."""
    tokenizer = loaded.model.tokenizer
    frame = TurnFrame.of(tokenizer)
    if frame is None:
        return None
    markers = {i: f"agentd-generated-turn-{secrets.token_hex(8)}" for i in bodies}
    messages = [
        {"role": "assistant", "content": markers[i]} if i in markers else m for i, m in enumerate(chat.messages)
    ]
    order = sorted(bodies)
    marked = render_chat(loaded, dataclasses.replace(chat, messages=messages), literal_content)
    bounds = _cut(marked.text, [markers[i] for i in order])
    if bounds is None:
        return None
    pieces = [marked.slice(start, end) for start, end in bounds]
    if not _frames_the_same(plain, [piece.text for piece in pieces]):
        return None
    ids = tokenizer.encode(pieces[0].text, pieces[0].literal)
    texts = [pieces[0].text]
    for i, piece in zip(order, pieces[1:]):
        piece_ids = tokenizer.encode(piece.text, piece.literal)
        if tuple(ids[-len(frame.open_ids) :]) != frame.open_ids or piece_ids[:1] != [frame.close_id]:
            return None
        ids += bodies[i] + piece_ids
        texts += [tokenizer.decode(bodies[i]), piece.text]
    return Prompt("".join(texts), ids)


def _cut(marked: str, markers: list[str]) -> list[tuple[int, int]] | None:
    """The (start, end) bounds of the text around each marked turn's body: piece k ends with the
    turn opening and piece k + 1 starts with its closing. None when a marker is not alone in its turn."""
    bounds, start = [], 0
    for marker in markers:
        at = marked.find(marker, start)
        if at < 0 or marked.count(marker) != 1:
            return None
        opening, end = marked.rfind(TURN_OPEN, start, at), at + len(marker)
        if opening < 0 or not marked.startswith(TURN_CLOSE, end):
            return None
        body_start = opening + len(TURN_OPEN)
        scaffold = marked[body_start:at]  # e.g. the empty think block of a turn shown with reasoning
        if MESSAGE_START in scaffold or TURN_CLOSE in scaffold:
            return None
        bounds.append((start, body_start))
        start = end
    return bounds + [(start, len(marked))]


def _frames_the_same(plain: str, pieces: list[str]) -> bool:
    """Whether `plain` is the pieces with one turn body (no message marker in it) between each two."""
    if not plain.startswith(pieces[0]):
        return False
    at = len(pieces[0])
    for piece in pieces[1:]:
        end = plain.find(TURN_CLOSE, at)
        if end < 0 or MESSAGE_START in plain[at:end] or not plain.startswith(piece, end):
            return False
        at = end + len(piece)
    return at == len(plain)


def plan_chat(
    loaded: LoadedModel, config: ServeConfig, request_id: str, chat: ChatInput, turns: GeneratedTurns | None = None
) -> Plan:
    _check_tool_choice(chat)
    prompt = chat_prompt(loaded, chat, turns, config.preserve_thinking, not config.parse_special_in_content)
    prompt_ids = prompt.ids
    room = _room(loaded, prompt_ids)
    mode = _effective_tool_mode(chat)
    constraint = _constraint(loaded, chat, mode)
    parser = _PARSERS[loaded.tool_format](chat.tools) if mode != "none" else None
    pipeline = TextPipeline(
        loaded.model.tokenizer,
        stops=chat.stops,
        start_in_reasoning=prompt.text.rstrip().endswith("<think>"),
        tool_parser=parser,
        max_tool_calls=config.max_tool_calls if chat.tool_choice.parallel else 1,
    )
    request = _generation_request(
        config, request_id, prompt_ids, room, chat.sampling, chat.max_tokens, chat.num_top_logprobs, constraint
    )
    return Plan(prompt.text, request, pipeline)


@dataclass(frozen=True)
class CompletionInput:
    prompt: str | list[int]  # text, or token ids
    sampling: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    stops: list[str] = field(default_factory=list)
    num_top_logprobs: int | None = None


def plan_completion(loaded: LoadedModel, config: ServeConfig, request_id: str, inp: CompletionInput) -> Plan:
    """Raw text completion: no template, no reasoning split, no tool parsing."""
    tokenizer = loaded.model.tokenizer
    n_vocab = loaded.model.config.n_vocab
    if isinstance(inp.prompt, str):
        check_fits(loaded, inp.prompt)
        prompt, prompt_ids = inp.prompt, tokenizer.encode(inp.prompt)
    else:
        bad = [t for t in inp.prompt if not 0 <= t < n_vocab]
        if bad:
            raise PlanError(f"token id {bad[0]} is outside the vocabulary [0, {n_vocab})", "prompt")
        prompt, prompt_ids = tokenizer.decode(inp.prompt), list(inp.prompt)
    if not prompt_ids:
        raise PlanError("the prompt is empty", "prompt")
    room = _room(loaded, prompt_ids)
    request = _generation_request(
        config, request_id, prompt_ids, room, inp.sampling, inp.max_tokens, inp.num_top_logprobs, None
    )
    return Plan(prompt, request, TextPipeline(tokenizer, stops=inp.stops))


def _check_tool_choice(chat: ChatInput) -> None:
    choice = chat.tool_choice
    if choice.mode in ("required", "named") and not chat.tools:
        raise PlanError(f"tool_choice {choice.mode!r} needs a non-empty tools list", "tool_choice")
    if choice.mode == "named":
        names = {t["function"]["name"] for t in chat.tools or ()}
        if choice.name not in names:
            raise PlanError(f"tool_choice names {choice.name!r}, which is not in tools", "tool_choice")


def _effective_tool_mode(chat: ChatInput) -> ToolMode:
    """Forced calls win over response_format, which wins over optional calls."""
    mode = chat.tool_choice.mode if chat.tools else "none"
    return "none" if mode == "auto" and chat.json_output else mode


def _constraint(loaded: LoadedModel, chat: ChatInput, mode: ToolMode) -> Any:
    """The grammar matcher enforcing forced calls, JSON output or the tool-call format (or None)."""
    choice = chat.tool_choice
    param = "tools" if mode != "none" else "response_format"
    try:
        if mode in ("required", "named"):
            grammar = tool_call_grammar(
                chat.tools, mode, name=choice.name, parallel=choice.parallel, fmt=loaded.tool_format,
                text_grammars=chat.tool_grammars,
            )  # fmt: skip
        elif chat.json_output:
            grammar = json_schema_grammar(chat.json_schema)
        elif mode == "auto":
            grammar = tool_call_grammar(
                chat.tools, "auto", parallel=choice.parallel, fmt=loaded.tool_format, text_grammars=chat.tool_grammars
            )
        else:
            return None
        return loaded.grammars.matcher(grammar)
    except ValueError as exc:
        raise PlanError(f"cannot build the output grammar: {exc}", param) from exc


def check_fits(loaded: LoadedModel, text: str) -> None:
    """Refuse a prompt whose size alone proves it cannot fit, before the slow part: tokenizing.
    No token stands for more than `max_token_bytes` bytes of the (NFC-normalised) text, so the
    text has at least bytes / max_token_bytes tokens."""
    num_bytes = len(unicodedata.normalize("NFC", text).encode())
    at_least = -(-num_bytes // loaded.max_token_bytes)
    if at_least >= loaded.n_ctx:
        raise ContextOverflow(at_least, loaded.n_ctx, at_least=True)


def _room(loaded: LoadedModel, prompt_ids: list[int]) -> int:
    """Tokens left for output; checked before any compute."""
    room = loaded.n_ctx - len(prompt_ids)
    if room < 1:
        raise ContextOverflow(len(prompt_ids), loaded.n_ctx)
    return room


def _generation_request(
    config: ServeConfig,
    request_id: str,
    prompt_ids: list[int],
    room: int,
    sampling: dict[str, Any],
    max_tokens: int | None,
    num_top_logprobs: int | None,
    constraint: Any,
) -> GenerationRequest:
    if max_tokens is not None and max_tokens < 1:
        raise PlanError(f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
    try:
        sampler = Sampler(SamplingParams(**sampling))
    except (TypeError, ValueError) as exc:  # validate() names the field first
        param = next((name for name in sampling if str(exc).startswith(name)), None)
        raise PlanError(f"invalid sampling parameters: {exc}", param) from exc
    return GenerationRequest(
        request_id=request_id,
        prompt_ids=prompt_ids,
        max_tokens=min(max_tokens or config.default_max_tokens, room),
        sampler=sampler,
        constraint=constraint,
        num_top_logprobs=num_top_logprobs,
    )
