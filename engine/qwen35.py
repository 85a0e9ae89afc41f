"""Qwen3.5 hybrid model (qwen35 dense, qwen35moe): Gated DeltaNet + gated full attention.

Layer math follows ../shared/docs/qwen35-architecture.md sections 2-4 with GGUF conventions
(norm weights already hold 1 + w, ssm_a = -exp(A_log), V heads tiled so V head h reads K head
h mod Hk). All heavy compute goes through a `kernels.backend.Backend`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.config import ModelConfig
from engine.gguf_loader import GGUFFile
from engine.state import State
from kernels.backend import Backend
from kernels.numpy_backend import sigmoid, silu, softplus


@dataclass
class DeltaNetWeights:
    in_proj: object  # rows [qkv (C) | gate z (Vd) | beta (Hv) | alpha (Hv)], fused: one matmul per layer
    conv: np.ndarray  # [C, K]
    dt_bias: np.ndarray  # [Hv]
    a: np.ndarray  # [Hv], = -exp(A_log)
    norm: np.ndarray  # [dv]
    out: object


@dataclass
class AttentionWeights:
    qkv: object  # rows [query+gate (n_head * 2 * hd, per head [query | gate]) | k | v], fused
    o: object
    q_norm: np.ndarray
    k_norm: np.ndarray


@dataclass
class DenseFFNWeights:
    gate_up: object  # rows [gate | up], fused
    down: object


@dataclass
class MoEWeights:
    router: object  # [E, n_embd]
    gate_up_exps: list[object]  # per expert [2 * n_ff_exp, n_embd], rows [gate | up]
    down_exps: list[object]  # per expert [n_embd, n_ff_exp]
    shared_gate: np.ndarray  # [n_embd]
    shared: DenseFFNWeights


@dataclass
class LayerWeights:
    attn_norm: np.ndarray
    post_norm: np.ndarray
    mixer: DeltaNetWeights | AttentionWeights
    ffn: DenseFFNWeights | MoEWeights


@dataclass
class Weights:
    embedding: np.ndarray  # [n_vocab, n_embd], rows looked up directly
    layers: list[LayerWeights]
    output_norm: np.ndarray
    output: object  # [n_vocab, n_embd]


def load_weights(f: GGUFFile, c: ModelConfig, be: Backend, progress: Callable[[int], None] | None = None) -> Weights:
    """Read and check every trunk tensor (MTP blocks are ignored); `progress(n)` after each layer."""
    E, V = c.n_embd, c.n_vocab

    def w(name: str, shape: tuple[int, ...]) -> object:
        return be.weight(f.load(name, shape))

    def vec(name: str, n: int) -> np.ndarray:
        return np.ascontiguousarray(f.load(name, (n,)), np.float32)

    def fused(*parts: np.ndarray) -> object:
        return be.weight(np.concatenate(parts, axis=0))

    def dense_ffn(p: str, n_ff: int, suffix: str = "") -> DenseFFNWeights:
        return DenseFFNWeights(
            gate_up=fused(f.load(f"{p}.ffn_gate{suffix}.weight", (n_ff, E)), f.load(f"{p}.ffn_up{suffix}.weight", (n_ff, E))),
            down=w(f"{p}.ffn_down{suffix}.weight", (E, n_ff)),
        )

    embedding = np.ascontiguousarray(f.load("token_embd.weight", (V, E)), np.float32)
    layers = []
    for i in range(c.n_layer):
        p = f"blk.{i}"
        if c.recurrent_layers[i]:
            C, Vd, Hv = c.conv_channels, c.value_dim, c.ssm_dt_rank
            mixer: DeltaNetWeights | AttentionWeights = DeltaNetWeights(
                in_proj=fused(
                    f.load(f"{p}.attn_qkv.weight", (C, E)),
                    f.load(f"{p}.attn_gate.weight", (Vd, E)),
                    f.load(f"{p}.ssm_beta.weight", (Hv, E)),
                    f.load(f"{p}.ssm_alpha.weight", (Hv, E)),
                ),
                conv=np.ascontiguousarray(f.load(f"{p}.ssm_conv1d.weight", (C, c.conv_kernel)), np.float32),
                dt_bias=vec(f"{p}.ssm_dt.bias", Hv),
                a=vec(f"{p}.ssm_a", Hv),
                norm=vec(f"{p}.ssm_norm.weight", c.ssm_d_state),
                out=w(f"{p}.ssm_out.weight", (E, Vd)),
            )
        else:
            hd, nq, nkv = c.head_dim, c.n_head * c.head_dim, c.n_kv_head * c.head_dim
            if f.has(f"{p}.attn_qkv.weight"):  # some converters fuse Q+gate | K | V already
                qkv = be.weight(f.load(f"{p}.attn_qkv.weight", (2 * nq + 2 * nkv, E)))
            else:
                qkv = fused(
                    f.load(f"{p}.attn_q.weight", (2 * nq, E)),
                    f.load(f"{p}.attn_k.weight", (nkv, E)),
                    f.load(f"{p}.attn_v.weight", (nkv, E)),
                )
            mixer = AttentionWeights(
                qkv=qkv,
                o=w(f"{p}.attn_output.weight", (E, nq)),
                q_norm=vec(f"{p}.attn_q_norm.weight", hd),
                k_norm=vec(f"{p}.attn_k_norm.weight", hd),
            )
        if c.is_moe:
            ne, nf = c.n_expert, c.n_ff_exp
            if f.has(f"{p}.ffn_gate_up_exps.weight"):
                gu = f.load(f"{p}.ffn_gate_up_exps.weight", (ne, 2 * nf, E))
                gate_e, up_e = gu[:, :nf], gu[:, nf:]
            else:
                gate_e = f.load(f"{p}.ffn_gate_exps.weight", (ne, nf, E))
                up_e = f.load(f"{p}.ffn_up_exps.weight", (ne, nf, E))
            down_e = f.load(f"{p}.ffn_down_exps.weight", (ne, E, nf))
            ffn: DenseFFNWeights | MoEWeights = MoEWeights(
                router=w(f"{p}.ffn_gate_inp.weight", (ne, E)),
                gate_up_exps=[fused(gate_e[j], up_e[j]) for j in range(ne)],
                down_exps=[be.weight(down_e[j]) for j in range(ne)],
                shared_gate=vec(f"{p}.ffn_gate_inp_shexp.weight", E),
                shared=dense_ffn(p, c.n_ff_shexp, "_shexp"),
            )
        else:
            ffn = dense_ffn(p, c.n_ff)
        layers.append(
            LayerWeights(
                attn_norm=vec(f"{p}.attn_norm.weight", E),
                post_norm=vec(f"{p}.post_attention_norm.weight", E),
                mixer=mixer,
                ffn=ffn,
            )
        )
        if progress:
            progress(1)
    output = f.load("output.weight", (V, E)) if f.has("output.weight") else embedding
    return Weights(
        embedding=embedding,
        layers=layers,
        output_norm=vec("output_norm.weight", E),
        output=be.weight(output),
    )


class Qwen35:
    """Pure layer functions over explicit weights; the only mutation is of the State passed in."""

    def __init__(self, config: ModelConfig, weights: Weights, backend: Backend):
        self.c = config
        self.w = weights
        self.be = backend
        self._rec_index = {layer: j for j, layer in enumerate(config.recurrent_layer_ids)}
        self._attn_index = {layer: j for j, layer in enumerate(config.attention_layer_ids)}
        half = config.rope_dims // 2
        self._inv_freq = (config.rope_base ** (-np.arange(half, dtype=np.float64) * 2.0 / config.rope_dims))

    def forward(self, token_ids: np.ndarray, state: State, last_only: bool = False) -> np.ndarray:
        c, be = self.c, self.be
        h = self.w.embedding[token_ids]
        for i, lw in enumerate(self.w.layers):
            x = be.rms_norm(h, lw.attn_norm, c.eps)
            if isinstance(lw.mixer, DeltaNetWeights):
                h = h + self._delta_net(x, lw.mixer, state, self._rec_index[i])
            else:
                h = h + self._attention(x, lw.mixer, state, self._attn_index[i])
            x = be.rms_norm(h, lw.post_norm, c.eps)
            h = h + (self._moe(x, lw.ffn) if isinstance(lw.ffn, MoEWeights) else self._ffn(x, lw.ffn))
        state.position += len(token_ids)
        if last_only:
            h = h[-1:]
        return be.linear(be.rms_norm(h, self.w.output_norm, c.eps), self.w.output)

    def _delta_net(self, x: np.ndarray, w: DeltaNetWeights, state: State, j: int) -> np.ndarray:
        c, be = self.c, self.be
        t = x.shape[0]
        hk, hv, d = c.ssm_n_group, c.ssm_dt_rank, c.ssm_d_state
        proj = be.linear(x, w.in_proj)
        cc, vd = c.conv_channels, c.value_dim
        mixed, state.conv[j] = be.causal_conv(proj[:, :cc], state.conv[j], w.conv)
        z = proj[:, cc : cc + vd].reshape(t, hv, d)
        beta = sigmoid(proj[:, cc + vd : cc + vd + hv])
        g = w.a * softplus(proj[:, cc + vd + hv :] + w.dt_bias)
        kd = c.key_dim
        q = _l2norm(mixed[:, :kd].reshape(t, hk, d), c.eps)
        k = _l2norm(mixed[:, kd : 2 * kd].reshape(t, hk, d), c.eps)
        v = mixed[:, 2 * kd :].reshape(t, hv, d)
        tile = np.arange(hv) % hk  # GGUF qwen35: V head h reads K head h mod Hk
        q = q[:, tile] * np.float32(1.0 / np.sqrt(d))
        k = k[:, tile]
        o, state.ssm[j] = be.delta_rule(q, k, v, g, beta, state.ssm[j])
        y = be.rms_norm(o, w.norm, c.eps) * silu(z)
        return be.linear(y.reshape(t, hv * d), w.out)

    def _attention(self, x: np.ndarray, w: AttentionWeights, state: State, j: int) -> np.ndarray:
        c, be = self.c, self.be
        t, hd = x.shape[0], c.head_dim
        proj = be.linear(x, w.qkv)
        nq, nkv = 2 * c.n_head * hd, c.n_kv_head * hd
        qg = proj[:, :nq].reshape(t, c.n_head, 2 * hd)
        q, gate = qg[..., :hd], qg[..., hd:]
        q = be.rms_norm(q, w.q_norm, c.eps)
        k = be.rms_norm(proj[:, nq : nq + nkv].reshape(t, c.n_kv_head, hd), w.k_norm, c.eps)
        v = proj[:, nq + nkv :].reshape(t, c.n_kv_head, hd)
        positions = np.arange(state.position, state.position + t)
        q, k = self._rope(q, positions), self._rope(k, positions)
        keys, values = state.append_kv(j, k, v)
        out = be.attention(q, keys, values) * sigmoid(gate)
        return be.linear(out.reshape(t, c.n_head * hd), w.o)

    def _rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """NEOX rotary embedding on the first rope_dims dims (pairs i, i + rope_dims/2)."""
        half = self.c.rope_dims // 2
        angles = positions[:, None].astype(np.float64) * self._inv_freq[None, :]
        cos = np.cos(angles).astype(np.float32)[:, None, :]
        sin = np.sin(angles).astype(np.float32)[:, None, :]
        x1, x2 = x[..., :half], x[..., half : 2 * half]
        out = x.copy()
        out[..., :half] = x1 * cos - x2 * sin
        out[..., half : 2 * half] = x2 * cos + x1 * sin
        return out

    def _ffn(self, x: np.ndarray, w: DenseFFNWeights) -> np.ndarray:
        return self._gated_mlp(x, w.gate_up, w.down)

    def _gated_mlp(self, x: np.ndarray, gate_up: object, down: object) -> np.ndarray:
        """down(SiLU(gate x) * (up x)) with gate and up in one fused matmul."""
        gu = self.be.linear(x, gate_up)
        half = gu.shape[1] // 2
        return self.be.linear(silu(gu[:, :half]) * gu[:, half:], down)

    def _moe(self, x: np.ndarray, w: MoEWeights) -> np.ndarray:
        """Softmax over all experts, top-k renormalised, plus the sigmoid-gated shared expert."""
        c, be = self.c, self.be
        logits = be.linear(x, w.router)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        top = np.argpartition(-probs, c.n_expert_used - 1, axis=-1)[:, : c.n_expert_used]
        weights = np.take_along_axis(probs, top, axis=-1)
        weights /= weights.sum(axis=-1, keepdims=True)
        if c.expert_weights_scale not in (0.0, 1.0):
            weights *= c.expert_weights_scale
        out = np.zeros_like(x)
        for e in np.unique(top):
            rows, slot = np.nonzero(top == e)
            ye = self._gated_mlp(x[rows], w.gate_up_exps[e], w.down_exps[e])
            out[rows] += weights[rows, slot][:, None] * ye
        shared = self._ffn(x, w.shared) * sigmoid(x @ w.shared_gate)[:, None]
        return out + shared


def _l2norm(x: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(sum x^2 + eps) per head (the HF form; llama.cpp's max(|x|, eps) differs by ~eps)."""
    norm = np.add.reduce(np.square(x), axis=-1, keepdims=True)
    norm += np.float32(eps)
    np.sqrt(norm, out=norm)
    return x / norm
