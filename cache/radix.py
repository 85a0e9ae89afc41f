"""Prefix index: token sequences -> checkpoint ids, over fixed-size token blocks.

The index never sees state: it only answers "which stored checkpoint covers the longest prefix of
these tokens" and "how far do these tokens agree with anything stored" (the miss reason). Storage
tiers keep the arrays and use the helpers here to name things by content:

- `checkpoint_key(tokens)` names a checkpoint by the exact tokens it has consumed, so the same
  prefix reached by two sessions (or before and after a restart) is one entry;
- `block_ids(tokens, block_size)` names each full block of attention KV by a hash chained over all
  blocks before it, so KV of a shared prefix is stored once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

TOKEN_DTYPE = np.dtype("<u4")
BLOCK_ID_BYTES = 16
_TOKEN_BYTES = TOKEN_DTYPE.itemsize
_ROOT_BLOCK_ID = bytes(BLOCK_ID_BYTES)


def as_tokens(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """Token ids as a contiguous little-endian uint32 array; rejects anything that is not 1-D ints."""
    array = np.asarray(tokens)
    if array.ndim != 1:
        raise ValueError(f"token ids must be a 1-D sequence, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, TOKEN_DTYPE)
    if array.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got dtype {array.dtype}")
    if int(array.min()) < 0 or int(array.max()) > np.iinfo(TOKEN_DTYPE).max:
        raise ValueError("token ids must lie in [0, 2**32)")
    return np.ascontiguousarray(array, dtype=TOKEN_DTYPE)


def checkpoint_key(tokens: np.ndarray) -> str:
    """Content name of the checkpoint that has consumed exactly `tokens` (an `as_tokens` array)."""
    return hashlib.blake2b(tokens.tobytes(), digest_size=16, person=b"agentd-ckpt").hexdigest()


def block_ids(tokens: np.ndarray, block_size: int) -> list[bytes]:
    """Chained content hash at the end of each full block: equal ids <=> equal token prefixes."""
    data = tokens.tobytes()
    step = block_size * _TOKEN_BYTES
    ids = []
    previous = _ROOT_BLOCK_ID
    for start in range(0, len(tokens) // block_size * step, step):
        previous = hashlib.blake2b(previous + data[start : start + step], digest_size=BLOCK_ID_BYTES).digest()
        ids.append(previous)
    return ids


@dataclass(frozen=True)
class Match:
    """Answer of `RadixIndex.match`.

    num_cached_tokens: tokens covered by `checkpoint_id` (0 when there is none).
    num_matched_tokens: length of the longest common prefix with any stored sequence, i.e. the index
    of the first token that differs from everything cached (the miss reason to log).
    """

    checkpoint_id: Hashable | None
    num_cached_tokens: int
    num_matched_tokens: int


class _Node:
    """One full block of tokens on a path from the root; `depth` blocks lie above and including it."""

    __slots__ = ("parent", "block", "depth", "children", "checkpoints")

    def __init__(self, parent: _Node | None, block: bytes) -> None:
        self.parent = parent
        self.block = block
        self.depth = 0 if parent is None else parent.depth + 1
        self.children: dict[bytes, _Node] = {}
        self.checkpoints: dict[bytes, Hashable] = {}  # tail token bytes (< one block) -> id


def _common_prefix(a: bytes, b: bytes) -> int:
    """Number of leading tokens two token byte strings share."""
    count = min(len(a), len(b)) // _TOKEN_BYTES
    x = np.frombuffer(a, TOKEN_DTYPE, count)
    y = np.frombuffer(b, TOKEN_DTYPE, count)
    differ = np.flatnonzero(x != y)
    return int(differ[0]) if differ.size else count


class RadixIndex:
    """Token sequences -> checkpoint ids; a query finds the deepest checkpoint that is its prefix.

    One node per full block of `block_size` tokens, children keyed by the block's token bytes, so
    identical prefixes from different sessions share nodes. A checkpoint covering
    n = k * block_size + r tokens hangs off the depth-k node under its r tail tokens, so positions
    need not lie on the block grid.

    Invariants (checked by `sanity_check`):
    - every non-root node has a checkpoint in its subtree (no dead branches are kept);
    - a node's depth is its parent's + 1 and its block is exactly `block_size` tokens, stored under
      that block in its parent's children;
    - tails are shorter than one block;
    - `_where` locates exactly the checkpoints hanging in the tree, each once.
    """

    def __init__(self, block_size: int = 64) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self._root = _Node(None, b"")
        self._where: dict[Hashable, tuple[_Node, bytes]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, checkpoint_id: Hashable) -> bool:
        return checkpoint_id in self._where

    def ids(self) -> list[Hashable]:
        return list(self._where)

    def position(self, checkpoint_id: Hashable) -> int:
        """Number of tokens the checkpoint covers."""
        node, tail = self._locate(checkpoint_id)
        return node.depth * self.block_size + len(tail) // _TOKEN_BYTES

    def insert(self, tokens: Sequence[int] | np.ndarray, checkpoint_id: Hashable) -> None:
        """Index `checkpoint_id` as the checkpoint that has consumed exactly `tokens`."""
        if checkpoint_id in self._where:
            raise ValueError(f"checkpoint {checkpoint_id!r} is already indexed")
        data = as_tokens(tokens).tobytes()
        step = self.block_size * _TOKEN_BYTES
        num_blocks = len(data) // step
        tail = data[num_blocks * step :]
        existing = self._walk(data, num_blocks)
        if existing is not None and tail in existing.checkpoints:
            raise ValueError(f"these tokens are already indexed as {existing.checkpoints[tail]!r}")
        node = self._root
        for start in range(0, num_blocks * step, step):
            block = data[start : start + step]
            child = node.children.get(block)
            if child is None:
                child = node.children[block] = _Node(node, block)
            node = child
        node.checkpoints[tail] = checkpoint_id
        self._where[checkpoint_id] = (node, tail)

    def match(self, tokens: Sequence[int] | np.ndarray, max_tokens: int | None = None) -> Match:
        """Deepest checkpoint whose tokens are a prefix of `tokens` and cover at most `max_tokens`."""
        data = as_tokens(tokens).tobytes()
        length = len(data) // _TOKEN_BYTES
        limit = length if max_tokens is None else min(length, max_tokens)
        step = self.block_size * _TOKEN_BYTES
        best_id: Hashable | None = None
        best_position = 0
        node = self._root
        while True:
            start = node.depth * step
            for tail, checkpoint_id in node.checkpoints.items():
                position = (start + len(tail)) // _TOKEN_BYTES
                if best_position <= position <= limit and data.startswith(tail, start):
                    best_id, best_position = checkpoint_id, position
            child = node.children.get(data[start : start + step]) if len(data) >= start + step else None
            if child is None:
                break
            node = child
        rest = data[node.depth * step :]
        extensions = [*node.children, *node.checkpoints]
        matched = node.depth * self.block_size + max((_common_prefix(rest, e) for e in extensions), default=0)
        return Match(best_id, best_position, matched)

    def remove(self, checkpoint_id: Hashable) -> None:
        """Forget a checkpoint and prune the blocks no other checkpoint needs."""
        node, tail = self._locate(checkpoint_id)
        del self._where[checkpoint_id]
        del node.checkpoints[tail]
        while node.parent is not None and not node.checkpoints and not node.children:
            del node.parent.children[node.block]
            node = node.parent

    def clear(self) -> None:
        self._root = _Node(None, b"")
        self._where.clear()

    def chain(self, checkpoint_id: Hashable) -> list[tuple[int, Hashable]]:
        """(position, id) of every checkpoint that is a prefix of this one, itself included, shallow first."""
        node, tail = self._locate(checkpoint_id)
        found = [(node, t, cid) for t, cid in node.checkpoints.items() if tail.startswith(t)]
        while node.parent is not None:
            block = node.block
            node = node.parent
            found += [(node, t, cid) for t, cid in node.checkpoints.items() if block.startswith(t)]
        result = [(n.depth * self.block_size + len(t) // _TOKEN_BYTES, cid) for n, t, cid in found]
        return sorted(result, key=lambda item: item[0])

    def has_descendants(self, checkpoint_id: Hashable) -> bool:
        """Whether some other checkpoint extends this one's tokens."""
        node, tail = self._locate(checkpoint_id)
        if any(block.startswith(tail) for block in node.children):
            return True
        return any(len(t) > len(tail) and t.startswith(tail) for t in node.checkpoints)

    def sanity_check(self) -> None:
        """Raise AssertionError if an invariant of the class docstring is broken."""
        step = self.block_size * _TOKEN_BYTES
        seen: dict[Hashable, tuple[_Node, bytes]] = {}
        stack = [self._root]
        while stack:
            node = stack.pop()
            require_invariant(node is self._root or bool(node.checkpoints or node.children), "dead node kept")
            for tail, checkpoint_id in node.checkpoints.items():
                whole_tokens = len(tail) % _TOKEN_BYTES == 0
                require_invariant(len(tail) < step and whole_tokens, "tail is not shorter than a block")
                require_invariant(checkpoint_id not in seen, f"checkpoint {checkpoint_id!r} hangs twice")
                seen[checkpoint_id] = (node, tail)
            for block, child in node.children.items():
                require_invariant(child.parent is node and child.block == block, "child not keyed by its block")
                require_invariant(len(block) == step and child.depth == node.depth + 1, "child block or depth wrong")
                stack.append(child)
        require_invariant(len(seen) == len(self._where), "location map and tree disagree on the checkpoint count")
        for checkpoint_id, (node, tail) in seen.items():
            where = self._where.get(checkpoint_id)
            require_invariant(where is not None and where[0] is node and where[1] == tail, "location map is stale")

    def _walk(self, data: bytes, num_blocks: int) -> _Node | None:
        """The node reached by the first `num_blocks` blocks of `data`, or None if not all exist."""
        step = self.block_size * _TOKEN_BYTES
        node = self._root
        for start in range(0, num_blocks * step, step):
            child = node.children.get(data[start : start + step])
            if child is None:
                return None
            node = child
        return node

    def _locate(self, checkpoint_id: Hashable) -> tuple[_Node, bytes]:
        try:
            return self._where[checkpoint_id]
        except KeyError:
            raise KeyError(f"checkpoint {checkpoint_id!r} is not indexed") from None


def require_invariant(condition: bool, message: str) -> None:
    """Raise AssertionError (also under python -O) when a checked invariant is broken."""
    if not condition:
        raise AssertionError(message)
