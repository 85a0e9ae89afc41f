"""The compiled CPU backend: weights stay as the file stores them (memory mapped, quantized) and the
C extension `kernels._cpu` multiplies straight from the blocks; `kernels._fused` runs a decode
step's recurrent update and attention in one call each. Everything else is the numpy reference's.

Importing this module fails (ImportError) when the extension was not built; `kernels.make_backend`
then falls back to the numpy backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as QT
from threadpoolctl import threadpool_limits

from kernels import _cpu
from kernels.backend import AttentionShape, DeltaNetShape, KVBuffers, StoredTensor
from kernels.numpy_backend import NumpyBackend, sigmoid

try:
    from kernels import _fused
except ImportError:  # the fused ops are an optimisation; the numpy forms are exact
    _fused = None

# The fused delta net runs token by token over a state that stays in cache: at 0.8B sizes it beats
# numpy's chunked form at every length (numpy's stacked matmuls over strided chunks leave BLAS).
# Fused attention re-reads the keys per query, so prompts keep BLAS attention.
FUSED_ATTENTION_MAX_TOKENS = 8


@dataclass(frozen=True)
class QuantWeight:
    """A linear layer's stacked parts, each multiplied from its own stored blocks."""

    parts: tuple[StoredTensor, ...]
    calls: tuple[tuple[np.ndarray, int, int, int, int], ...]  # per part: qmatmul's (w, qtype, rows, k, out_col)
    n_rows: int


def physical_cores() -> int:
    """Cores this process may run on, counting SMT siblings once."""
    allowed = os.sched_getaffinity(0)
    cores = set()
    for cpu in allowed:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


class CpuBackend(NumpyBackend):
    name = "cpu"
    supported_types = frozenset(QT(t) for t in _cpu.supported_types())

    def __init__(self, threads: int | None = None) -> None:
        super().__init__()
        self.threads = threads or physical_cores()
        _cpu.set_threads(self.threads)
        threadpool_limits(self.threads, user_api="blas")  # BLAS runs between kernels, never beside them

    # -- weights: kept as stored
    def weight(self, parts: Sequence[StoredTensor]) -> QuantWeight:
        offsets = [int(o) for o in np.cumsum([0] + [p.n_rows for p in parts])]
        calls = tuple((p.data, int(p.qtype), p.n_rows, p.shape[-1], col) for p, col in zip(parts, offsets))
        return QuantWeight(tuple(parts), calls, offsets[-1])

    def embedding(self, table: StoredTensor) -> StoredTensor:
        return table

    @property
    def resident_weight_bytes(self) -> int:
        return 0  # only memory maps of the file

    # -- activations
    def embed(self, table: StoredTensor, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), table.shape[-1]), np.float32)
        for i, token in enumerate(ids):
            _cpu.dequant_rows(table.data, int(table.qtype), table.shape[-1], int(token), int(token) + 1, out[i])
        return out

    def linear(self, x: np.ndarray, w: QuantWeight) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        out = np.empty((x.shape[0], w.n_rows), np.float32)
        for data, qtype, rows, k, col in w.calls:
            _cpu.qmatmul(data, qtype, rows, k, x, out, col)
        return out

    def rms_norm(self, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        if _fused is None or not x.flags.c_contiguous:
            return super().rms_norm(x, w, eps)
        out = np.empty_like(x)
        _fused.rms_norm(x, w, eps, out)
        return out

    def add_rms_norm(self, h: np.ndarray, y: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
        if _fused is None:
            return super().add_rms_norm(h, y, w, eps)
        h = np.ascontiguousarray(h)  # owned by the forward pass: updated in place
        out = np.empty_like(h)
        _fused.add_rms_norm(h, np.ascontiguousarray(y), w, eps, out)
        return h, out

    def swiglu(self, gate_up: np.ndarray) -> np.ndarray:
        if _fused is None:
            return super().swiglu(gate_up)
        out = np.empty((gate_up.shape[0], gate_up.shape[1] // 2), np.float32)
        _fused.swiglu(np.ascontiguousarray(gate_up), out)
        return out

    def sigmoid_gate(self, y: np.ndarray, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """A per-row reduction, not BLAS: a matrix-vector product's rounding depends on the row
        count, and a sequence's logits must not depend on the batch it runs in."""
        logit = np.add.reduce(x * w, axis=-1)
        return y * sigmoid(logit)[:, None]

    def gated_delta_net(self, proj, conv_w, dt_bias, a, norm_w, conv_state, ssm_state, shape: DeltaNetShape):
        if _fused is None:
            return super().gated_delta_net(proj, conv_w, dt_bias, a, norm_w, conv_state, ssm_state, shape)
        y = np.empty((proj.shape[0], shape.hv * shape.d), np.float32)
        _fused.gated_delta_net(np.ascontiguousarray(proj), conv_w, dt_bias, a, norm_w, conv_state, ssm_state, y,
                               shape.hk, shape.hv, shape.d, shape.eps)
        return y, conv_state, ssm_state

    def gated_attention(self, proj, q_norm, k_norm, position: int, kv: KVBuffers, shape: AttentionShape):
        t = proj.shape[0]
        if _fused is None or t > FUSED_ATTENTION_MAX_TOKENS:
            return super().gated_attention(proj, q_norm, k_norm, position, kv, shape)
        k_buf, v_buf = kv(position + t)
        y = np.empty((t, shape.n_head * shape.hd), np.float32)
        _fused.gated_attention(np.ascontiguousarray(proj), q_norm, k_norm, k_buf, v_buf, position, shape.n_head,
                               shape.n_kv, shape.hd, shape.rope_dims, shape.inv_freq, shape.eps, y)
        return y
