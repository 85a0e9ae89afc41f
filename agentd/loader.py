"""Load the served model once, with everything derived from it that requests share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd.config import ServeConfig
from agentd.prefix_cache import PrefixCache
from engine.constraint import GrammarCompiler

_PROBE_MESSAGES = [
    {"role": "user", "content": "x"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "probe", "arguments": "{}"}}],
    },
]


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # engine.Model, or a test double with the same surface
    name: str  # the id /v1/models reports
    n_ctx: int  # prompt + output tokens one request may use
    grammars: GrammarCompiler  # built once (~1 s); makes one constraint per request
    tool_format: str  # "qwen_xml" | "hermes": how this model's template writes tool calls
    max_token_bytes: int  # the most text bytes one token stands for: prompts above n_ctx times it cannot fit
    cache: PrefixCache | None = None  # the session cache, when enabled


def load(config: ServeConfig, progress: bool = True) -> LoadedModel:
    """Load `config.model_path` (or the embedded default model); slow, run it off the event loop."""
    import engine
    from engine.synthetic import ensure_default_model

    path = Path(config.model_path) if config.model_path else ensure_default_model(progress=progress)
    model = engine.load_model(path, progress=progress)
    loaded = prepare(model, name=config.model_name or path.stem, n_ctx=config.n_ctx)
    if not config.cache_enabled:
        return loaded
    cache = PrefixCache.open(
        model, config.cache_ram_mb, config.cache_dir, config.cache_disk_mb, config.checkpoint_interval,
        max_live=config.max_active,
    )
    return dataclasses.replace(loaded, cache=cache)


def prepare(model: Any, name: str, n_ctx: int | None = None) -> LoadedModel:
    """Derive the shared per-model objects; `n_ctx` None means the model's trained context."""
    tokenizer = model.tokenizer
    grammars = GrammarCompiler(tokenizer.encoding, model.config.n_vocab, tokenizer.eos_id)
    return LoadedModel(
        model=model,
        name=name,
        n_ctx=n_ctx or model.config.context_length,
        grammars=grammars,
        tool_format=detect_tool_format(model.chat_template),
        max_token_bytes=max(len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)),
    )


def detect_tool_format(chat_template: Any) -> str:
    """How the template renders an assistant tool call; the model writes calls the same way."""
    rendered = chat_template.render(_PROBE_MESSAGES, add_generation_prompt=False)
    return "qwen_xml" if "<function=probe>" in rendered else "hermes"
