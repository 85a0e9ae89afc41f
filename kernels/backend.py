"""The compute interface the model code is written against.

The model (engine/qwen35.py) only calls these operations on the backend's own arrays, so a backend
decides where weights, activations, KV and recurrent state live (host memory, a device) and how
each op runs. Weights arrive as `StoredTensor`s: the GGML type, shape and block bytes exactly as
the file holds them (memory mapped), so a backend can compute on quantized blocks without ever
making a float32 copy. Only `to_host` brings an array back (the logits, a snapshot).

`kernels.numpy_backend.NumpyBackend` is the readable reference every faster backend is tested
against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

Array = Any  # a backend's own array type (numpy for the CPU backends, an opaque handle elsewhere)


@dataclass(frozen=True)
class StoredTensor:
    """A tensor as a GGUF file stores it: `shape` in numpy order (rows = outputs, last axis along
    the blocks), `data` the raw block bytes (uint8, usually a read-only memory map)."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray

    @property
    def row_nbytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[self.qtype]
        return self.shape[-1] // block * type_size

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.shape[:-1], dtype=np.int64))

    def __getitem__(self, index: int) -> "StoredTensor":
        """Sub-tensor `index` along the first axis (an expert of a [E, rows, cols] tensor); no copy."""
        inner = self.shape[1:]
        size = int(np.prod(inner[:-1], dtype=np.int64)) * self.row_nbytes
        return StoredTensor(f"{self.name}[{index}]", self.qtype, inner, self.data[index * size : (index + 1) * size])


@dataclass(frozen=True)
class DeltaNetShape:
    hk: int  # key heads
    hv: int  # value heads (V head h reads K head h mod hk)
    d: int  # head dim (dk == dv)
    conv_kernel: int
    eps: float

    @property
    def conv_channels(self) -> int:
        return (2 * self.hk + self.hv) * self.d


@dataclass(frozen=True)
class AttentionShape:
    n_head: int
    n_kv: int
    hd: int
    rope_dims: int
    inv_freq: np.ndarray  # float64 [rope_dims // 2]
    eps: float


KVBuffers = Callable[[int], tuple[Array, Array]]  # end -> head-major K, V [n_kv, capacity >= end, hd]


class Backend(Protocol):
    name: str
    supported_types: frozenset[GGMLQuantizationType]  # weight types it computes on

    # -- weights (called once at load)
    def weight(self, parts: Sequence[StoredTensor]) -> object:
        """A linear layer's weight: the parts' rows stacked (fused projections), [rows, in]."""

    def embedding(self, table: StoredTensor) -> object:
        """A lookup table [n_vocab, n_embd]; rows are decoded when looked up."""

    def vector(self, a: np.ndarray) -> Array:
        """A small float32 parameter (norm gains, conv taps, gates) in the backend's form."""

    @property
    def resident_weight_bytes(self) -> int:
        """Bytes of weights this backend holds in its own memory (not counting memory maps)."""

    # -- activations
    def embed(self, table: object, ids: np.ndarray) -> Array:
        """Rows `ids` (host int array) of the table, float32 [T, n_embd]."""

    def linear(self, x: Array, w: object) -> Array:
        """x [T, in] -> x @ w.T [T, out]."""

    def rms_norm(self, x: Array, w: Array, eps: float) -> Array:
        """RMS-normalise over the last axis and scale by w."""

    def add(self, a: Array, b: Array) -> Array:
        """a + b."""

    def add_rms_norm(self, h: Array, y: Array, w: Array, eps: float) -> tuple[Array, Array]:
        """The residual step: (h + y, rms_norm(h + y, w)); h may be updated in place."""

    def take_rows(self, x: Array, rows: np.ndarray) -> Array:
        """x[rows] for a host int array `rows` (each sequence's last row of a batch)."""

    def concat_rows(self, parts: Sequence[Array]) -> Array:
        """The parts stacked along the rows (the per-sequence outputs of a batch)."""

    def swiglu(self, gate_up: Array) -> Array:
        """SiLU(first half of the columns) * second half."""

    def sigmoid_gate(self, y: Array, x: Array, w: Array) -> Array:
        """y * sigmoid(x @ w)[:, None] (the shared expert's gate)."""

    def gated_delta_net(
        self, proj: Array, conv_w: Array, dt_bias: Array, a: Array, norm_w: Array,
        conv_state: Array, ssm_state: Array, shape: DeltaNetShape,
    ) -> tuple[Array, Array, Array]:
        """The Gated DeltaNet core between its two projections. proj [T, C + Vd + 2 Hv] holds
        [qkv | z | beta logits | alpha]: causal conv + SiLU, L2-normed q and k, gates, the delta
        rule, then RMSNorm(o) * SiLU(z). Returns (y [T, Vd], new conv state, new ssm state)."""

    def gated_attention(
        self, proj: Array, q_norm: Array, k_norm: Array, position: int, kv: KVBuffers, shape: AttentionShape,
    ) -> Array:
        """The gated attention core between its two projections. proj [T, ...] holds
        [per head (query | gate) | k | v]: q/k RMSNorm, NEOX RoPE at positions position.., K and V
        written to rows position.. of the buffers `kv(position + T)` returns, causal GQA attention
        over rows 0..position + T, times sigmoid(gate). Returns [T, n_head * hd]."""

    def moe(self, x: Array, router: object, gate_up: Sequence[object], down: Sequence[object],
            n_used: int, scale: float) -> Array:
        """Routed experts: softmax over experts, top-n_used renormalised (times `scale` unless 0/1),
        each expert's SwiGLU MLP run on its own tokens only."""

    # -- state storage
    def zeros(self, shape: tuple[int, ...]) -> Array:
        """A new float32 array of zeros."""

    def to_host(self, a: Array) -> np.ndarray:
        """The array as numpy (a view where the array already lives in host memory)."""

    def from_host(self, a: np.ndarray) -> Array:
        """A new backend array holding a copy of `a` (float32)."""
