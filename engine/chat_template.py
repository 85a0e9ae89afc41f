"""Chat templates: render a conversation to prompt text the way Hugging Face transformers does.

Templates come from GGUF files (untrusted), so they run in jinja2's immutable sandbox with the
environment transformers gives them (trim_blocks, lstrip_blocks, loop controls, its `tojson`,
`raise_exception`, `strftime_now`). Inputs are prepared as transformers and llama.cpp do: reasoning
under its other names is copied to `reasoning_content`, and tool-call arguments sent as JSON text
(the OpenAI wire form) are decoded into objects, since templates walk them with `|items`.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from importlib import resources
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_TEMPLATE: str = (resources.files("engine") / "templates" / "qwen35.jinja").read_text(encoding="utf-8")

_REASONING_ALIASES = ("reasoning_content", "thinking", "reasoning")


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
        prepared = [_prepare_message(m) for m in messages]
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
