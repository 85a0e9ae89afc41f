"""Per-sequence model state: recurrent (conv + delta-rule) states and attention KV.

A `State` is mutable and owned by whoever runs the model. `State.snapshot()` gives an immutable
`Checkpoint` (the state after exactly `position` tokens); checkpoints serialize to bytes with a
checksum so a stored one can be verified before it is trusted.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.config import ModelConfig
from kernels.backend import Array, Backend

CHECKPOINT_MAGIC = b"AGCK"
CHECKPOINT_VERSION = 1
_DIGEST = 16


class State:
    """Mutable state of one sequence after `position` tokens, in the backend's arrays (only
    snapshots and restores cross to and from host memory, through the backend)."""

    def __init__(self, config: ModelConfig, fingerprint: str, backend: Backend):
        self.config = config
        self.fingerprint = fingerprint
        self.backend = be = backend
        self.position = 0
        c = config
        n_rec = len(c.recurrent_layer_ids)
        self.conv = [be.zeros((c.conv_kernel - 1, c.conv_channels)) for _ in range(n_rec)]
        self.ssm = [be.zeros((c.ssm_dt_rank, c.ssm_d_state, c.ssm_d_state)) for _ in range(n_rec)]
        # KV buffers are head-major [n_kv, capacity, head_dim] so each head's keys are one contiguous
        # matrix for BLAS; snapshots and restores see [positions, n_kv, head_dim] views.
        n_attn = len(c.attention_layer_ids)
        self._k = [be.zeros((c.n_kv_head, 0, c.head_dim)) for _ in range(n_attn)]
        self._v = [be.zeros((c.n_kv_head, 0, c.head_dim)) for _ in range(n_attn)]

    def kv_buffers(self, layer: int, end: int) -> tuple[Array, Array]:
        """The head-major K and V buffers [n_kv, capacity >= end, d] of attention layer `layer`, for
        the model to write rows [position, end) and read rows [0, end)."""
        buf_k, buf_v = self._k[layer], self._v[layer]
        if end > buf_k.shape[1]:
            cap = max(end, 2 * buf_k.shape[1], 256)
            grown_k = self.backend.zeros((buf_k.shape[0], cap, buf_k.shape[2]))
            grown_v = self.backend.zeros((buf_k.shape[0], cap, buf_k.shape[2]))
            grown_k[:, : self.position] = buf_k[:, : self.position]
            grown_v[:, : self.position] = buf_v[:, : self.position]
            self._k[layer], self._v[layer] = buf_k, buf_v = grown_k, grown_v
        return buf_k, buf_v

    @property
    def nbytes(self) -> int:
        rec = sum(a.nbytes for a in self.conv) + sum(a.nbytes for a in self.ssm)
        kv = sum(k[:, : self.position].nbytes + v[:, : self.position].nbytes for k, v in zip(self._k, self._v))
        return rec + kv

    def snapshot(self) -> "Checkpoint":
        """Recurrent states are copied; KV rows below `position` are shared as read-only views,
        which is safe because a State only writes rows below its position when no view of them is
        alive (see `prepare_kv`), so a snapshot costs O(recurrent state), not O(prompt length)."""
        host = self.backend.to_host
        return Checkpoint(
            position=self.position,
            fingerprint=self.fingerprint,
            recurrent=tuple((_frozen(host(c)), _frozen(host(s))) for c, s in zip(self.conv, self.ssm)),
            kv=tuple(
                (_readonly(host(k[:, : self.position]).transpose(1, 0, 2)),
                 _readonly(host(v[:, : self.position]).transpose(1, 0, 2)))
                for k, v in zip(self._k, self._v)
            ),
        )

    def prepare_kv(self, position: int, keep: int = 0) -> list[tuple[Array, Array]]:
        """KV buffers for a restore to `position` (with room to grow) that keep this state's first
        `keep` rows (the caller made sure they are the KV of the same tokens); returns per attention
        layer writable [position, n_kv, d] views for the caller to fill from row `keep` on. Until
        `resume` the state is unusable. Rows a live snapshot still shares are never written: the
        buffer is copied instead (so a snapshot stays valid however the state is reused)."""
        if not 0 <= keep <= min(position, self.position):
            raise ValueError(f"cannot keep {keep} of {self.position} rows for a restore to {position}")
        c = self.config
        views = []
        for i in range(len(self._k)):
            if keep == 0 or self._k[i].shape[1] < position or _viewed(self._k, i) or _viewed(self._v, i):
                for bufs in (self._k, self._v):
                    grown = self.backend.zeros((c.n_kv_head, position + RESTORE_HEADROOM, c.head_dim))
                    grown[:, :keep] = bufs[i][:, :keep]
                    bufs[i] = grown
            views.append((self._k[i][:, :position].transpose(1, 0, 2), self._v[i][:, :position].transpose(1, 0, 2)))
        self.position = 0
        return views

    def resume(self, position: int, recurrent: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Continue at `position` with these (conv, ssm) states (copied), the KV rows that
        `prepare_kv(position)` handed out having been filled."""
        if self.position != 0 or any(k.shape[1] < position for k in self._k):
            raise ValueError(f"KV buffers were not prepared for position {position}")
        if len(recurrent) != len(self.conv):
            raise ValueError("checkpoint layer count does not match the model")
        for i, (conv, ssm) in enumerate(recurrent):
            if conv.shape != self.conv[i].shape or ssm.shape != self.ssm[i].shape:
                raise ValueError("checkpoint recurrent state shape does not match the model")
            self.conv[i] = self.backend.from_host(conv)
            self.ssm[i] = self.backend.from_host(ssm)
        self.position = position

    @classmethod
    def from_checkpoint(cls, config: ModelConfig, fingerprint: str, backend: Backend, ckpt: "Checkpoint") -> "State":
        if ckpt.fingerprint != fingerprint:
            raise ValueError("checkpoint belongs to a different model (fingerprint mismatch)")
        state = cls(config, fingerprint, backend)
        if len(ckpt.kv) != len(state._k):
            raise ValueError("checkpoint layer count does not match the model")
        for (k_rows, v_rows), (k, v) in zip(state.prepare_kv(ckpt.position), ckpt.kv):
            if k.shape != k_rows.shape or v.shape != k.shape:
                raise ValueError("checkpoint KV shape does not match the model or its position")
            k_rows[...], v_rows[...] = k, v
        state.resume(ckpt.position, ckpt.recurrent)
        return state


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """Immutable state after `position` tokens: recurrent (conv, ssm) per GDN layer, KV[0:position]
    per attention layer, and the fingerprint of the model that computed it."""

    position: int
    fingerprint: str
    recurrent: tuple[tuple[np.ndarray, np.ndarray], ...]
    kv: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays())

    def _arrays(self) -> list[np.ndarray]:
        return [a for pair in self.recurrent for a in pair] + [a for pair in self.kv for a in pair]

    def to_bytes(self) -> bytes:
        arrays = self._arrays()
        header = json.dumps(
            {
                "fingerprint": self.fingerprint,
                "position": self.position,
                "n_recurrent": len(self.recurrent),
                "n_kv": len(self.kv),
                "shapes": [list(a.shape) for a in arrays],
            }
        ).encode()
        body = b"".join(
            [CHECKPOINT_MAGIC, struct.pack("<II", CHECKPOINT_VERSION, len(header)), header]
            + [np.ascontiguousarray(a, "<f4").tobytes() for a in arrays]
        )
        return body + hashlib.blake2b(body, digest_size=_DIGEST).digest()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "Checkpoint":
        """Parse and verify; any corruption raises ValueError (never returns a wrong state)."""
        if len(blob) < 12 + _DIGEST or blob[:4] != CHECKPOINT_MAGIC:
            raise ValueError("not a checkpoint (bad magic or too short)")
        body, digest = blob[:-_DIGEST], blob[-_DIGEST:]
        if hashlib.blake2b(body, digest_size=_DIGEST).digest() != digest:
            raise ValueError("checkpoint checksum mismatch (corrupt or truncated)")
        version, header_len = struct.unpack_from("<II", body, 4)
        if version != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint format version {version}, expected {CHECKPOINT_VERSION}")
        try:
            header = json.loads(body[12 : 12 + header_len])
            shapes = [tuple(int(d) for d in s) for s in header["shapes"]]
            n_rec, n_kv = int(header["n_recurrent"]), int(header["n_kv"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"checkpoint header unreadable: {e}") from e
        if len(shapes) != 2 * (n_rec + n_kv):
            raise ValueError("checkpoint header array count mismatch")
        offset = 12 + header_len
        arrays = []
        for shape in shapes:
            size = int(np.prod(shape)) * 4
            if offset + size > len(body):
                raise ValueError("checkpoint data shorter than its header says")
            arrays.append(_frozen(np.frombuffer(body, "<f4", size // 4, offset).reshape(shape)))
            offset += size
        if offset != len(body):
            raise ValueError("checkpoint has trailing bytes")
        pairs = [(arrays[2 * i], arrays[2 * i + 1]) for i in range(n_rec + n_kv)]
        return cls(
            position=int(header["position"]),
            fingerprint=str(header["fingerprint"]),
            recurrent=tuple(pairs[:n_rec]),
            kv=tuple(pairs[n_rec:]),
        )


RESTORE_HEADROOM = 4096  # free KV rows after a restore, so the next turn does not regrow (copy) the buffer


def _viewed(buffers: list[np.ndarray], i: int) -> bool:
    """Whether anything besides the list holds buffers[i]: numpy views (snapshots, slices of them)
    keep a reference to the array owning the memory, so a count above the list's own and the
    call's argument means a view is alive (CPython reference counting)."""
    return sys.getrefcount(buffers[i]) > 2


def _readonly(view: np.ndarray) -> np.ndarray:
    view = view.view()
    view.flags.writeable = False
    return view


def _frozen(a: np.ndarray) -> np.ndarray:
    out = np.array(a, np.float32, copy=True)
    out.flags.writeable = False
    return out
