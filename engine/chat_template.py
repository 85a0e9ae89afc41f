"""Chat templates: render a conversation to prompt text the way Hugging Face transformers does.

Templates come from GGUF files (untrusted), so they run in jinja2's immutable sandbox with the
environment transformers gives them (trim_blocks, lstrip_blocks, loop controls, its `tojson`,
`raise_exception`, `strftime_now`). Inputs are prepared as transformers and llama.cpp do: reasoning
under its other names is copied to `reasoning_content`, and tool-call arguments sent as JSON text
(the OpenAI wire form) are decoded into objects, since templates walk them with `|items`.

`render_prompt` also says where the request's own text (message content, tool arguments, tool
definitions) wrote the text of an added token such as `<|im_end|>`: the tokenizer keeps those as
ordinary text, so that only the template's own structure produces control tokens. The template
sees such text as an opaque marker, so it cannot act on it either; the one exception is the
`<think>...</think>` an assistant message may lead its content with, which the template splits off
as the reasoning the model wrote.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_TEMPLATE: str = (resources.files("engine") / "templates" / "qwen35.jinja").read_text(encoding="utf-8")

_REASONING_ALIASES = ("reasoning_content", "thinking", "reasoning")
THINK_TAGS = frozenset({"<think>", "</think>"})  # reasoning the model wrote, split off by the template


@dataclass(frozen=True)
class RenderedPrompt:
    """Prompt text, and the (start, end) spans in it where the request's own text spelled an
    added token's text (to be tokenized as ordinary text)."""

    text: str
    literal: tuple[tuple[int, int], ...] = ()

    def slice(self, start: int, end: int) -> RenderedPrompt:
        """text[start:end] with the spans inside it (spans never straddle a cut at structure)."""
        inside = tuple((a - start, b - start) for a, b in self.literal if start <= a and b <= end)
        return RenderedPrompt(self.text[start:end], inside)


class TemplateError(ValueError):
    """The template failed to compile or refused the conversation (its own message is kept)."""


class ChatTemplate:
    """A compiled chat template."""

    def __init__(self, source: str):
        self.source = source
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"chat template does not compile: {exc}") from exc

    def render(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """Prompt text for `messages`; extra keyword arguments (e.g. enable_thinking) reach the template."""
        if not isinstance(messages, list):
            raise TemplateError(f"messages must be a list, got {type(messages).__name__}")
        return self._render([_prepare_message(m) for m in messages], tools, add_generation_prompt, kwargs)

    def render_prompt(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
        literal: Collection[str] = (),
        **kwargs: Any,
    ) -> RenderedPrompt:
        """Like `render`, and the texts in `literal` (added-token texts) that the request's own
        strings contain are reported as spans instead of being left to look like structure."""
        if not isinstance(messages, list):
            raise TemplateError(f"messages must be a list, got {type(messages).__name__}")
        prepared = [_prepare_message(m) for m in messages]
        if not literal:
            return RenderedPrompt(self._render(prepared, tools, add_generation_prompt, kwargs))
        masks = _Masks(literal)
        masked = [masks.message(m) for m in prepared]
        text = self._render(masked, masks.value(tools), add_generation_prompt, masks.value(kwargs))
        return masks.unmask(text)

    def _render(self, prepared: list[Any], tools: Any, add_generation_prompt: bool, kwargs: dict) -> str:
        try:
            return self._template.render(
                messages=prepared,
                tools=tools,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **kwargs,
            )
        except jinja2.TemplateError as exc:
            raise TemplateError(exc.message or str(exc)) from exc
        except (TypeError, ValueError, LookupError, AttributeError) as exc:
            raise TemplateError(f"chat template failed on this conversation: {exc}") from exc


class _Masks:
    """Replaces added-token texts in request strings by unguessable markers (letters and digits,
    which no template filter such as trim or tojson alters) and puts them back after rendering."""

    def __init__(self, literal: Collection[str]):
        self._texts = sorted(literal, key=len, reverse=True)  # longest first, as the tokenizer matches
        nonce = secrets.token_hex(8)
        self._markers = {text: f"agentdlit{nonce}n{k}z" for k, text in enumerate(self._texts)}
        self._found = re.compile(f"agentdlit{nonce}n([0-9]+)z")
        self._all = _alternation(self._texts)
        self._assistant_content = _alternation([t for t in self._texts if t not in THINK_TAGS])

    def message(self, message: Any) -> Any:
        if not isinstance(message, dict) or "content" not in message:
            return self.value(message)
        masked = {k: self.value(v) for k, v in message.items() if k != "content"}
        pattern = self._assistant_content if message.get("role") == "assistant" else self._all
        masked["content"] = _masked(message["content"], pattern, self._markers)
        return masked

    def value(self, value: Any) -> Any:
        """`value` with every string in it (keys too) masked."""
        return _masked(value, self._all, self._markers)

    def unmask(self, text: str) -> RenderedPrompt:
        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        at = length = 0
        for match in self._found.finditer(text):
            pieces.append(text[at : match.start()])
            length += match.start() - at
            original = self._texts[int(match.group(1))]
            pieces.append(original)
            spans.append((length, length + len(original)))
            length += len(original)
            at = match.end()
        pieces.append(text[at:])
        return RenderedPrompt("".join(pieces), tuple(spans))


def _alternation(texts: list[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(map(re.escape, texts))) if texts else None


def _masked(value: Any, pattern: re.Pattern[str] | None, markers: dict[str, str]) -> Any:
    if pattern is None:
        return value
    if isinstance(value, str):
        return pattern.sub(lambda m: markers[m.group()], value)
    if isinstance(value, dict):
        return {_masked(k, pattern, markers): _masked(v, pattern, markers) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v, pattern, markers) for v in value]
    return value


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _namespace
    return env


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False
) -> str:
    """transformers' `tojson`: plain json.dumps, no HTML escaping, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GuardedNamespace(jinja2.utils.Namespace):
    """A namespace whose attributes cannot start with "_" (no reaching into Python internals)."""

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(_public_name(name), value)


def _namespace(*args: Any, **kwargs: Any) -> _GuardedNamespace:
    attrs = dict(*args, **kwargs)
    for name in attrs:
        _public_name(name)
    return _GuardedNamespace(attrs)


def _public_name(name: Any) -> Any:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"chat templates cannot set the underscore attribute {name!r}")
    return name


def _prepare_message(message: dict) -> dict:
    """A copy of `message` with reasoning under `reasoning_content` and tool-call arguments as objects."""
    if not isinstance(message, dict):
        raise TemplateError(f"a message must be an object, got {type(message).__name__}")
    message = copy.deepcopy(message)
    reasoning = next((message[k] for k in _REASONING_ALIASES if message.get(k) is not None), None)
    if reasoning is not None:
        message.setdefault("thinking", reasoning)
        message["reasoning_content"] = reasoning
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            target = call.get("function", call) if isinstance(call, dict) else None
            if isinstance(target, dict) and isinstance(target.get("arguments"), str):
                target["arguments"] = _decode_arguments(target["arguments"], target.get("name"))
    return message


def _decode_arguments(text: str, name: Any) -> dict:
    if not text.strip():
        return {}
    try:
        arguments = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TemplateError(f"arguments of tool call {name!r} are not valid JSON: {exc}") from exc
    if not isinstance(arguments, dict):
        raise TemplateError(f"arguments of tool call {name!r} must be a JSON object, got {type(arguments).__name__}")
    return arguments
