"""SQLite tier: round trip, restart, damage and foreign rows as misses, budget, kill -9, full disk."""

import logging
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cache import store as store_module
from cache.radix import as_tokens, checkpoint_key
from cache.store import DiskStore, decode_block, decode_state, encode_block, encode_state
from tests.cache.test_ram import assert_same_state, make_state

PREFIX = list(range(8))
A = PREFIX + [20, 21, 22, 23, 24, 25]  # blocks p0 p1 a2 (block_size 4), tail of 2
B = PREFIX + [30, 31, 32]  # blocks p0 p1, tail of 3


def _key(tokens) -> str:
    return checkpoint_key(as_tokens(tokens))


def _open(path: Path, fingerprint: str = "model-a", budget: int = 10**8) -> DiskStore:
    return DiskStore(path, fingerprint, budget, block_size=4)


def _filled(path: Path, *prompts: list[int]) -> None:
    disk = _open(path)
    for tokens in prompts:
        disk.write(tokens, make_state(tokens))
    disk.close()


def _served(disk: DiskStore, tokens) -> bool:
    state = disk.read(_key(tokens))
    if state is None:
        return False
    assert_same_state(state, make_state(tokens))
    return True


def _rows(path: Path, query: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute(query, params).fetchall()


def _update(path: Path, query: str, params: tuple) -> None:
    connection = sqlite3.connect(path)
    with connection:
        connection.execute(query, params)
    connection.close()


def limit_disk_pages(monkeypatch: pytest.MonkeyPatch, max_pages: int) -> None:
    """Make every database the store opens this small, so that writes hit a full disk."""
    connect = store_module._connect

    def small_disk(path):
        connection = connect(path)
        connection.execute(f"PRAGMA max_page_count = {max_pages}")
        return connection

    monkeypatch.setattr(store_module, "_connect", small_disk)


def test_round_trip_and_reopen_rebuilds_the_index(tmp_path):
    path = tmp_path / "cache.db"
    disk = _open(path)
    for tokens in (A[:5], A, B):
        disk.write(tokens, make_state(tokens))
    disk.flush()
    assert _served(disk, A)
    disk.sanity_check()
    disk.close()
    reopened = _open(path)
    match = reopened.match(A + [99, 98])
    assert (match.checkpoint_id, match.num_cached_tokens, match.num_matched_tokens) == (_key(A), len(A), len(A))
    assert reopened.match(B + [1]).checkpoint_id == _key(B)
    assert reopened.match(A[:7]).checkpoint_id == _key(A[:5])
    assert all(_served(reopened, tokens) for tokens in (A[:5], A, B))
    reopened.sanity_check()
    reopened.close()


def test_kv_blocks_of_a_common_prefix_are_stored_once(tmp_path):
    sizes = {}
    for name, prompts in {"a": [A], "b": [B], "both": [A, B]}.items():
        _filled(tmp_path / f"{name}.db", *prompts)
        disk = _open(tmp_path / f"{name}.db")
        disk.sanity_check()
        sizes[name] = disk.nbytes
        disk.close()
    refcounts = sorted(_rows(tmp_path / "both.db", "SELECT refcount, nbytes FROM kv_block_refs"))
    assert [count for count, _ in refcounts] == [1, 2, 2]
    shared = sum(length for count, length in refcounts if count == 2)
    assert sizes["both"] == sizes["a"] + sizes["b"] - shared


def _flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x40]) + blob[at + 1 :]


def _rewrite_state(path: Path, key: str, state_blob: bytes) -> None:
    """Replace a row's state blob and fix its checksum, so only the blob's own checks can catch it."""
    tokens, ids = _rows(path, "SELECT tokens, block_ids FROM checkpoints WHERE key = ?", (key,))[0]
    checksum = store_module._checksum(tokens, ids, state_blob)
    _update(path, "UPDATE checkpoints SET state = ?, checksum = ? WHERE key = ?", (state_blob, checksum, key))


def _state_blob(path: Path, key: str) -> bytes:
    return _rows(path, "SELECT state FROM checkpoints WHERE key = ?", (key,))[0][0]


def _with_format(blob: bytes, version: int) -> bytes:
    return blob[:4] + struct.pack("<H", version) + blob[6:]  # after the 4-byte magic


def _own_block(path: Path) -> bytes:
    return _rows(path, "SELECT id FROM kv_block_refs WHERE refcount = 1")[0][0]


DAMAGE = {
    "flipped state byte": lambda p, k: _update(
        p, "UPDATE checkpoints SET state = ? WHERE key = ?", (_flip(_state_blob(p, k), 40), k)
    ),
    "wrong checksum": lambda p, k: _update(p, "UPDATE checkpoints SET checksum = ? WHERE key = ?", (b"0" * 16, k)),
    "truncated state": lambda p, k: _rewrite_state(p, k, _state_blob(p, k)[:-7]),
    "extra bytes": lambda p, k: _rewrite_state(p, k, _state_blob(p, k) + b"\0"),
    "blob of another model": lambda p, k: _rewrite_state(
        p, k, encode_state("model-b", len(A), make_state(A).recurrent, [(x[12:], y[12:]) for x, y in make_state(A).kv])
    ),
    "older format in the blob": lambda p, k: _rewrite_state(p, k, _with_format(_state_blob(p, k), 0)),
    "older format in the row": lambda p, k: _update(p, "UPDATE checkpoints SET format = 0 WHERE key = ?", (k,)),
    "tokens changed": lambda p, k: _update(
        p, "UPDATE checkpoints SET tokens = ? WHERE key = ?", (bytes(4 * len(A)), k)
    ),
    "text instead of a blob": lambda p, k: _update(p, "UPDATE checkpoints SET state = 'oops' WHERE key = ?", (k,)),
    "flipped KV block": lambda p, k: _update(
        p, "UPDATE kv_blocks SET data = ? WHERE id = ?",
        (_flip(_rows(p, "SELECT data FROM kv_blocks WHERE id = ?", (_own_block(p),))[0][0], 60), _own_block(p)),
    ),
    "missing KV block": lambda p, k: _update(p, "DELETE FROM kv_blocks WHERE id = ?", (_own_block(p),)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_a_quiet_miss_and_is_deleted(tmp_path, caplog, damage):
    path = tmp_path / "cache.db"
    _filled(path, A, B)
    DAMAGE[damage](path, _key(A))
    disk = _open(path)
    with caplog.at_level(logging.WARNING, logger="cache.store"):
        assert not _served(disk, A)
        assert disk.match(A).checkpoint_id is None
    disk.flush()
    assert _served(disk, B)
    disk.flush()
    assert _rows(path, "SELECT key FROM checkpoints") == [(_key(B),)]
    disk.sanity_check()
    if damage != "older format in the row":  # outdated rows go without a warning
        assert "discarded" in caplog.text
    disk.close()


def test_other_models_rows_are_invisible_but_kept(tmp_path):
    path = tmp_path / "cache.db"
    _filled(path, A)
    other = _open(path, fingerprint="model-b")
    assert other.match(A).checkpoint_id is None and other.read(_key(A)) is None
    other.write(B, make_state(B))
    other.close()
    disk = _open(path)
    assert _served(disk, A) and disk.match(B).checkpoint_id is None
    disk.sanity_check()
    disk.close()


def test_budget_evicts_least_recently_used(tmp_path):
    path = tmp_path / "cache.db"
    prompts = [[n] * 30 for n in range(12)]  # no shared blocks
    probe = _open(tmp_path / "probe.db")
    probe.write(prompts[0], make_state(prompts[0]))
    probe.close()
    entry_bytes = probe.nbytes
    disk = _open(path, budget=5 * entry_bytes)
    for number, tokens in enumerate(prompts):
        disk.write(tokens, make_state(tokens))
        disk.flush()
        if number >= 2:
            assert _served(disk, prompts[1])  # kept alive by use
        assert disk.nbytes <= 5 * entry_bytes
        disk.sanity_check()
    kept = [n for n, tokens in enumerate(prompts) if _key(tokens) in disk]
    assert kept == [1, 8, 9, 10, 11]
    disk.write(list(range(200)), make_state(list(range(200))))  # larger than the whole budget: skipped
    disk.flush()
    assert len(disk) == 5
    disk.clear()
    assert len(disk) == 0 and disk.nbytes == 0
    disk.close()


KILL_SCRIPT = """
import sys
from pathlib import Path
from cache.store import DiskStore
from tests.cache.test_ram import make_state
disk = DiskStore(Path(sys.argv[1]), "model-a", 10**9, block_size=4)
number = 0
while True:
    number += 1
    tokens = [number % 5] * 9 + list(range(number, number + 200))
    disk.write(tokens, make_state(tokens))
    if number <= 20:  # the first 20 surely committed (a full queue may drop writes under load)
        disk.flush()
    if number == 20:
        print("ready", flush=True)
"""


def test_a_writer_killed_mid_write_leaves_a_usable_database(tmp_path):
    path = tmp_path / "cache.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    writer = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(path)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert writer.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    disk = _open(path)
    disk.sanity_check()
    keys = {item["key"] for item in disk.describe()}
    assert len(keys) >= 20
    candidates = {}
    for number in range(1, 100_000):
        tokens = [number % 5] * 9 + list(range(number, number + 200))
        candidates[_key(tokens)] = tokens
        if keys <= candidates.keys():
            break
    assert all(_served(disk, candidates[key]) for key in keys)
    disk.write(B, make_state(B))
    disk.flush()
    assert _served(disk, B)
    disk.close()


def test_a_full_disk_turns_the_tier_off_with_one_warning(tmp_path, monkeypatch, caplog):
    limit_disk_pages(monkeypatch, 40)
    disk = _open(tmp_path / "cache.db")
    prompts = [[n] * 40 for n in range(60)]
    with caplog.at_level(logging.WARNING, logger="cache.store"):
        for tokens in prompts:
            disk.write(tokens, make_state(tokens))
            disk.flush()
    assert disk.degraded is not None and "full" in disk.degraded
    assert len(caplog.records) == 1 and "RAM-only" in caplog.records[0].getMessage()
    assert _served(disk, prompts[0])  # what was written still serves
    assert _key(prompts[-1]) not in disk
    disk.close()


def test_a_damaged_file_is_replaced_and_a_newer_schema_is_left_alone(tmp_path, caplog):
    path = tmp_path / "cache.db"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="cache.store"):
        disk = _open(path)
    assert "damaged" in caplog.text and disk.degraded is None
    disk.write(A, make_state(A))
    disk.flush()
    assert _served(disk, A)
    disk.close()
    _update(path, "PRAGMA user_version = 99", ())
    newer = _open(path)
    assert newer.degraded is not None and "newer" in newer.degraded
    assert newer.match(A).checkpoint_id is None and newer.read(_key(A)) is None
    newer.write(B, make_state(B))
    newer.close()
    assert _rows(path, "PRAGMA user_version") == [(99,)]
    assert len(_rows(path, "SELECT key FROM checkpoints")) == 1


def test_a_schema_1_database_is_migrated_without_losing_entries(tmp_path):
    """Schema 1 kept reference counts in the block rows; opening it moves them out, entries stay."""
    path = tmp_path / "old.db"
    _filled(path, A, B)
    connection = sqlite3.connect(path, isolation_level=None)  # turn it back into what schema 1 wrote
    connection.executescript(
        "BEGIN; ALTER TABLE kv_blocks ADD COLUMN refcount INTEGER NOT NULL DEFAULT 0;"
        " UPDATE kv_blocks SET refcount = (SELECT refcount FROM kv_block_refs r"
        "  WHERE r.fingerprint = kv_blocks.fingerprint AND r.id = kv_blocks.id);"
        " DROP TABLE kv_block_refs; PRAGMA user_version = 1; COMMIT;"
    )
    connection.close()
    disk = _open(path)
    assert disk.degraded is None and _rows(path, "PRAGMA user_version") == [(2,)]
    assert _served(disk, A) and _served(disk, B)
    disk.write(PREFIX + [40, 41, 42, 43, 44], make_state(PREFIX + [40, 41, 42, 43, 44]))
    disk.flush()
    disk.sanity_check()
    assert sorted(count for (count,) in _rows(path, "SELECT refcount FROM kv_block_refs")) == [1, 1, 3, 3]
    disk.close()


def test_blob_format_round_trip_and_fuzz():
    rng = np.random.default_rng(3)
    recurrent = (
        (rng.standard_normal((3, 5), np.float32), np.arange(6, dtype=np.int64).reshape(2, 3)),
        (np.full((), 2.5, np.float16),),
    )
    tail = ((np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)),)
    blob = encode_state("fp", 7, recurrent, tail)
    position, got_recurrent, got_tail = decode_state(blob, "fp")
    assert position == 7
    flat = [a for groups in (recurrent, tail) for group in groups for a in group]
    got_flat = [a for groups in (got_recurrent, got_tail) for group in groups for a in group]
    assert len(got_flat) == len(flat)
    for got, want in zip(got_flat, flat):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="another model"):
        decode_state(blob, "other")
    with pytest.raises(ValueError, match="kind"):
        decode_block(blob, "fp")
    assert len(decode_block(encode_block("fp", tail), "fp")) == 1
    for _ in range(500):  # damaged blobs fail with ValueError, never anything else
        damaged = bytearray(blob)
        for at in rng.integers(0, len(blob), int(rng.integers(1, 4))):
            damaged[at] = int(rng.integers(256))
        damaged = bytes(damaged[: int(rng.integers(len(blob) // 2, len(blob) + 1))])
        try:
            decode_state(damaged, "fp")
        except ValueError:
            pass


def test_a_read_only_directory_is_served_read_only(tmp_path, read_only, caplog):
    path = tmp_path / "copy" / "cache.db"
    _filled(path, A, B)
    read_only(path.parent)
    with caplog.at_level(logging.WARNING, logger=store_module.logger.name):
        disk = _open(path)
        assert disk.degraded is None and disk.read_only is not None
        assert len(disk) == 2 and _served(disk, A) and _served(disk, B)
        longer = A + [40, 41, 42, 43]
        disk.write(longer, make_state(longer))  # nothing is stored, nothing fails
        disk.flush()
        assert disk.match(longer).checkpoint_id == _key(A)
        assert _served(disk, A)
        disk.close()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "read-only" in warnings[0] and str(path) in warnings[0], warnings
