"""RAM tier: checkpoints in host memory under an exact byte budget.

A checkpoint at position n is its recurrent arrays (valid only at n) plus attention KV[0:n]. KV is
kept once per full block, named by `radix.block_ids`, and shared by every checkpoint whose tokens
run through that block; each checkpoint keeps its own recurrent arrays and the KV rows past its
last full block (the tail). Counted bytes are exactly the arrays' `nbytes`; the index, token keys
and Python objects are not counted.

Eviction keeps sessions alive and their checkpoints evenly spaced (after ik_llama.cpp): the least
recently used chain of checkpoints (a checkpoint and all checkpoints that are its prefixes) gives
up the interior checkpoint whose neighbours are closest together; its newest checkpoint goes only
when nothing else in that chain belongs to it alone.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cache.radix import Match, RadixIndex, as_tokens, block_ids, checkpoint_key, require_invariant

logger = logging.getLogger(__name__)

KVLayer = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class CachedState:
    """Engine-agnostic checkpoint: state after `position` tokens.

    recurrent: per recurrent layer, the arrays valid exactly at `position` (e.g. conv and ssm state).
    kv: per attention layer, (k, v) with `position` rows on axis 0.

    The cache copies arrays it keeps, except arrays that are read-only and own their data: those are
    taken as they are (zero copy), on the promise that nobody changes them afterwards.
    """

    position: int
    recurrent: tuple[tuple[np.ndarray, ...], ...]
    kv: tuple[KVLayer, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.position, (int, np.integer)) or self.position < 0:
            raise ValueError(f"position must be a non-negative int, got {self.position!r}")
        object.__setattr__(self, "position", int(self.position))
        for layer, arrays in enumerate(self.recurrent):
            for array in arrays:
                _require_numeric(array, f"recurrent layer {layer}")
        for layer, pair in enumerate(self.kv):
            if len(pair) != 2:
                raise ValueError(f"kv layer {layer} must be a (k, v) pair, got {len(pair)} arrays")
            for array in pair:
                _require_numeric(array, f"kv layer {layer}")
                if array.ndim < 1 or array.shape[0] != self.position:
                    raise ValueError(
                        f"kv layer {layer} has shape {array.shape}, expected {self.position} rows (the position)"
                    )

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for arrays in self.recurrent for a in arrays) + sum(
            k.nbytes + v.nbytes for k, v in self.kv
        )


KVOut = Callable[[int], Sequence[KVLayer]]  # position -> per attention layer writable (k, v) of that many rows


@dataclass(frozen=True)
class StoredState:
    """A checkpoint as the tiers hold it: KV split into full blocks (shared between checkpoints, named
    by `block_ids`) and the rows past the last full block (`tail`). Arrays are immutable once a tier
    holds them (see `frozen`); `copy` gives a caller its own `CachedState`."""

    position: int
    recurrent: tuple[tuple[np.ndarray, ...], ...]
    block_ids: tuple[bytes, ...]
    blocks: tuple[tuple[KVLayer, ...], ...]  # per block, per attention layer (k, v) rows
    tail: tuple[KVLayer, ...]

    @classmethod
    def of(cls, tokens: np.ndarray, state: CachedState | StoredState, block_size: int) -> StoredState:
        """`state` (after exactly `tokens`) cut into blocks of `block_size`: views, no copy (`frozen`
        makes them a tier's own). A StoredState is checked to be cut that way already."""
        if isinstance(state, StoredState):
            if state.block_ids != tuple(block_ids(tokens, block_size)):
                raise ValueError("stored state blocks do not match the tokens")
            return state
        ids = tuple(block_ids(tokens, block_size))
        blocks = tuple(
            tuple((k[n * block_size : (n + 1) * block_size], v[n * block_size : (n + 1) * block_size]) for k, v in state.kv)
            for n in range(len(ids))
        )
        grid = len(ids) * block_size
        return cls(state.position, state.recurrent, ids, blocks, tuple((k[grid:], v[grid:]) for k, v in state.kv))

    def layout(self) -> tuple:
        """Dtypes and shapes that do not depend on the position; equal for all states of one model."""
        return (
            tuple(tuple((a.dtype.str, a.shape) for a in arrays) for arrays in self.recurrent),
            tuple(tuple((a.dtype.str, a.shape[1:]) for a in pair) for pair in self.tail),
        )

    def frozen(self) -> StoredState:
        """Same checkpoint with arrays nobody else can change (copies only those that are not already)."""
        return StoredState(
            self.position,
            tuple(tuple(_frozen(a) for a in arrays) for arrays in self.recurrent),
            self.block_ids,
            tuple(_frozen_kv(block) for block in self.blocks),
            _frozen_kv(self.tail),
        )

    def copy(self, kv_out: KVOut | None = None, start: int = 0) -> CachedState:
        """The caller's own writable copy. KV is assembled in one pass, into `kv_out(position)`'s arrays
        when given (e.g. the engine's own buffers, so a restore copies the KV at most once); rows
        before `start` (at most the position) are left as they are there (the caller holds them)."""
        start = min(start, self.position)
        if kv_out is None and start:
            raise ValueError("rows before `start` can only be kept in the caller's own arrays")
        layers = range(len(self.tail))
        out = kv_out(self.position) if kv_out is not None else [(None, None) for _ in layers]
        if len(out) != len(self.tail):
            raise ValueError(f"{len(out)} KV layers to fill, the checkpoint has {len(self.tail)}")
        kv = tuple(tuple(self._rows(layer, i, start, out[layer][i]) for i in (0, 1)) for layer in layers)
        recurrent = tuple(tuple(a.copy() for a in arrays) for arrays in self.recurrent)
        return CachedState(self.position, recurrent, kv)

    def _rows(self, layer: int, which: int, start: int, out: np.ndarray | None) -> np.ndarray:
        """Rows start..position of k (which=0) or v (1) of one layer, written into out[start:]."""
        tail = self.tail[layer][which]
        block_size = len(self.blocks[0][layer][which]) if self.blocks else 1
        first = min(start // block_size, len(self.blocks))
        parts = [b[layer][which] for b in self.blocks[first:]] + [tail]
        parts[0] = parts[0][start - first * block_size :]
        if out is None:
            return np.concatenate(parts)
        np.concatenate(parts, out=out[start:])
        return out


def _require_numeric(array: object, where: str) -> None:
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise ValueError(f"{where}: expected a numeric numpy array, got {type(array).__name__}")


def _frozen_kv(layers: Sequence[KVLayer]) -> tuple[KVLayer, ...]:
    return tuple((_frozen(k), _frozen(v)) for k, v in layers)


def _frozen(array: np.ndarray) -> np.ndarray:
    """An array nobody can change; immutable arrays are taken as they are, others are copied."""
    return array if _immutable(array) else _private_copy(array)


def _immutable(array: np.ndarray) -> bool:
    """Read-only, and so is the memory it views: read-only arrays owning their data (taken on the
    promise that nobody makes them writable again) or a `bytes` object (e.g. a blob read from disk)."""
    base: object = array
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return False
        if base.base is None:
            return True
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, bytes)


def _private_copy(array: np.ndarray) -> np.ndarray:
    copy = np.array(array, copy=True, order="C")
    copy.setflags(write=False)
    return copy


@dataclass(frozen=True)
class _Entry:
    position: int
    recurrent: tuple[tuple[np.ndarray, ...], ...]
    block_ids: tuple[bytes, ...]
    tail: tuple[KVLayer, ...]  # KV rows past the last full block
    nbytes: int  # recurrent + tail; shared blocks are counted in RamTier._block_bytes


class RamTier:
    """Checkpoints in memory, looked up by token prefix, within `budget_bytes` of arrays.

    Not thread-safe: one owner (the session cache) calls it.

    Invariants (checked by `sanity_check`):
    - index, entries and recency order hold the same keys;
    - a block's reference count is the number of entries listing it; unreferenced blocks are freed;
    - `nbytes` is the sum of entry bytes and block bytes, and never exceeds `budget_bytes`;
    - in the recency order every checkpoint comes before all checkpoints that are its prefixes, so
      the least recently used one is always the newest of its chain.
    """

    def __init__(self, budget_bytes: int, block_size: int = 64) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.block_size = block_size
        self._index = RadixIndex(block_size)
        self._entries: dict[str, _Entry] = {}
        self._blocks: dict[bytes, tuple[KVLayer, ...]] = {}
        self._block_refs: dict[bytes, int] = {}
        self._block_bytes = 0  # bytes of one block, fixed by the layout
        self._layout: tuple | None = None
        self._recency: OrderedDict[str, int] = OrderedDict()  # key -> touch stamp, least recent first
        self._clock = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    def match(self, tokens: Sequence[int] | np.ndarray, max_tokens: int | None = None) -> Match:
        return self._index.match(tokens, max_tokens)

    def put(self, tokens: Sequence[int] | np.ndarray, state: CachedState | StoredState) -> bool:
        """Keep `state`, the checkpoint after exactly `tokens`; False if it cannot fit at all.

        Only what the tier does not hold yet is taken: new KV blocks, the tail and the recurrent
        arrays, each copied unless it is already immutable (see `StoredState.frozen`)."""
        tokens = as_tokens(tokens)
        if len(tokens) != state.position:
            raise ValueError(f"state is at position {state.position} but {len(tokens)} tokens were given")
        key = checkpoint_key(tokens)
        if key in self._entries:
            self.touch(key)
            return True
        state = StoredState.of(tokens, state, self.block_size)
        self._check_layout(state)
        recurrent = tuple(tuple(_frozen(a) for a in arrays) for arrays in state.recurrent)
        tail = _frozen_kv(state.tail)
        own_bytes = sum(a.nbytes for arrays in recurrent for a in arrays) + sum(k.nbytes + v.nbytes for k, v in tail)
        if own_bytes + len(state.block_ids) * self._block_bytes > self.budget_bytes:
            logger.debug("ram cache skip key=%s bytes=%d budget=%d", key, own_bytes, self.budget_bytes)
            return False
        for block_id, block in zip(state.block_ids, state.blocks, strict=True):
            if block_id not in self._blocks:
                self._check_block(block)
                self._blocks[block_id] = _frozen_kv(block)
                self._block_refs[block_id] = 0
                self.nbytes += self._block_bytes
            self._block_refs[block_id] += 1
        self._entries[key] = _Entry(state.position, recurrent, state.block_ids, tail, own_bytes)
        self.nbytes += own_bytes
        self._index.insert(tokens, key)
        self.touch(key)
        self._evict(protect=key)
        return True

    def stored(self, key: str) -> StoredState | None:
        """The checkpoint as held (no copy: never write to it), or None if absent; marks it used."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self.touch(key)
        blocks = tuple(self._blocks[block_id] for block_id in entry.block_ids)
        return StoredState(entry.position, entry.recurrent, entry.block_ids, blocks, entry.tail)

    def block(self, block_id: bytes) -> tuple[KVLayer, ...] | None:
        """A held KV block (no copy), so another tier need not read it again."""
        return self._blocks.get(block_id)

    def touch(self, key: str) -> None:
        """Mark a checkpoint and every checkpoint that is its prefix as just used."""
        self._clock += 1
        for _, chain_key in reversed(self._index.chain(key)):
            self._recency[chain_key] = self._clock
            self._recency.move_to_end(chain_key)

    def remove(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._index.remove(key)
        del self._recency[key]
        self.nbytes -= entry.nbytes
        for block_id in entry.block_ids:
            self._block_refs[block_id] -= 1
            if self._block_refs[block_id] == 0:
                del self._block_refs[block_id], self._blocks[block_id]
                self.nbytes -= self._block_bytes

    def clear(self) -> None:
        for key in list(self._entries):
            self.remove(key)

    def describe(self) -> list[dict]:
        """One dict per checkpoint, least recently used first (for stats and admin listings)."""
        return [
            {"key": key, "num_tokens": self._entries[key].position, "own_bytes": self._entries[key].nbytes}
            for key in self._recency
        ]

    def sanity_check(self) -> None:
        """Raise AssertionError if an invariant of the class docstring is broken."""
        self._index.sanity_check()
        keys = set(self._entries)
        require_invariant(keys == set(self._index.ids()) == set(self._recency), "index, entries and recency disagree")
        refs: dict[bytes, int] = {}
        for entry in self._entries.values():
            for block_id in entry.block_ids:
                refs[block_id] = refs.get(block_id, 0) + 1
        require_invariant(refs == self._block_refs, "block reference counts are wrong")
        require_invariant(refs.keys() == self._blocks.keys(), "unreferenced blocks kept or referenced ones missing")
        counted = sum(e.nbytes for e in self._entries.values()) + sum(
            k.nbytes + v.nbytes for block in self._blocks.values() for k, v in block
        )
        require_invariant(counted == self.nbytes, f"nbytes {self.nbytes} != counted {counted}")
        require_invariant(self.nbytes <= self.budget_bytes, f"nbytes {self.nbytes} over budget {self.budget_bytes}")
        order = {key: rank for rank, key in enumerate(self._recency)}
        for key in keys:
            for _, prefix_key in self._index.chain(key):
                require_invariant(order[prefix_key] >= order[key], "a prefix checkpoint is older than its extension")

    def _check_layout(self, state: StoredState) -> None:
        layout = state.layout()
        if self._layout is None:
            self._layout = layout
            self._block_bytes = self.block_size * sum(
                int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                for pair in layout[1]
                for dtype, shape in pair
            )
        elif layout != self._layout:
            raise ValueError(f"state layout {layout} differs from the cached states' {self._layout}")

    def _check_block(self, block: Sequence[KVLayer]) -> None:
        layout = tuple(tuple((a.dtype.str, a.shape) for a in pair) for pair in block)
        expected = tuple(tuple((dtype, (self.block_size, *shape)) for dtype, shape in pair) for pair in self._layout[1])
        if layout != expected:
            raise ValueError(f"KV block layout {layout} differs from the cached states' {expected}")

    def _evict(self, protect: str) -> None:
        while self.nbytes > self.budget_bytes:
            victim = self._choose_victim()
            if victim == protect:
                raise RuntimeError("eviction chose the checkpoint being stored")
            logger.debug("ram cache evict key=%s num_tokens=%d", victim, self._entries[victim].position)
            self.remove(victim)

    def _choose_victim(self) -> str:
        """Thin the least recently used chain where its checkpoints are densest; drop its tip last."""
        tip = next(iter(self._recency))
        chain = self._index.chain(tip)
        stamp = self._recency[tip]
        owned = [i for i, (_, key) in enumerate(chain[:-1]) if self._recency[key] == stamp]
        if not owned:
            return tip

        def merged_gap(i: int) -> int:
            previous = chain[i - 1][0] if i else 0
            return chain[i + 1][0] - previous

        return chain[min(owned, key=lambda i: (merged_gap(i), i))][1]
