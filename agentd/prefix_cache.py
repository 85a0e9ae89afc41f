"""The runner's side of the session cache: engine checkpoints in, engine states out.

`cache.SessionCache` stores engine-agnostic arrays; this adapter turns an engine `Checkpoint`
into a `CachedState` and a hit back into an engine `State`, decides where checkpoints go
(cache.policy) and explains misses.
All methods run on the model thread except `stats`/`entries`/`explain`, which only read.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cache.policy import checkpoint_positions
from cache.radix import as_tokens
from cache.session import CachedState, SessionCache

log = logging.getLogger("agentd.cache")

MESSAGE_START = "<|im_start|>"


def default_cache_dir() -> Path:
    root = os.environ.get("AGENTD_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "agentd") / "sessions"


@dataclass(frozen=True)
class Restored:
    state: Any  # engine State continuing at `num_cached_tokens`
    num_cached_tokens: int
    num_matched_tokens: int  # how far the prompt agrees with anything cached
    tier: str | None  # "ram" | "disk" | None (miss)


class PrefixCache:
    """Checkpoints by token prefix, plus up to `max_live` finished requests' states kept live: the
    next turn of a conversation restores into its previous turn's state, whose KV rows for the
    shared prefix are already in place (KV can be cut back; only recurrent state needs the
    checkpoint), so a hit copies only the recurrent state and the KV rows the live state lacks."""

    def __init__(self, model: Any, cache: SessionCache, interval: int, max_live: int = 1):
        self.model = model
        self.cache = cache
        self.interval = interval
        self.max_live = max_live
        start = model.tokenizer.encode(MESSAGE_START)
        self.boundary_ids = frozenset(start) if len(start) == 1 else frozenset()
        self._live: list[tuple[np.ndarray, Any]] = []  # (tokens consumed, state), newest last
        self._live_lock = threading.Lock()

    @classmethod
    def open(
        cls, model: Any, ram_mb: int, cache_dir: str | None, disk_mb: int, interval: int, max_live: int = 1
    ) -> "PrefixCache":
        disk_dir = None
        if disk_mb > 0:
            disk_dir = Path(cache_dir) if cache_dir else default_cache_dir()
            disk_dir.mkdir(parents=True, exist_ok=True)
        cache = SessionCache(model.fingerprint, ram_mb << 20, disk_dir, disk_mb << 20)
        return cls(model, cache, interval, max_live)

    def restore(self, prompt_ids: Sequence[int]) -> Restored:
        """A state for `prompt_ids`: restored from the deepest usable checkpoint, or fresh. The cache
        writes the checkpoint's KV straight into the state's buffers: a live state of the same
        conversation when there is one (only rows it lacks are copied), else a new state."""
        prompt = as_tokens(prompt_ids)
        live_tokens, live, held = self._take_live(prompt)
        state = live if live is not None else self.model.new_state()

        def kv_out(position: int) -> list:
            return state.prepare_kv(position, keep=min(held, position))

        try:
            found = self.cache.lookup(prompt, kv_out=kv_out, kv_held=held)
            if found.checkpoint is not None:
                state.resume(found.checkpoint.position, found.checkpoint.recurrent)
        except ValueError as exc:  # a layout the model does not accept: never trust it
            log.warning("cache entry unusable, recomputing: %s", exc)
            return Restored(self.model.new_state(), 0, 0, None)
        if found.checkpoint is None:
            if live is not None:
                self.keep_live(live_tokens, live)  # untouched: there was no checkpoint to resume
            return Restored(self.model.new_state(), 0, found.num_matched_tokens, None)
        return Restored(state, found.checkpoint.position, found.num_matched_tokens, found.tier)

    def keep_live(self, tokens: Sequence[int], state: Any) -> None:
        """Hold a finished request's `state`, which consumed exactly `tokens`, for the next turn."""
        if self.max_live < 1 or state.position != len(tokens):
            return
        with self._live_lock:
            self._live.append((as_tokens(tokens), state))
            del self._live[: -self.max_live]

    def _take_live(self, prompt: np.ndarray) -> tuple[np.ndarray | None, Any, int]:
        """The live state sharing the longest prefix with `prompt`, taken out of the pool: its
        tokens, itself and the length of that prefix; (None, None, 0) when none shares anything."""
        with self._live_lock:
            shared = [_common_prefix(tokens, prompt) for tokens, _ in self._live]
            if not shared or max(shared) == 0:
                return None, None, 0
            best = int(np.argmax(shared))
            tokens, state = self._live.pop(best)
            return tokens, state, shared[best]

    def positions(self, prompt_ids: Sequence[int], start: int) -> list[int]:
        """Checkpoint positions still ahead of `start` for this prompt."""
        return [p for p in checkpoint_positions(prompt_ids, self.boundary_ids, self.interval) if p > start]

    def save(self, tokens: Sequence[int], state: Any) -> None:
        """Store `state`, which has consumed exactly `tokens`."""
        if state.position != len(tokens) or state.position < 1:
            raise ValueError(f"state at {state.position} does not match {len(tokens)} tokens")
        ckpt = state.snapshot()
        try:
            self.cache.store(tokens, CachedState(ckpt.position, ckpt.recurrent, ckpt.kv))
        except Exception:  # the cache must never fail a request
            log.exception("storing a checkpoint failed")

    def explain(self, prompt_ids: Sequence[int]) -> dict[str, Any]:
        """What a request with this prompt would reuse, and why not more (for /apply-template)."""
        found = self.cache.peek(prompt_ids)
        n, matched, cached = len(prompt_ids), found.num_matched_tokens, found.num_cached_tokens
        if cached == n - 1 or matched <= cached:  # everything the prompt shares with the cache is reused
            reason = None
        elif matched < n - 1:
            tokenizer = self.model.tokenizer
            context = tokenizer.decode(list(prompt_ids[max(0, matched - 8) : matched + 8]))
            reason = (
                f"prompt diverges from every cached sequence at token {matched} (near {context!r}); "
                f"the deepest checkpoint at or before it is at {cached}"
            )
        else:
            reason = f"no checkpoint between token {cached} and the prompt end ({n})"
        return {
            "num_tokens": n,
            "num_cached_tokens": cached,
            "num_matched_tokens": matched,
            "tier": found.tier,
            "miss_reason": reason,
        }

    def stats(self) -> dict[str, Any]:
        with self._live_lock:
            live = {"states": len(self._live), "bytes": sum(state.nbytes for _, state in self._live)}
        return {**self.cache.stats(), "live": live}

    def entries(self) -> list[dict[str, Any]]:
        return self.cache.entries()

    def clear(self) -> None:
        with self._live_lock:
            self._live.clear()
        self.cache.clear()

    def close(self) -> None:
        self.cache.close()


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n
