"""Sampling: exact truncation sets, empirical distributions against a naive reference, penalties,
masks, reproducibility, parameter validation, logprobs and speed on a Qwen3.5-sized vocabulary."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from engine.sampling import Sampler, SamplingParams, apply_penalties, truncated_distribution

QWEN_VOCAB = 248320
# 99.9% quantiles of the chi-square distribution by degrees of freedom.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


def reference_distribution(logits, params: SamplingParams) -> dict[int, float]:
    """Naive version of the documented chain: full sort, plain Python loops."""
    scaled = [x / params.temperature for x in logits]
    allowed = [i for i in range(len(scaled)) if scaled[i] > -math.inf]
    order = sorted(allowed, key=lambda i: -scaled[i])
    if params.top_k:
        order = order[: params.top_k]
    peak = scaled[order[0]]
    weights = {i: math.exp(scaled[i] - peak) for i in order}
    total = sum(weights.values())
    if params.top_p < 1:
        kept, mass = [], 0.0
        for i in order:
            kept.append(i)
            mass += weights[i] / total
            if mass >= params.top_p:
                break
        order = kept
    order = [i for i in order if weights[i] >= params.min_p * weights[order[0]]]
    total = sum(weights[i] for i in order)
    return {i: weights[i] / total for i in order}


def draw_counts(sampler: Sampler, logits, draws: int, mask=None) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _ in range(draws):
        token = sampler.sample(logits, mask=mask)
        counts[token] = counts.get(token, 0) + 1
    return counts


def assert_matches(counts: dict[int, int], expected: dict[int, float]) -> None:
    assert set(counts) <= set(expected), f"tokens outside the support: {set(counts) - set(expected)}"
    draws = sum(counts.values())
    chi2 = sum((counts.get(i, 0) - draws * p) ** 2 / (draws * p) for i, p in expected.items())
    assert chi2 < CHI2_999[len(expected) - 1], (chi2, counts, expected)


SMALL_LOGITS = np.array([2.0, 1.5, 1.0, 0.2, -0.5, -1.0], dtype=np.float32)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(temperature=0.6, seed=2),
        SamplingParams(temperature=1.7, top_k=3, seed=3),
        SamplingParams(temperature=1.0, top_p=0.8, seed=4),
        SamplingParams(temperature=1.0, min_p=0.3, seed=5),
        SamplingParams(temperature=1.3, top_k=5, top_p=0.9, min_p=0.15, seed=6),
    ],
)
def test_empirical_distribution_matches_the_truncated_renormalised_one(params):
    expected = reference_distribution(SMALL_LOGITS.tolist(), params)
    assert_matches(draw_counts(Sampler(params), SMALL_LOGITS, 5000), expected)


def test_draws_across_blocks_of_a_larger_vocabulary():
    # Mass spread over tokens in different 1024-blocks, including the last partial block.
    logits = np.full(5000, -np.inf, dtype=np.float32)
    support = [3, 1023, 1024, 2047, 4095, 4999]
    logits[support] = [0.5, 1.0, 0.0, 1.5, 0.2, 0.8]
    params = SamplingParams(seed=11)
    expected = reference_distribution(logits.tolist(), params)
    assert_matches(draw_counts(Sampler(params), logits, 5000), expected)


@pytest.mark.parametrize(
    "params, kept",
    [
        (SamplingParams(top_p=0.3), {1}),
        (SamplingParams(top_p=0.6), {1, 3}),
        (SamplingParams(top_p=0.7), {1, 3, 4}),
        (SamplingParams(top_p=0.9), {1, 3, 4, 2}),
        (SamplingParams(min_p=0.6), {1, 3}),  # p >= 0.24
        (SamplingParams(min_p=0.45), {1, 3, 4}),  # p >= 0.18
        (SamplingParams(min_p=0.2), {1, 3, 4, 2}),  # p >= 0.08
        (SamplingParams(top_k=2, top_p=0.6), {1}),  # top-2 renormalised: .615, .385
        (SamplingParams(top_k=2, top_p=0.7), {1, 3}),
        (SamplingParams(top_p=0.9, min_p=0.55), {1, 3}),  # min-p is the shorter cut
        (SamplingParams(top_p=0.6, min_p=0.2), {1, 3}),  # top-p is the shorter cut
    ],
)
def test_top_p_and_min_p_cut_exactly_the_expected_tokens(params, kept):
    probs = np.array([0.05, 0.4, 0.1, 0.25, 0.2])  # descending: 1 (.4), 3 (.25), 4 (.2), 2 (.1), 0 (.05)
    ids, p = truncated_distribution(np.log(probs).astype(np.float32), params)
    assert set(ids.tolist()) == kept
    np.testing.assert_allclose(p, probs[ids] / probs[ids].sum(), rtol=1e-5)


def test_temperature_scales_before_truncation():
    logits = np.log(np.array([0.5, 0.3, 0.2])).astype(np.float32)
    hot = SamplingParams(temperature=3.0, top_p=0.6)
    ids, p = truncated_distribution(logits, hot)
    # At T=3 the probabilities flatten to about .39/.33/.28: 0.6 needs two tokens (0.5 alone at T=1).
    assert set(ids.tolist()) == {0, 1}
    flat = np.array([0.5, 0.3]) ** (1 / 3)
    np.testing.assert_allclose(p, flat / flat.sum(), rtol=1e-5)


@pytest.mark.parametrize("vocab", [5000, QWEN_VOCAB])
@pytest.mark.parametrize("top_p", [0.5, 0.95])
@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])
def test_top_p_on_a_large_vocabulary_matches_a_full_sort(vocab, top_p, scale):
    # The sets range from 1 token (scale 12) to most of the vocabulary (0.5): every path of the cut.
    rng = np.random.default_rng(int(scale * 100 + top_p * 10))
    logits = (rng.standard_normal(vocab) * scale).astype(np.float32)
    ids, _ = truncated_distribution(logits, SamplingParams(top_p=top_p))
    weights = np.exp(logits.astype(np.float64) - logits.max())
    order = np.argsort(-weights, kind="stable")
    cumulative = np.cumsum(weights[order]) / weights.sum()
    expected = order[: int(np.searchsorted(cumulative, top_p)) + 1]
    # float32 vs float64 weights may move the cut by a token or two at the boundary
    assert abs(len(ids) - len(expected)) <= 2
    shorter = min(len(ids), len(expected))
    assert set(expected[:shorter].tolist()) <= set(ids.tolist())


def test_greedy_is_argmax_and_top_k_one_is_greedy_at_any_temperature():
    rng = np.random.default_rng(0)
    for trial in range(5):
        logits = rng.standard_normal(QWEN_VOCAB).astype(np.float32)
        best = int(np.argmax(logits))
        assert Sampler(SamplingParams(temperature=0)).sample(logits) == best
        for temperature in (0.3, 1.0, 5.0):
            sampler = Sampler(SamplingParams(temperature=temperature, top_k=1, seed=trial))
            assert sampler.sample(logits) == best


@pytest.mark.parametrize("temperature", [1e-38, 1e-320, 5e-324])
def test_a_vanishing_temperature_samples_greedily_instead_of_overflowing(temperature):
    """Dividing float32 logits by 1e-38 used to give +inf (1e-320: 0/0 = NaN) and a failed request."""
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(5000) * 4).astype(np.float32)
    best = int(np.argmax(logits))
    for seed in range(5):
        assert Sampler(SamplingParams(temperature=temperature, seed=seed)).sample(logits) == best
    ids, probs = truncated_distribution(logits, SamplingParams(temperature=temperature))
    assert ids.tolist() == [best] and probs.tolist() == [1.0]


def test_greedy_respects_the_mask():
    logits = np.array([5.0, 1.0, 3.0, 4.0], dtype=np.float32)
    mask = np.array([False, True, True, False])
    assert Sampler(SamplingParams(temperature=0)).sample(logits, mask=mask) == 2


def test_mask_is_never_violated():
    rng = np.random.default_rng(7)
    params_list = [
        SamplingParams(seed=1),
        SamplingParams(temperature=2.0, top_k=50, seed=2),
        SamplingParams(top_p=0.9, seed=3),
        SamplingParams(min_p=0.1, seed=4),
        SamplingParams(temperature=0),
    ]
    for params in params_list:
        sampler = Sampler(params)
        for _ in range(12):
            logits = rng.standard_normal(QWEN_VOCAB, dtype=np.float32) * 4
            mask = np.zeros(QWEN_VOCAB, dtype=bool)
            allowed = rng.choice(QWEN_VOCAB, size=rng.integers(1, 30), replace=False)
            mask[allowed] = True
            logits[~mask] += 50  # the best tokens are all forbidden
            assert mask[sampler.sample(logits, mask=mask)]


def test_top_k_larger_than_the_allowed_set_keeps_only_allowed_tokens():
    logits = np.zeros(100, dtype=np.float32)
    mask = np.zeros(100, dtype=bool)
    mask[[10, 20]] = True
    counts = draw_counts(Sampler(SamplingParams(top_k=50, seed=0)), logits, 400, mask=mask)
    assert set(counts) == {10, 20}


def test_penalties_change_logits_as_specified():
    logits = np.array([2.0, -1.0, 0.5, 3.0, 0.0], dtype=np.float32)
    history = [0, 1, 1, 3, 3, 3]
    params = SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.1)
    out = apply_penalties(logits, history, params)
    # repetition: positive / 2, negative * 2; then - 0.1 * count - 0.5 for every seen token
    expected = [2.0 / 2 - 0.1 - 0.5, -1.0 * 2 - 0.2 - 0.5, 0.5, 3.0 / 2 - 0.3 - 0.5, 0.0]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(logits, [2.0, -1.0, 0.5, 3.0, 0.0])  # input untouched


def test_negative_penalties_encourage_repeats_and_penalties_steer_greedy():
    logits = np.array([1.0, 0.9, 0.0], dtype=np.float32)

    def greedy(history, **penalty):
        return Sampler(SamplingParams(temperature=0, **penalty)).sample(logits, history)

    assert greedy([0]) == 0
    assert greedy([0], presence_penalty=0.2) == 1
    assert greedy([2, 2], frequency_penalty=-1.0) == 2
    assert greedy([0], repetition_penalty=1.2) == 1


def test_history_outside_the_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="history"):
        Sampler(SamplingParams(presence_penalty=1.0)).sample(np.zeros(4, np.float32), history=[4])


def test_same_seed_replays_the_same_tokens_and_another_seed_does_not():
    rng = np.random.default_rng(3)
    steps = [rng.standard_normal(QWEN_VOCAB, dtype=np.float32) * 2 for _ in range(8)]

    def run(seed):
        sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.95, seed=seed))
        history: list[int] = []
        for logits in steps:
            history.append(sampler.sample(logits, history))
        return history

    assert run(42) == run(42)
    assert run(42) != run(43)


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", "1"),
        ("temperature", 100.5),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_k", True),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("min_p", -0.01),
        ("min_p", 1.5),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3.0),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", float("inf")),
        ("repetition_penalty", 1e-320),
        ("repetition_penalty", 0.009),
        ("repetition_penalty", 101.0),
        ("seed", -1),
        ("seed", 1.5),
    ],
)
def test_invalid_params_raise_naming_the_field(field, value):
    params = SamplingParams(**{field: value})
    with pytest.raises(ValueError, match=field):
        params.validate()
    with pytest.raises(ValueError, match=field):
        Sampler(params)


def test_valid_edge_params_pass():
    for params in (
        SamplingParams(temperature=0, min_p=1.0, presence_penalty=2, frequency_penalty=-2, seed=0),
        SamplingParams(temperature=100.0, top_k=1, top_p=1e-9, repetition_penalty=10.0),
    ):
        params.validate()


def test_bad_logits_and_masks_raise():
    sampler = Sampler(SamplingParams(seed=0))
    with pytest.raises(ValueError, match="NaN"):
        sampler.sample(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="no token"):
        sampler.sample(np.zeros(3, np.float32), mask=np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="mask"):
        sampler.sample(np.zeros(3, np.float32), mask=np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="-inf"):
        sampler.sample(np.array([-np.inf, 0.0], dtype=np.float32), mask=np.array([True, False]))
    with pytest.raises(ValueError, match="1-D"):
        sampler.sample(np.zeros((2, 3), np.float32))


def test_logprobs_are_the_log_softmax_of_the_raw_logits():
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal(QWEN_VOCAB) * 3).astype(np.float32)
    reference = torch.log_softmax(torch.from_numpy(logits).double(), dim=0)
    result = Sampler.logprobs(logits, token_id=123, top_n=5)
    assert result.token_id == 123
    assert result.logprob == pytest.approx(float(reference[123]), abs=1e-9)
    values, indices = torch.topk(reference, 5)
    assert [token for token, _ in result.top] == indices.tolist()
    np.testing.assert_allclose([lp for _, lp in result.top], values.numpy(), atol=1e-9)
    assert Sampler.logprobs(logits, 0).top == ()
    with pytest.raises(ValueError, match="outside"):
        Sampler.logprobs(logits, QWEN_VOCAB)


def test_a_sample_on_the_qwen_vocabulary_is_fast():
    rng = np.random.default_rng(9)
    logits = (rng.standard_normal(QWEN_VOCAB) * 2).astype(np.float32)
    logits[rng.choice(QWEN_VOCAB, 30, replace=False)] += 12  # a peaked, model-like distribution
    history = rng.integers(0, QWEN_VOCAB, 300).tolist()
    settings = [
        SamplingParams(),
        SamplingParams(top_k=40, top_p=0.95, min_p=0.05),
        SamplingParams(top_p=0.9, presence_penalty=0.5, repetition_penalty=1.1),
    ]
    for params in settings:
        sampler = Sampler(params)
        costs = []
        for _ in range(15):
            start = time.thread_time()
            sampler.sample(logits, history)
            costs.append(time.thread_time() - start)
        # about 1 ms on an idle core; the bound leaves room for a busy shared machine
        assert np.median(costs) < 0.010, (params, np.median(costs))
