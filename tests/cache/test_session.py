"""The facade: prefix lookups across RAM and disk, restart, fallbacks, counters."""

import sqlite3

import numpy as np
import pytest

from cache.radix import as_tokens, checkpoint_key
from cache.session import DB_FILENAME, CachedState, SessionCache
from tests.cache.test_ram import assert_same_state, make_state
from tests.cache.test_store import limit_disk_pages

SYSTEM = list(range(1000, 1020))
SESSION_A = SYSTEM + list(range(50, 80))
SESSION_B = SYSTEM + list(range(300, 310))


def _cache(tmp_path, ram_bytes=10**6, disk=True) -> SessionCache:
    return SessionCache("model-a", ram_bytes, tmp_path if disk else None, 10**7, block_size=8)


def _store(cache: SessionCache, *prompts: list[int]) -> None:
    for tokens in prompts:
        cache.store(tokens, make_state(tokens))


def test_lookup_returns_the_deepest_proper_prefix(tmp_path):
    cache = _cache(tmp_path, disk=False)
    miss = cache.lookup(SESSION_A)
    assert (miss.checkpoint, miss.num_cached_tokens, miss.num_matched_tokens, miss.tier) == (None, 0, 0, None)
    _store(cache, SYSTEM, SESSION_A[:37], SESSION_A)
    found = cache.lookup(SESSION_A)  # the whole prompt is cached, but one token must still be computed
    assert (found.num_cached_tokens, found.num_matched_tokens, found.tier) == (37, len(SESSION_A), "ram")
    assert_same_state(found.checkpoint, make_state(SESSION_A[:37]))
    longer = cache.lookup(SESSION_A + [7, 7])
    assert (longer.num_cached_tokens, longer.num_matched_tokens) == (len(SESSION_A), len(SESSION_A))
    other = cache.lookup(SESSION_B)  # another session shares only the system prompt
    assert (other.num_cached_tokens, other.num_matched_tokens) == (len(SYSTEM), len(SYSTEM))
    assert cache.lookup([]).checkpoint is None
    cache.close()


def test_hits_are_copies(tmp_path):
    cache = _cache(tmp_path)
    _store(cache, SESSION_A)
    first = cache.lookup(SESSION_A + [1]).checkpoint
    first.kv[0][0][:] = 0
    first.recurrent[0][1][:] = 0
    assert_same_state(cache.lookup(SESSION_A + [1]).checkpoint, make_state(SESSION_A))
    cache.close()


def test_restart_serves_from_disk_then_from_ram(tmp_path):
    cache = _cache(tmp_path)
    _store(cache, SYSTEM, SESSION_A, SESSION_B)
    cache.close()
    restarted = _cache(tmp_path)
    assert (tmp_path / DB_FILENAME).exists()
    first = restarted.lookup(SESSION_A + [5])
    assert (first.tier, first.num_cached_tokens) == ("disk", len(SESSION_A))
    assert_same_state(first.checkpoint, make_state(SESSION_A))
    again = restarted.lookup(SESSION_A + [5])
    assert (again.tier, again.num_cached_tokens) == ("ram", len(SESSION_A))
    stats = restarted.stats()
    assert (stats["hits_disk"], stats["hits_ram"], stats["misses"]) == (1, 1, 0)
    assert stats["disk"]["entries"] == 3 and stats["ram"]["entries"] == 1
    listed = {e["num_tokens"]: (e["in_ram"], e["on_disk"]) for e in restarted.entries()}
    assert listed == {len(SYSTEM): (False, True), len(SESSION_B): (False, True), len(SESSION_A): (True, True)}
    restarted.sanity_check()
    restarted.close()


def test_a_disk_hit_reads_only_the_blocks_ram_lacks(tmp_path):
    """After a restart, the next turn's deeper disk entry reuses the KV blocks RAM got on the turn before."""
    cache = _cache(tmp_path)
    longer = SESSION_A + list(range(500, 520))
    _store(cache, SESSION_A, longer)
    cache.close()
    restarted = _cache(tmp_path)
    assert restarted.lookup(SESSION_A + [5]).tier == "disk"
    ram_blocks = dict(restarted._ram._blocks)
    fetched = []
    real_fetch = restarted._disk._fetch
    restarted._disk._fetch = lambda key, known: fetched.append(real_fetch(key, known)) or fetched[-1]
    hit = restarted.lookup(longer + [5])
    assert (hit.tier, hit.num_cached_tokens) == ("disk", len(longer))
    assert_same_state(hit.checkpoint, make_state(longer))
    row, blocks = fetched[0]
    assert all(blocks[block_id] is block for block_id, block in ram_blocks.items())  # taken from RAM
    read = [block_id for block_id in blocks if block_id not in ram_blocks]
    assert len(read) == len(longer) // 8 - len(SESSION_A) // 8  # only the new full blocks
    restarted.sanity_check()
    restarted.close()


def test_lookup_assembles_the_kv_into_the_callers_arrays(tmp_path):
    cache = _cache(tmp_path, disk=False)
    _store(cache, SESSION_A)
    buffers = []

    def kv_out(position: int):  # per layer one buffer of k and v rows, with spare rows
        buffers[:] = [np.full((2, position + 3, 2, 4), np.nan, np.float32) for _ in range(2)]
        return [(buffer[0, :position], buffer[1, :position]) for buffer in buffers]

    hit = cache.lookup(SESSION_A + [1], kv_out=kv_out)
    assert_same_state(hit.checkpoint, make_state(SESSION_A))
    for (k, v), buffer in zip(hit.checkpoint.kv, buffers, strict=True):
        assert np.shares_memory(k, buffer) and np.shares_memory(v, buffer)
    with pytest.raises(ValueError):  # a wrongly shaped destination is refused, not half-filled silently
        cache.lookup(SESSION_A + [1], kv_out=lambda position: [(np.empty((position, 3, 4), np.float32),) * 2] * 2)
    cache.close()


def test_disk_serves_what_ram_evicted(tmp_path):
    state_bytes = make_state(SESSION_A).nbytes
    cache = _cache(tmp_path, ram_bytes=state_bytes + 100)  # RAM holds about one session
    _store(cache, SESSION_A, SESSION_B)
    cache.flush()
    assert cache.stats()["ram"]["bytes"] <= state_bytes + 100
    hit = cache.lookup(SESSION_A + [1])
    assert (hit.tier, hit.num_cached_tokens) == ("disk", len(SESSION_A))
    assert_same_state(hit.checkpoint, make_state(SESSION_A))
    cache.sanity_check()
    cache.close()


def test_a_damaged_disk_entry_falls_back_to_a_shallower_one(tmp_path):
    cache = _cache(tmp_path)
    _store(cache, SESSION_A[:25], SESSION_A)
    cache.close()
    with sqlite3.connect(tmp_path / DB_FILENAME) as connection:
        connection.execute(
            "UPDATE checkpoints SET checksum = zeroblob(16) WHERE key = ?", (checkpoint_key(as_tokens(SESSION_A)),)
        )
    connection.close()
    restarted = _cache(tmp_path)
    hit = restarted.lookup(SESSION_A + [1])
    assert (hit.tier, hit.num_cached_tokens, hit.num_matched_tokens) == ("disk", 25, len(SESSION_A))
    assert_same_state(hit.checkpoint, make_state(SESSION_A[:25]))
    assert restarted.stats()["disk"]["discarded_entries"] == 1
    restarted.sanity_check()
    restarted.close()


def test_a_full_disk_leaves_the_cache_working_from_ram(tmp_path, monkeypatch):
    limit_disk_pages(monkeypatch, 20)
    cache = _cache(tmp_path, ram_bytes=10**7)
    prompts = [[n] * 100 for n in range(20)]
    for tokens in prompts:
        _store(cache, tokens)
        cache.flush()
    assert cache.stats()["disk"]["degraded"] is not None
    assert all(cache.lookup(tokens + [0]).tier == "ram" for tokens in prompts)
    cache.close()


def test_store_clear_and_bad_input(tmp_path):
    cache = _cache(tmp_path)
    with pytest.raises(ValueError, match="position 3 but 2 tokens"):
        cache.store([1, 2], make_state([1, 2, 3]))
    with pytest.raises(ValueError, match="at least one token"):
        cache.store([], CachedState(0, (), ()))
    with pytest.raises(ValueError, match="integers"):
        cache.lookup([0.5])
    _store(cache, SESSION_A, SESSION_A)  # storing twice keeps one entry
    cache.flush()
    assert [(e["num_tokens"], e["in_ram"], e["on_disk"]) for e in cache.entries()] == [(len(SESSION_A), True, True)]
    cache.clear()
    assert cache.entries() == [] and cache.lookup(SESSION_A + [1]).checkpoint is None
    cache.close()
    assert _cache(tmp_path).lookup(SESSION_A + [1]).checkpoint is None


def test_immutable_arrays_are_kept_without_copying(tmp_path):
    """Read-only arrays owning their memory, or viewing a bytes object, are kept; writable ones copied."""
    cache = _cache(tmp_path, disk=False)
    state = make_state(SESSION_B)
    owned, writable = state.recurrent[0]
    owned.setflags(write=False)
    conv = state.recurrent[1][0]
    from_bytes = np.frombuffer(conv.tobytes(), conv.dtype).reshape(conv.shape)
    state = CachedState(state.position, ((owned, writable), (from_bytes, state.recurrent[1][1])), state.kv)
    cache.store(SESSION_B, state)
    kept = cache._ram._entries[checkpoint_key(as_tokens(SESSION_B))]
    assert np.shares_memory(kept.recurrent[0][0], owned)
    assert np.shares_memory(kept.recurrent[1][0], from_bytes)
    assert not np.shares_memory(kept.recurrent[0][1], writable)
    cache.close()


def test_peek_reports_the_lookup_without_copying_or_counting(tmp_path):
    cache = SessionCache("fp", 1 << 30, tmp_path, 1 << 30, block_size=4)
    tokens = list(range(40))
    cache.store(tokens[:20], make_state(tokens[:20]))
    probe = tokens[:30] + [999]
    before = cache.stats()
    peeked = cache.peek(probe)
    assert cache.stats() == before
    assert peeked.checkpoint is None
    found = cache.lookup(probe)
    assert (peeked.num_cached_tokens, peeked.num_matched_tokens, peeked.tier) == (
        found.num_cached_tokens, found.num_matched_tokens, found.tier) == (20, 20, "ram")
    assert cache.peek([7, 7, 7]).tier is None
    cache.close()
