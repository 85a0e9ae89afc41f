"""Plain generation loop: prefill in chunks, then sample one token at a time."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from engine.model import Model
from engine.sampling import Sampler, SamplingParams
from engine.state import State

PREFILL_CHUNK = 512  # bounds the attention score memory of one forward call


def prefill(model: Model, token_ids: Sequence[int], state: State, chunk: int = PREFILL_CHUNK) -> np.ndarray:
    """Consume `token_ids`; returns the logits after the last one ([n_vocab])."""
    logits = None
    for start in range(0, len(token_ids), chunk):
        logits = model.forward(token_ids[start : start + chunk], state, last_only=True)
    if logits is None:
        raise ValueError("prefill needs at least one token")
    return logits[0]


def generate(
    model: Model,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    max_tokens: int,
    state: State | None = None,
) -> Iterator[int]:
    """Yield sampled token ids until an end-of-generation token or `max_tokens`."""
    state = state if state is not None else model.new_state()
    sampler = Sampler(params)
    logits = prefill(model, prompt_ids, state)
    generated: list[int] = []
    eog = model.tokenizer.eog_ids
    for _ in range(max_tokens):
        token = sampler.sample(logits, generated)
        if token in eog:
            return
        generated.append(token)
        yield token
        logits = model.forward([token], state, last_only=True)[0]
