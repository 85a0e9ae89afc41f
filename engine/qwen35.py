"""Qwen3.5 hybrid model (qwen35 dense, qwen35moe): Gated DeltaNet + gated full attention.

Layer math follows ../shared/docs/qwen35-architecture.md sections 2-4 with GGUF conventions
(norm weights already hold 1 + w, ssm_a = -exp(A_log), V heads tiled so V head h reads K head
h mod Hk). Every op runs through a `kernels.backend.Backend` on the backend's own arrays; weights
reach it as stored in the file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.config import ModelConfig, ModelFormatError
from engine.gguf_loader import GGUFFile
from engine.state import State
from kernels.backend import Array, AttentionShape, Backend, DeltaNetShape, StoredTensor


@dataclass
class DeltaNetWeights:
    in_proj: object  # rows [qkv (C) | gate z (Vd) | beta (Hv) | alpha (Hv)], fused: one matmul per layer
    conv: Array  # [C, K]
    dt_bias: Array  # [Hv]
    a: Array  # [Hv], = -exp(A_log)
    norm: Array  # [dv]
    out: object


@dataclass
class AttentionWeights:
    qkv: object  # rows [query+gate (n_head * 2 * hd, per head [query | gate]) | k | v], fused
    o: object
    q_norm: Array
    k_norm: Array


@dataclass
class DenseFFNWeights:
    gate_up: object  # rows [gate | up], fused
    down: object


@dataclass
class MoEWeights:
    router: object  # [E, n_embd]
    gate_up_exps: list[object]  # per expert [2 * n_ff_exp, n_embd], rows [gate | up]
    down_exps: list[object]  # per expert [n_embd, n_ff_exp]
    shared_gate: Array  # [n_embd]
    shared: DenseFFNWeights


@dataclass
class LayerWeights:
    attn_norm: Array
    post_norm: Array
    mixer: DeltaNetWeights | AttentionWeights
    ffn: DenseFFNWeights | MoEWeights


@dataclass
class Weights:
    embedding: object  # [n_vocab, n_embd], rows decoded when looked up
    layers: list[LayerWeights]
    output_norm: Array
    output: object  # [n_vocab, n_embd]


def load_weights(f: GGUFFile, c: ModelConfig, be: Backend, progress: Callable[[int], None] | None = None) -> Weights:
    """Hand every trunk tensor to the backend as stored (MTP blocks are ignored); `progress(n)` after
    each layer. A tensor type the backend cannot compute on is a ModelFormatError naming it."""
    E, V = c.n_embd, c.n_vocab

    def t(name: str, shape: tuple[int, ...]) -> StoredTensor:
        tensor = f.tensor(name, shape)
        if tensor.qtype not in be.supported_types:
            raise ModelFormatError(
                f"{f.path}: tensor {name} has unsupported type {tensor.qtype.name} for the {be.name} backend "
                f"(supported: {', '.join(sorted(q.name for q in be.supported_types))})"
            )
        return tensor

    def w(*parts: StoredTensor) -> object:
        return be.weight(parts)

    def vec(name: str, shape: tuple[int, ...]) -> Array:
        return be.vector(np.ascontiguousarray(f.load(name, shape), np.float32))

    def dense_ffn(p: str, n_ff: int, suffix: str = "") -> DenseFFNWeights:
        return DenseFFNWeights(
            gate_up=w(t(f"{p}.ffn_gate{suffix}.weight", (n_ff, E)), t(f"{p}.ffn_up{suffix}.weight", (n_ff, E))),
            down=w(t(f"{p}.ffn_down{suffix}.weight", (E, n_ff))),
        )

    embedding_table = t("token_embd.weight", (V, E))
    embedding = be.embedding(embedding_table)
    layers = []
    for i in range(c.n_layer):
        p = f"blk.{i}"
        if c.recurrent_layers[i]:
            C, Vd, Hv = c.conv_channels, c.value_dim, c.ssm_dt_rank
            mixer: DeltaNetWeights | AttentionWeights = DeltaNetWeights(
                in_proj=w(
                    t(f"{p}.attn_qkv.weight", (C, E)),
                    t(f"{p}.attn_gate.weight", (Vd, E)),
                    t(f"{p}.ssm_beta.weight", (Hv, E)),
                    t(f"{p}.ssm_alpha.weight", (Hv, E)),
                ),
                conv=vec(f"{p}.ssm_conv1d.weight", (C, c.conv_kernel)),
                dt_bias=vec(f"{p}.ssm_dt.bias", (Hv,)),
                a=vec(f"{p}.ssm_a", (Hv,)),
                norm=vec(f"{p}.ssm_norm.weight", (c.ssm_d_state,)),
                out=w(t(f"{p}.ssm_out.weight", (E, Vd))),
            )
        else:
            hd, nq, nkv = c.head_dim, c.n_head * c.head_dim, c.n_kv_head * c.head_dim
            if f.has(f"{p}.attn_qkv.weight"):  # some converters fuse Q+gate | K | V already
                qkv = w(t(f"{p}.attn_qkv.weight", (2 * nq + 2 * nkv, E)))
            else:
                qkv = w(
                    t(f"{p}.attn_q.weight", (2 * nq, E)),
                    t(f"{p}.attn_k.weight", (nkv, E)),
                    t(f"{p}.attn_v.weight", (nkv, E)),
                )
            mixer = AttentionWeights(
                qkv=qkv,
                o=w(t(f"{p}.attn_output.weight", (E, nq))),
                q_norm=vec(f"{p}.attn_q_norm.weight", (hd,)),
                k_norm=vec(f"{p}.attn_k_norm.weight", (hd,)),
            )
        if c.is_moe:
            ne, nf = c.n_expert, c.n_ff_exp
            if f.has(f"{p}.ffn_gate_up_exps.weight"):
                gu = t(f"{p}.ffn_gate_up_exps.weight", (ne, 2 * nf, E))
                gate_up = [w(gu[j]) for j in range(ne)]
            else:
                gate_e = t(f"{p}.ffn_gate_exps.weight", (ne, nf, E))
                up_e = t(f"{p}.ffn_up_exps.weight", (ne, nf, E))
                gate_up = [w(gate_e[j], up_e[j]) for j in range(ne)]
            down_e = t(f"{p}.ffn_down_exps.weight", (ne, E, nf))
            ffn: DenseFFNWeights | MoEWeights = MoEWeights(
                router=w(t(f"{p}.ffn_gate_inp.weight", (ne, E))),
                gate_up_exps=gate_up,
                down_exps=[w(down_e[j]) for j in range(ne)],
                shared_gate=vec(f"{p}.ffn_gate_inp_shexp.weight", (E,)),
                shared=dense_ffn(p, c.n_ff_shexp, "_shexp"),
            )
        else:
            ffn = dense_ffn(p, c.n_ff)
        layers.append(
            LayerWeights(
                attn_norm=vec(f"{p}.attn_norm.weight", (E,)),
                post_norm=vec(f"{p}.post_attention_norm.weight", (E,)),
                mixer=mixer,
                ffn=ffn,
            )
        )
        if progress:
            progress(1)
    output = t("output.weight", (V, E)) if f.has("output.weight") else embedding_table
    return Weights(
        embedding=embedding,
        layers=layers,
        output_norm=vec("output_norm.weight", (E,)),
        output=w(output),
    )


class Qwen35:
    """The layer sequence over explicit weights; the only mutation is of the State passed in."""

    def __init__(self, config: ModelConfig, weights: Weights, backend: Backend):
        self.c = c = config
        self.w = weights
        self.be = backend
        self._rec_index = {layer: j for j, layer in enumerate(c.recurrent_layer_ids)}
        self._attn_index = {layer: j for j, layer in enumerate(c.attention_layer_ids)}
        self.delta_shape = DeltaNetShape(c.ssm_n_group, c.ssm_dt_rank, c.ssm_d_state, c.conv_kernel, c.eps)
        half = c.rope_dims // 2
        inv_freq = c.rope_base ** (-np.arange(half, dtype=np.float64) * 2.0 / c.rope_dims)
        self.attn_shape = AttentionShape(c.n_head, c.n_kv_head, c.head_dim, c.rope_dims, inv_freq, c.eps)

    def forward(self, token_ids: np.ndarray, states: Sequence[State], lengths: Sequence[int],
                last_only: bool = False) -> np.ndarray:
        """Float32 host logits of `token_ids`, which hold `lengths[i]` tokens for `states[i]` in turn
        (one sequence, or a batch); [sum(lengths), n_vocab], or one row per sequence (its last) with
        `last_only`. Advances every state. Linear layers run once on all rows (one weight read);
        the recurrent and attention cores run per sequence on its own rows and state, so a
        sequence's logits do not depend on what else is in the batch when the backend's linear
        layers are batch-invariant (kernels.cpu_backend)."""
        c, be, layers = self.c, self.be, self.w.layers
        ends = np.cumsum(lengths)
        spans = list(zip((ends - np.asarray(lengths)).tolist(), ends.tolist()))
        h = be.embed(self.w.embedding, token_ids)
        x = be.rms_norm(h, layers[0].attn_norm, c.eps)
        next_norms = [lw.attn_norm for lw in layers[1:]] + [self.w.output_norm]
        for i, (lw, next_norm) in enumerate(zip(layers, next_norms)):
            if isinstance(lw.mixer, DeltaNetWeights):
                y = self._delta_net(x, lw.mixer, states, spans, self._rec_index[i])
            else:
                y = self._attention(x, lw.mixer, states, spans, self._attn_index[i])
            h, x = be.add_rms_norm(h, y, lw.post_norm, c.eps)
            y = self._moe(x, lw.ffn) if isinstance(lw.ffn, MoEWeights) else self._ffn(x, lw.ffn)
            h, x = be.add_rms_norm(h, y, next_norm, c.eps)  # the next layer's input norm, or the output norm
        for state, n in zip(states, lengths):
            state.position += n
        if last_only and len(token_ids) > len(states):
            x = be.take_rows(x, ends - 1)
        return be.to_host(be.linear(x, self.w.output))

    def _delta_net(self, x: Array, w: DeltaNetWeights, states: Sequence[State], spans: list[tuple[int, int]],
                   j: int) -> Array:
        be = self.be
        proj = be.linear(x, w.in_proj)
        ys = []
        for state, (start, end) in zip(states, spans):
            y, state.conv[j], state.ssm[j] = be.gated_delta_net(
                proj[start:end], w.conv, w.dt_bias, w.a, w.norm, state.conv[j], state.ssm[j], self.delta_shape
            )
            ys.append(y)
        return be.linear(be.concat_rows(ys), w.out)

    def _attention(self, x: Array, w: AttentionWeights, states: Sequence[State], spans: list[tuple[int, int]],
                   j: int) -> Array:
        be = self.be
        proj = be.linear(x, w.qkv)
        ys = [
            be.gated_attention(proj[start:end], w.q_norm, w.k_norm, state.position,
                               functools.partial(state.kv_buffers, j), self.attn_shape)
            for state, (start, end) in zip(states, spans)
        ]
        return be.linear(be.concat_rows(ys), w.o)

    def _ffn(self, x: Array, w: DenseFFNWeights) -> Array:
        """down(SiLU(gate x) * (up x)) with gate and up in one fused matmul."""
        return self.be.linear(self.be.swiglu(self.be.linear(x, w.gate_up)), w.down)

    def _moe(self, x: Array, w: MoEWeights) -> Array:
        """Routed experts plus the sigmoid-gated shared expert."""
        c, be = self.c, self.be
        routed = be.moe(x, w.router, w.gate_up_exps, w.down_exps, c.n_expert_used, c.expert_weights_scale)
        return be.add(routed, be.sigmoid_gate(self._ffn(x, w.shared), x, w.shared_gate))
