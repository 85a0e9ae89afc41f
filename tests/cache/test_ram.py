"""RAM tier: exact byte budget, shared KV blocks, spacing-preserving eviction, copy on read."""

import numpy as np
import pytest

from cache.radix import as_tokens, checkpoint_key
from cache.ram import CachedState, RamTier, StoredState

RECURRENT_BYTES = 2 * (3 * 8 + 2 * 4 * 4) * 4  # two layers of (conv [3, 8], ssm [2, 4, 4]) float32
KV_BYTES_PER_TOKEN = 2 * 2 * (2 * 4) * 4  # two layers of k and v, [2 heads, 4 dims] float32


def make_state(tokens) -> CachedState:
    """A state that is a pure function of the tokens: KV row i from (token i, i), recurrent from all."""
    tokens = as_tokens(tokens)
    rng = np.random.default_rng(int(checkpoint_key(tokens)[:12], 16))
    recurrent = tuple(
        (rng.standard_normal((3, 8), np.float32), rng.standard_normal((2, 4, 4), np.float32)) for _ in range(2)
    )
    rows = tokens.astype(np.float32)[:, None, None] + np.arange(len(tokens), dtype=np.float32)[:, None, None] / 1024
    shape = (len(tokens), 2, 4)
    kv = tuple((np.broadcast_to(rows + i, shape).copy(), np.broadcast_to(rows - i, shape).copy()) for i in range(2))
    return CachedState(len(tokens), recurrent, kv)


def assert_same_state(actual: CachedState | StoredState, expected: CachedState) -> None:
    if isinstance(actual, StoredState):
        actual = actual.copy()
    assert actual.position == expected.position
    for got, want in zip(actual.recurrent, expected.recurrent, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    for got, want in zip(actual.kv, expected.kv, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def _put(tier: RamTier, tokens) -> str:
    assert tier.put(tokens, make_state(tokens))
    return checkpoint_key(as_tokens(tokens))


def _positions(tier: RamTier) -> list[int]:
    return sorted(item["num_tokens"] for item in tier.describe())


def test_round_trip_copies_in_and_out():
    tier = RamTier(10**6, block_size=4)
    tokens = list(range(50, 61))
    original = make_state(tokens)
    assert tier.put(tokens, original)
    original.kv[0][0][:] = -1  # the caller reuses its buffers
    original.recurrent[0][0][:] = -1
    key = checkpoint_key(as_tokens(tokens))
    first = tier.stored(key).copy()
    assert_same_state(first, make_state(tokens))
    first.kv[1][1][:] = 7  # the caller mutates its hit
    first.recurrent[1][1][:] = 7
    assert_same_state(tier.stored(key).copy(), make_state(tokens))
    assert tier.stored("absent") is None
    tier.sanity_check()


def test_kv_blocks_are_shared_and_counted_once():
    tier = RamTier(10**6, block_size=4)
    prefix = list(range(8))
    a = _put(tier, prefix + [20, 21, 22, 23, 24, 25])  # blocks p0 p1 a2, tail of 2
    _put(tier, prefix + [30, 31, 32])  # blocks p0 p1, tail of 3
    block = 4 * KV_BYTES_PER_TOKEN
    assert tier.num_blocks == 3
    assert tier.nbytes == 2 * RECURRENT_BYTES + 3 * block + (2 + 3) * KV_BYTES_PER_TOKEN
    tier.remove(a)
    assert tier.num_blocks == 2
    assert tier.nbytes == RECURRENT_BYTES + 2 * block + 3 * KV_BYTES_PER_TOKEN
    tier.sanity_check()


def test_eviction_drops_the_checkpoint_whose_neighbours_are_closest():
    positions = [10, 20, 30, 33, 40, 50]
    tokens = list(range(1000, 1050))
    roomy = RamTier(10**6, block_size=64)  # no full blocks: every byte belongs to one checkpoint
    for n in positions:
        _put(roomy, tokens[:n])
    tight = RamTier(roomy.nbytes - 1, block_size=64)
    for n in positions:
        _put(tight, tokens[:n])
    assert _positions(tight) == [10, 20, 30, 40, 50]
    tight.sanity_check()


def test_thinning_keeps_the_newest_and_spreads_the_rest():
    tokens = list(range(2000, 2400))
    tier = RamTier(400 * KV_BYTES_PER_TOKEN + 6 * RECURRENT_BYTES, block_size=8)
    for n in range(10, 401, 10):
        _put(tier, tokens[:n])
        assert max(_positions(tier)) == n
        tier.sanity_check()
    kept = _positions(tier)
    gaps = np.diff([0, *kept])
    assert 3 <= len(kept) <= 8
    assert gaps.max() <= 1.5 * gaps.min()  # dropping the oldest instead would leave one huge gap


def test_the_least_recently_used_session_is_thinned_first():
    old_prompt, new_prompt = list(range(100, 300)), list(range(500, 700))
    roomy = RamTier(10**9, block_size=4)
    for n in (10, 20, 30, 40):
        _put(roomy, old_prompt[:n]), _put(roomy, new_prompt[:n])
    tier = RamTier(roomy.nbytes + 40 * KV_BYTES_PER_TOKEN, block_size=4)
    old = [_put(tier, old_prompt[:n]) for n in (10, 20, 30, 40)]
    new = [_put(tier, new_prompt[:n]) for n in (10, 20, 30, 40)]
    lost_old = []
    for n in range(50, 110, 10):  # only the new session keeps working
        new.append(_put(tier, new_prompt[:n]))
        keys = {item["key"] for item in tier.describe()}
        lost_old += [key for key in old if key not in keys and key not in lost_old]
        if len(lost_old) < len(old):
            assert set(new) <= keys
        tier.sanity_check()
    assert len(lost_old) == len(old) and lost_old[-1] == old[-1]  # its newest checkpoint went last


def test_budget_holds_under_a_random_multi_session_workload():
    rng = np.random.default_rng(1)
    budget = 100_000  # about three long sessions
    tier = RamTier(budget, block_size=8)
    system = rng.integers(0, 50, 24).tolist()
    sessions = [list(system) for _ in range(6)]
    hits, stored = 0, set()
    for _ in range(400):
        number = int(rng.integers(len(sessions)))
        prompt = sessions[number] if len(sessions[number]) < 300 else list(system)  # long ones start over
        if rng.random() < 0.1:  # history rewritten: the prompt diverges somewhere
            prompt = prompt[: int(rng.integers(len(system), len(prompt) + 1))]
        prompt = prompt + rng.integers(0, 50, int(rng.integers(1, 20))).tolist()
        sessions[number] = prompt
        match = tier.match(prompt, len(prompt) - 1)
        if match.checkpoint_id is not None:
            hits += match.num_cached_tokens > len(system)
            assert_same_state(tier.stored(match.checkpoint_id), make_state(prompt[: match.num_cached_tokens]))
        for n in sorted({len(system), len(prompt) - 3, len(prompt) - 1}):
            assert tier.put(prompt[:n], make_state(prompt[:n]))
            stored.add(checkpoint_key(as_tokens(prompt[:n])))
        assert tier.nbytes <= budget
        tier.sanity_check()
    assert hits > 150 and len(tier) < len(stored) / 3


def test_a_state_larger_than_the_budget_is_not_kept():
    tier = RamTier(RECURRENT_BYTES + 5 * KV_BYTES_PER_TOKEN, block_size=4)
    assert tier.put([1, 2, 3], make_state([1, 2, 3]))
    assert not tier.put(list(range(6)), make_state(list(range(6))))
    assert _positions(tier) == [3]
    tier.sanity_check()


def test_bad_states_are_rejected():
    tier = RamTier(10**6, block_size=4)
    tier.put([1, 2], make_state([1, 2]))
    with pytest.raises(ValueError, match="position 3 but 2 tokens"):
        tier.put([1, 2], make_state([1, 2, 3]))
    other = make_state([4, 5])
    with pytest.raises(ValueError, match="layout"):
        tier.put([4, 5], CachedState(2, other.recurrent[:1], other.kv))
    with pytest.raises(ValueError, match="expected 3 rows"):
        CachedState(3, (), ((np.zeros((2, 1)), np.zeros((2, 1))),))
    with pytest.raises(ValueError, match="numeric numpy array"):
        CachedState(0, ((np.array([None]),),), ())


def test_sanity_check_catches_wrong_accounting():
    tier = RamTier(10**6, block_size=4)
    tier.put(list(range(9)), make_state(list(range(9))))
    tier.nbytes += 1
    with pytest.raises(AssertionError, match="nbytes"):
        tier.sanity_check()
