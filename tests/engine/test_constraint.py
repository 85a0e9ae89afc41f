"""Grammar constraints on the real Qwen3.5 tokenizer: masks, special tokens, stop states, errors."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from engine.constraint import GrammarCompiler
from tests.engine.grammar_helpers import IM_END, VOCAB_SIZE, compiler, encoding, generate


def feed(constraint, encoding, text: str) -> None:
    for token in encoding.encode(text, allowed_special="all"):
        assert constraint.mask()[token], f"{encoding.decode([token])!r} should be allowed"
        constraint.advance(token)


def test_mask_allows_exactly_the_grammar_continuations(compiler, encoding):
    constraint = compiler.matcher('start: "yes" | "no"')
    allowed = np.flatnonzero(constraint.mask())
    # Every allowed token is a prefix of an answer, and both answers' first tokens are allowed.
    for text in (encoding.decode([token]) for token in allowed):
        assert text and ("yes".startswith(text) or "no".startswith(text)), text
    assert encoding.encode("yes")[0] in allowed and encoding.encode("no")[0] in allowed
    assert not constraint.can_stop() and not constraint.is_done()
    feed(constraint, encoding, "yes")
    assert constraint.can_stop() and constraint.is_done()
    assert np.flatnonzero(constraint.mask()).tolist() == [IM_END]


def test_padding_ids_are_never_allowed(compiler, encoding):
    mask = compiler.matcher("start: <[*]>").mask()  # any token id
    assert mask.shape == (VOCAB_SIZE,) and mask.dtype == np.bool_
    assert mask[: encoding.n_vocab].all()
    assert not mask[encoding.n_vocab :].any()


def test_special_tokens_are_named_in_the_grammar_not_spelled_as_text(compiler, encoding):
    tool_call = encoding.encode_single_token("<tool_call>")
    for grammar in ('start: <tool_call> "x"', f'start: <[{tool_call}]> "x"'):
        constraint = compiler.matcher(grammar)
        assert np.flatnonzero(constraint.mask()).tolist() == [tool_call]
        constraint.advance(tool_call)
        feed(constraint, encoding, "x")
        assert constraint.is_done()
    spelled = compiler.matcher('start: <tool_call> "x"')
    with pytest.raises(ValueError, match="not allowed"):
        spelled.advance(encoding.encode("<", disallowed_special=())[0])


def test_text_regexes_never_match_special_tokens(compiler, encoding):
    mask = compiler.matcher(r"start: /(?s:.*)/").mask()
    for special in ("<tool_call>", "</tool_call>", "<think>", "</think>", "<|im_start|>"):
        assert not mask[encoding.encode_single_token(special)]
    assert mask[IM_END]  # the empty text is complete: EOS may end it
    assert mask[encoding.encode("hello")[0]]


def test_eos_ends_a_complete_output_and_is_refused_before(compiler, encoding):
    constraint = compiler.matcher('start: "a" /[0-9]*/')
    assert not constraint.mask()[IM_END]
    with pytest.raises(ValueError, match="not allowed"):
        constraint.advance(IM_END)
    constraint = compiler.matcher('start: "a" /[0-9]*/')
    feed(constraint, encoding, "a12")
    assert constraint.can_stop() and not constraint.is_done()  # more digits may follow
    constraint.advance(IM_END)
    assert constraint.is_done()


def test_advance_rejects_disallowed_and_out_of_range_tokens(compiler, encoding):
    constraint = compiler.matcher('start: "abc"')
    with pytest.raises(ValueError, match="not allowed"):
        constraint.advance(encoding.encode("xyz")[0])
    with pytest.raises(ValueError, match="outside"):
        compiler.matcher('start: "abc"').advance(VOCAB_SIZE)
    with pytest.raises(ValueError, match="padding"):
        compiler.matcher("start: <[*]>").advance(VOCAB_SIZE - 1)


def test_invalid_grammars_raise_value_error(compiler):
    for grammar in ("start: undefined_rule", 'start: "a" (', 'start: %json {"type": "nonsense"}'):
        with pytest.raises(ValueError, match="invalid grammar"):
            compiler.matcher(grammar)
    with pytest.raises(ValueError, match="string"):
        compiler.matcher({"type": "object"})


def test_compiler_rejects_inconsistent_sizes(encoding):
    with pytest.raises(ValueError, match="vocab_size"):
        GrammarCompiler(encoding, encoding.n_vocab - 1, IM_END)
    with pytest.raises(ValueError, match="eos_id"):
        GrammarCompiler(encoding, VOCAB_SIZE, VOCAB_SIZE - 1)


def test_random_sampling_under_a_mask_always_yields_grammar_text(compiler, encoding):
    grammar = r"""
start: item ("," item){0,4}
item: NAME "=" NUMBER
NAME: /[a-z]{1,6}/
NUMBER: /-?[0-9]{1,3}/
"""
    for seed in range(4):
        text = generate(compiler, encoding, grammar, seed, limit=80)  # the grammar bounds the output
        item = r"[a-z]{1,6}=-?[0-9]{1,3}"
        assert re.fullmatch(rf"{item}(,{item}){{0,4}}", text)


def test_mask_cost_per_token_is_small(compiler, encoding):
    constraint = compiler.matcher(r'start: "{\"path\": \"" /[^"\\\n]{0,200}/ "\"}"')
    feed(constraint, encoding, '{"path": "src/')
    costs = []
    for piece in encoding.encode("engine/model/layers/attention_and_more/deeply/nested/file.py"):
        start = time.thread_time()
        constraint.mask()
        costs.append(time.thread_time() - start)
        constraint.advance(piece)
    # well under 1 ms on an idle core; the bound leaves room for a busy shared machine
    assert np.median(costs) < 0.005
