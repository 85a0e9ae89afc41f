"""The session cache the daemon's runner talks to: RAM in front of SQLite, found by token prefix.

Agents resend a growing prompt every turn. `store` keeps checkpoints (recurrent state + attention
KV after an exact token count); `lookup` returns the deepest stored one whose tokens are a prefix
of the new prompt, so only the rest has to be computed. Sessions are not named: identical prefixes
are one entry whoever produced them.

Counting: `num_cached_tokens` is what the returned checkpoint covers (always < len(tokens), because
the engine must compute at least one token to get logits); `num_matched_tokens` is how far the
prompt agrees with anything cached, i.e. the first differing token when the cache falls short.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from cache.radix import as_tokens, checkpoint_key
from cache.ram import CachedState, KVOut, RamTier
from cache.store import DiskStore

__all__ = ["DB_FILENAME", "CachedState", "Lookup", "SessionCache"]

DB_FILENAME = "checkpoints.sqlite3"


@dataclass(frozen=True)
class Lookup:
    """Result of `SessionCache.lookup`; `checkpoint` is the caller's own copy."""

    checkpoint: CachedState | None
    num_cached_tokens: int
    num_matched_tokens: int
    tier: Literal["ram", "disk"] | None


class SessionCache:
    """Prefix-aware checkpoint cache: a RAM tier written through to an optional SQLite tier.

    Thread-safe (one lock); disk writes run on the store's own thread. Hits copy, they never move an
    entry out; a disk hit is also brought back into RAM.
    """

    def __init__(
        self,
        fingerprint: str,
        ram_bytes: int,
        disk_dir: Path | None,
        disk_bytes: int,
        block_size: int = 64,
    ) -> None:
        if not fingerprint:
            raise ValueError("fingerprint must be a non-empty string")
        self._lock = threading.RLock()
        self._ram = RamTier(ram_bytes, block_size)
        self._disk = None
        if disk_dir is not None:
            self._disk = DiskStore(Path(disk_dir) / DB_FILENAME, fingerprint, disk_bytes, block_size)
        self._counts = {"lookups": 0, "hits_ram": 0, "hits_disk": 0, "misses": 0, "cached_tokens": 0, "stores": 0}

    def lookup(self, tokens: Sequence[int] | np.ndarray, kv_out: KVOut | None = None, kv_held: int = 0) -> Lookup:
        """The deepest cached checkpoint covering a proper prefix of `tokens` (a copy), or a miss.

        With `kv_out` the KV is assembled straight into the arrays it returns for the position
        (the engine's own buffers), so a hit copies the KV once; rows before `kv_held` are not
        copied at all: the caller's arrays hold them already (KV of the same tokens, e.g. a live
        state of the same conversation). See `StoredState.copy`."""
        tokens = as_tokens(tokens)
        limit = len(tokens) - 1
        with self._lock:
            self._counts["lookups"] += 1
            ram = self._ram.match(tokens, limit)
            matched = ram.num_matched_tokens
            while self._disk is not None:
                disk = self._disk.match(tokens, limit)
                matched = max(matched, disk.num_matched_tokens)
                if disk.num_cached_tokens <= ram.num_cached_tokens:
                    break
                # Blocks RAM holds are not read again; None drops the entry, so this loop ends.
                stored = self._disk.read(disk.checkpoint_id, self._ram.block)
                if stored is not None:
                    self._ram.put(tokens[: stored.position], stored)
                    return self._hit(stored.copy(kv_out, kv_held), matched, "disk")
            if ram.checkpoint_id is None:
                self._counts["misses"] += 1
                return Lookup(None, 0, matched, None)
            stored = self._ram.stored(ram.checkpoint_id)
            state = stored.copy(kv_out, kv_held)
            if self._disk is not None:
                self._disk.touch(ram.checkpoint_id)
            return self._hit(state, matched, "ram")

    def peek(self, tokens: Sequence[int] | np.ndarray) -> Lookup:
        """What `lookup` would find (positions and tier only): no copy, no counters, no recency change.

        A disk entry found damaged on an actual read would still be a miss there."""
        tokens = as_tokens(tokens)
        limit = len(tokens) - 1
        with self._lock:
            ram = self._ram.match(tokens, limit)
            cached, matched = ram.num_cached_tokens, ram.num_matched_tokens
            tier: Literal["ram", "disk"] | None = "ram" if ram.checkpoint_id is not None else None
            if self._disk is not None:
                disk = self._disk.match(tokens, limit)
                matched = max(matched, disk.num_matched_tokens)
                if disk.num_cached_tokens > cached:
                    cached, tier = disk.num_cached_tokens, "disk"
            return Lookup(None, cached, matched, tier)

    def store(self, tokens: Sequence[int] | np.ndarray, state: CachedState) -> None:
        """Keep `state`, the checkpoint after exactly `tokens` (len(tokens) == state.position >= 1).

        Only what the cache lacks is copied (new KV blocks, the tail, the recurrent arrays; immutable
        arrays not even those), so storing a long conversation's next checkpoint is cheap; the disk
        tier writes RAM's copy.
        """
        tokens = as_tokens(tokens)
        if len(tokens) != state.position:
            raise ValueError(f"state is at position {state.position} but {len(tokens)} tokens were given")
        if state.position < 1:
            raise ValueError("a checkpoint must cover at least one token")
        key = checkpoint_key(tokens)
        with self._lock:
            self._counts["stores"] += 1
            if key in self._ram and (self._disk is None or key in self._disk):
                self._ram.touch(key)
                if self._disk is not None:
                    self._disk.touch(key)
                return
            kept = self._ram.put(tokens, state)
            if self._disk is not None:
                self._disk.write(tokens, self._ram.stored(key) if kept else state)

    def stats(self) -> dict:
        with self._lock:
            ram = {
                "entries": len(self._ram),
                "bytes": self._ram.nbytes,
                "budget_bytes": self._ram.budget_bytes,
                "kv_blocks": self._ram.num_blocks,
            }
            return {**self._counts, "ram": ram, "disk": None if self._disk is None else self._disk.stats()}

    def entries(self) -> list[dict]:
        """Every cached checkpoint: key, num_tokens, and whether RAM and disk hold it."""
        with self._lock:
            listed: dict[str, dict] = {}
            for item in self._ram.describe():
                key = item["key"]
                listed[key] = {"key": key, "num_tokens": item["num_tokens"], "in_ram": True, "on_disk": False}
            for item in [] if self._disk is None else self._disk.describe():
                entry = listed.setdefault(item["key"], {**item, "in_ram": False})
                entry["on_disk"] = True
            return sorted(listed.values(), key=lambda e: (e["num_tokens"], e["key"]))

    def sanity_check(self) -> None:
        """Check both tiers' invariants (raises AssertionError); waits for queued disk writes first."""
        with self._lock:
            self._ram.sanity_check()
            if self._disk is not None:
                self._disk.flush()
                self._disk.sanity_check()

    def flush(self) -> None:
        """Wait until queued disk writes are applied."""
        if self._disk is not None:
            self._disk.flush()

    def clear(self) -> None:
        with self._lock:
            self._ram.clear()
            if self._disk is not None:
                self._disk.clear()

    def close(self) -> None:
        """Finish queued disk writes and close the database."""
        with self._lock:
            if self._disk is not None:
                self._disk.close()

    def _hit(self, state: CachedState, matched: int, tier: Literal["ram", "disk"]) -> Lookup:
        self._counts[f"hits_{tier}"] += 1
        self._counts["cached_tokens"] += state.position
        return Lookup(state, state.position, matched, tier)
