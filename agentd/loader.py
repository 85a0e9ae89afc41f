"""Load the served model once, with everything derived from it that requests share."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd.config import ServeConfig
from agentd.prefix_cache import PrefixCache
from engine.constraint import GrammarCompiler

log = logging.getLogger("agentd")

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
    from engine.synthetic import demo_model_notice, ensure_default_model

    if config.model_path:
        path = Path(config.model_path)
    else:
        path = ensure_default_model(progress=progress, say=log.info)
        log.warning("%s", demo_model_notice(path, "agentd serve"))
    started = time.monotonic()
    model = engine.load_model(path, progress=progress, backend=config.backend, threads=config.threads)
    log.info("model %s loaded in %.1f s on the %s backend: %s", path.name, time.monotonic() - started,
             model.backend.name, resident_summary(model))
    loaded = prepare(model, name=config.model_name or path.stem, n_ctx=config.n_ctx)
    if not config.cache_enabled:
        return loaded
    cache = PrefixCache.open(
        model, config.cache_ram_mb, config.cache_dir, config.cache_disk_mb, config.checkpoint_interval,
        max_live=config.max_active,
    )
    return dataclasses.replace(loaded, cache=cache)


def resident_summary(model: Any) -> str:
    """Weight bytes as mapped from the file and as decoded by the backend, and the process RSS."""
    mapped = model.path.stat().st_size
    decoded = model.backend.resident_weight_bytes
    with open("/proc/self/status") as status:
        rss = next((int(line.split()[1]) << 10 for line in status if line.startswith("VmRSS:")), 0)
    return f"weights {mapped / 2**20:,.0f} MiB mapped + {decoded / 2**20:,.0f} MiB decoded, RSS {rss / 2**20:,.0f} MiB"


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
