"""Batched decoding is exact: with the batch-invariant CPU backend, each sequence's logits in a
batch (and a prompt chunk's beside decode rows) are bitwise identical to running it alone."""

from __future__ import annotations

import numpy as np
import pytest

from engine import load_model

pytest.importorskip("kernels._cpu", reason="the compiled CPU extension is not built")

PROMPTS = [[248045, 846, 198], [9419, 11, 1879, 0, 35, 17, 5], [400], [12, 77, 1000, 2, 3, 4, 8, 9, 10, 11]]
STEPS = [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20]]


def _prefilled(model, prompts):
    states = [model.new_state() for _ in prompts]
    for prompt, state in zip(prompts, states):
        model.forward(prompt, state)
    return states


@pytest.mark.parametrize("preset,qtype", [("tiny", "f32"), ("tiny-moe", "f32"), ("tiny", "q4_k_m"),
                                          ("tiny-moe", "q8_0")])
def test_batch_rows_match_sequences_alone(model_file, preset, qtype):
    model = load_model(model_file(preset, qtype), backend="cpu")
    alone, batched = _prefilled(model, PROMPTS), _prefilled(model, PROMPTS)  # different positions
    for step in range(len(STEPS[0])):
        tokens = [s[step] for s in STEPS]
        got = model.forward_batch(tokens, batched)
        assert got.shape == (len(PROMPTS), model.config.n_vocab)
        for i, (token, state) in enumerate(zip(tokens, alone)):
            assert np.array_equal(got[i], model.forward([token], state, last_only=True)[0]), (step, i)
    assert [s.position for s in batched] == [s.position for s in alone]


def test_subsets_of_a_batch_give_the_same_rows(model_file):
    """Which other rows share the pass (and how many) does not change a row."""
    model = load_model(model_file("tiny", "q4_k_m"), backend="cpu")
    full = model.forward_batch([5, 6, 7, 8], _prefilled(model, PROMPTS))
    pair = model.forward_batch([7, 5], _prefilled(model, [PROMPTS[2], PROMPTS[0]]))
    assert np.array_equal(pair[0], full[2]) and np.array_equal(pair[1], full[0])


def test_prompt_chunk_beside_decode_rows(model_file):
    """A prefill chunk in the same pass as decode rows: its last logits and its state continue
    exactly as if it ran alone."""
    model = load_model(model_file("tiny-moe", "q4_k_m"), backend="cpu")
    decoding = _prefilled(model, PROMPTS[:2])
    fresh = model.new_state()
    got = model.forward_segments([[5], [6], PROMPTS[3]], decoding + [fresh])
    ref_states = _prefilled(model, PROMPTS[:2])
    assert np.array_equal(got[0], model.forward([5], ref_states[0], last_only=True)[0])
    assert np.array_equal(got[1], model.forward([6], ref_states[1], last_only=True)[0])
    ref_fresh = model.new_state()
    assert np.array_equal(got[2], model.forward(PROMPTS[3], ref_fresh, last_only=True)[0])
    assert np.array_equal(model.forward([7], fresh), model.forward([7], ref_fresh))


def test_bad_batches_are_refused(tiny_path):
    model = load_model(tiny_path, backend="numpy")
    state = model.new_state()
    with pytest.raises(ValueError, match="twice"):
        model.forward_batch([1, 2], [state, state])
    with pytest.raises(ValueError, match="one non-empty token list per state"):
        model.forward_batch([1, 2], [state])
    with pytest.raises(ValueError, match="out of range"):
        model.forward_batch([model.config.n_vocab], [state])
    assert state.position == 0
