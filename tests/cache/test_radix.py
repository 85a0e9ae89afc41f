"""The prefix index against a brute-force reference, plus its helpers and invariant checks."""

import numpy as np
import pytest

from cache.radix import Match, RadixIndex, as_tokens, block_ids, checkpoint_key


def _reference_match(stored: dict[str, list[int]], query: list[int], max_tokens: int | None = None) -> Match:
    """Deepest stored sequence that is a prefix of `query`, and the longest common prefix overall."""
    limit = len(query) if max_tokens is None else min(len(query), max_tokens)
    best_id, best_len, matched = None, 0, 0
    for checkpoint_id, tokens in stored.items():
        common = 0
        while common < min(len(tokens), len(query)) and tokens[common] == query[common]:
            common += 1
        matched = max(matched, common)
        if common == len(tokens) and len(tokens) <= limit and (best_id is None or len(tokens) > best_len):
            best_id, best_len = checkpoint_id, len(tokens)
    return Match(best_id, best_len, matched)


def test_partial_blocks_and_max_tokens():
    index = RadixIndex(block_size=4)
    prompt = list(range(100, 120))
    index.insert(prompt[:10], "ten")
    index.insert(prompt[:4], "four")
    index.insert(prompt[:13], "thirteen")
    assert index.match(prompt) == Match("thirteen", 13, 13)
    assert index.match(prompt[:11] + [7, 8]) == Match("ten", 10, 11)
    assert index.match(prompt, max_tokens=12) == Match("ten", 10, 13)
    assert index.match(prompt, max_tokens=9) == Match("four", 4, 13)
    assert index.match(prompt[:3]) == Match(None, 0, 3)
    assert index.match([1, 2, 3]) == Match(None, 0, 0)
    assert index.position("thirteen") == 13
    index.sanity_check()


def test_random_workload_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    index = RadixIndex(block_size=4)
    stored: dict[str, list[int]] = {}
    for step in range(600):
        if stored and rng.random() < 0.3:
            victim = list(stored)[rng.integers(len(stored))]
            index.remove(victim)
            del stored[victim]
        else:
            tokens = rng.integers(0, 3, rng.integers(0, 30)).tolist()
            if tokens not in stored.values():
                index.insert(tokens, f"c{step}")
                stored[f"c{step}"] = tokens
        query = rng.integers(0, 3, rng.integers(0, 34)).tolist()
        max_tokens = None if rng.random() < 0.5 else int(rng.integers(0, 34))
        assert index.match(query, max_tokens) == _reference_match(stored, query, max_tokens)
        index.sanity_check()
    assert len(index) == len(stored)


def test_sessions_with_a_common_prefix_share_it():
    index = RadixIndex(block_size=4)
    system = list(range(9))
    index.insert(system, "system")
    index.insert(system + [50, 51, 52, 53, 54], "session-a")
    index.insert(system + [60, 61, 62], "session-b")
    assert [key for _, key in index.chain("session-a")] == ["system", "session-a"]
    assert index.chain("session-b") == [(9, "system"), (12, "session-b")]
    assert index.has_descendants("system")
    assert not index.has_descendants("session-a")
    assert index.match(system + [60, 61, 99]) == Match("system", 9, 11)
    with pytest.raises(ValueError, match="already indexed"):
        index.insert(system, "again")
    index.remove("session-a")
    assert index.match(system + [50, 51, 52, 53, 54]).checkpoint_id == "system"
    index.sanity_check()


def test_remove_prunes_blocks_nobody_needs():
    index = RadixIndex(block_size=4)
    index.insert(list(range(30)), "long")
    index.insert(list(range(5)), "short")
    index.remove("long")
    assert index.match(list(range(30))) == Match("short", 5, 5)
    index.remove("short")
    assert index.match(list(range(30))) == Match(None, 0, 0)
    assert len(index) == 0
    index.sanity_check()
    with pytest.raises(KeyError, match="not indexed"):
        index.remove("short")


def test_sanity_check_catches_a_broken_tree():
    index = RadixIndex(block_size=2)
    index.insert([1, 2, 3], "a")
    index._where["ghost"] = index._where["a"]
    with pytest.raises(AssertionError):
        index.sanity_check()


def test_block_ids_name_prefixes():
    a = as_tokens([5, 6, 7, 8, 9, 10, 11])
    b = as_tokens([5, 6, 7, 8, 9, 99, 11, 12, 13])
    ids_a, ids_b = block_ids(a, 3), block_ids(b, 3)
    assert len(ids_a) == 2 and len(ids_b) == 3
    assert ids_a[0] == ids_b[0] and ids_a[1] != ids_b[1]
    assert block_ids(as_tokens([1, 2, 3, 4]), 2)[1] != block_ids(as_tokens([9, 9, 3, 4]), 2)[1]  # chained
    assert checkpoint_key(a) == checkpoint_key(as_tokens(list(a))) != checkpoint_key(a[:-1])


@pytest.mark.parametrize(
    ("tokens", "message"),
    [([1.5, 2.0], "integers"), ([[1, 2]], "1-D"), ([-1, 2], r"\[0, 2\*\*32\)"), ([2**32], r"\[0, 2\*\*32\)")],
)
def test_bad_token_ids_are_rejected(tokens, message):
    with pytest.raises(ValueError, match=message):
        as_tokens(tokens)
