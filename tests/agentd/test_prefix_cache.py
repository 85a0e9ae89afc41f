"""agentd/prefix_cache.py: restore into the engine's state, and the miss explanation."""

from __future__ import annotations

import numpy as np
import pytest

from agentd.prefix_cache import PrefixCache
from cache.session import SessionCache

IDS = np.random.default_rng(3).integers(0, 248000, 300).tolist()


def _cache_with(model, tokens) -> PrefixCache:
    cache = PrefixCache(model, SessionCache(model.fingerprint, 1 << 28, None, 0), interval=2048)
    state = model.new_state()
    model.forward(tokens, state)
    cache.save(tokens, state)
    return cache


def test_restore_continues_like_the_uninterrupted_state(tiny_model):
    cache = _cache_with(tiny_model, IDS[:200])
    restored = cache.restore(IDS[:260])
    assert (restored.num_cached_tokens, restored.tier) == (200, "ram")
    uninterrupted = tiny_model.new_state()
    expected = tiny_model.forward(IDS[:260], uninterrupted)[200:]
    np.testing.assert_allclose(tiny_model.forward(IDS[200:260], restored.state), expected, atol=1e-4)
    miss = cache.restore(IDS[1:50])
    assert (miss.num_cached_tokens, miss.tier, miss.state.position) == (0, None, 0)


def test_explain_gives_a_reason_only_when_a_divergence_costs_reuse(tiny_model):
    cache = _cache_with(tiny_model, IDS[:200])
    extended = cache.explain(IDS[:260])  # new tokens after everything cached: nothing is lost
    assert (extended["num_cached_tokens"], extended["miss_reason"]) == (200, None)
    edited = cache.explain(IDS[:150] + [7] * 100)  # differs at 150: only the deepest checkpoint before it
    assert edited["num_cached_tokens"] == 0 and edited["num_matched_tokens"] >= 128
    assert "diverges" in edited["miss_reason"] and str(edited["num_matched_tokens"]) in edited["miss_reason"]


def _forwarded(model, tokens):
    state = model.new_state()
    model.forward(tokens, state)
    return state


@pytest.mark.parametrize("shared", [200, 150])
def test_the_next_turn_restores_into_the_previous_turns_live_state(tiny_model, shared):
    """The previous turn's state shares `shared` tokens, then has its own reply. Sharing all 200
    tokens of the checkpoint, its KV rows stay and only the recurrent state comes from the cache;
    sharing 150, rows 150..200 are copied in from the cache."""
    cache = _cache_with(tiny_model, IDS[:200])
    previous_turn = [*IDS[:shared], 11, 12, 13]
    live = _forwarded(tiny_model, previous_turn)
    cache.keep_live(previous_turn, live)
    assert cache.stats()["live"] == {"states": 1, "bytes": live.nbytes}
    restored = cache.restore(IDS[:260])
    assert restored.state is live and restored.num_cached_tokens == 200 and cache.stats()["live"]["states"] == 0
    expected = tiny_model.forward(IDS[:260], tiny_model.new_state())[200:]
    np.testing.assert_allclose(tiny_model.forward(IDS[200:260], restored.state), expected, atol=1e-4)
    assert cache.restore(IDS[:260]).state is not live  # taken out of the pool


def test_a_live_state_without_a_usable_checkpoint_stays_live(tiny_model):
    cache = _cache_with(tiny_model, IDS[:200])
    live_tokens = [*IDS[100:130]]
    live = _forwarded(tiny_model, live_tokens)
    cache.keep_live(live_tokens, live)
    miss = cache.restore([*IDS[100:120], 9, 9])  # shares 20 tokens with the live state, no checkpoint
    assert miss.num_cached_tokens == 0 and miss.state is not live and miss.state.position == 0
    assert cache.restore([*IDS[100:120], 9, 9]).state is not live
    assert cache._live and cache._live[0][1] is live and live.position == 30  # untouched
