"""Reference numpy implementation of the Backend ops (float32 throughout)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gguf import GGMLQuantizationType as QT

from kernels import quant
from kernels.backend import KVBuffers, AttentionShape, DeltaNetShape, StoredTensor

CHUNK = 64  # delta-rule chunk length (same as llama.cpp and HF)
RECURRENT_MAX_TOKENS = 4  # below this, the token-by-token form is cheaper than one chunk
ATTN_SCORE_BUDGET = 1 << 24  # floats per attention score block; bounds memory on long prompts


def sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.negative(x)
    np.exp(out, out=out)
    out += 1.0
    return np.reciprocal(out, out=out)


def silu(x: np.ndarray) -> np.ndarray:
    out = sigmoid(x)
    out *= x
    return out


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(np.float32(0.0), x)


class NumpyBackend:
    """Float32 numpy throughout: weights are decoded to float32 once at load (memory heavy, but
    every op reads like the math it implements)."""

    name = "numpy"
    supported_types = quant.SUPPORTED_TYPES

    def __init__(self) -> None:
        self._decoded: dict[tuple[str, ...], np.ndarray] = {}

    # -- weights
    def weight(self, parts: Sequence[StoredTensor]) -> np.ndarray:
        """Decoded once per tensor: a tied output layer shares the embedding's array."""
        key = tuple(p.name for p in parts)
        if key not in self._decoded:
            self._decoded[key] = np.concatenate([decode(p) for p in parts]) if len(parts) > 1 else decode(parts[0])
        return self._decoded[key]

    def embedding(self, table: StoredTensor) -> np.ndarray:
        return self.weight([table])

    def vector(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, np.float32)

    @property
    def resident_weight_bytes(self) -> int:
        return sum(w.nbytes for w in self._decoded.values() if w.flags.owndata)

    # -- activations
    def embed(self, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return table[ids]

    def linear(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x @ w.T

    def rms_norm(self, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        # ufunc calls rather than np.mean: its Python wrapper costs more than the math at decode sizes
        scale = np.add.reduce(np.square(x), axis=-1, keepdims=True)
        scale *= np.float32(1.0 / x.shape[-1])
        scale += np.float32(eps)
        np.sqrt(scale, out=scale)
        out = x / scale
        out *= w
        return out

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def add_rms_norm(self, h: np.ndarray, y: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
        h = h + y
        return h, self.rms_norm(h, w, eps)

    def take_rows(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return x[rows]

    def concat_rows(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def swiglu(self, gate_up: np.ndarray) -> np.ndarray:
        half = gate_up.shape[1] // 2
        out = silu(gate_up[:, :half])
        out *= gate_up[:, half:]
        return out

    def sigmoid_gate(self, y: np.ndarray, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return y * sigmoid(x @ w)[:, None]

    def gated_delta_net(self, proj, conv_w, dt_bias, a, norm_w, conv_state, ssm_state, shape: DeltaNetShape):
        t = proj.shape[0]
        hk, hv, d, eps = shape.hk, shape.hv, shape.d, shape.eps
        cc, vd, kd = shape.conv_channels, hv * d, hk * d
        mixed, conv_state = self.causal_conv(proj[:, :cc], conv_state, conv_w)
        z = proj[:, cc : cc + vd].reshape(t, hv, d)
        beta = sigmoid(proj[:, cc + vd : cc + vd + hv])
        g = a * softplus(proj[:, cc + vd + hv :] + dt_bias)
        q = l2norm(mixed[:, :kd].reshape(t, hk, d), eps)
        k = l2norm(mixed[:, kd : 2 * kd].reshape(t, hk, d), eps)
        v = mixed[:, 2 * kd :].reshape(t, hv, d)
        tile = np.arange(hv) % hk  # GGUF qwen35: V head h reads K head h mod Hk
        q = q[:, tile] * np.float32(1.0 / np.sqrt(d))
        k = k[:, tile]
        o, ssm_state = self.delta_rule(q, k, v, g, beta, ssm_state)
        y = self.rms_norm(o, norm_w, eps) * silu(z)
        return y.reshape(t, vd), conv_state, ssm_state

    def gated_attention(self, proj, q_norm, k_norm, position: int, kv: KVBuffers, shape: AttentionShape):
        t, hd, nh, nkv = proj.shape[0], shape.hd, shape.n_head, shape.n_kv
        nq = 2 * nh * hd
        qg = proj[:, :nq].reshape(t, nh, 2 * hd)
        q, gate = qg[..., :hd], qg[..., hd:]
        q = self.rms_norm(q, q_norm, shape.eps)
        k = self.rms_norm(proj[:, nq : nq + nkv * hd].reshape(t, nkv, hd), k_norm, shape.eps)
        v = proj[:, nq + nkv * hd :].reshape(t, nkv, hd)
        positions = np.arange(position, position + t)
        q, k = rope(q, positions, shape), rope(k, positions, shape)
        end = position + t
        k_buf, v_buf = kv(end)
        k_buf[:, position:end] = k.transpose(1, 0, 2)
        v_buf[:, position:end] = v.transpose(1, 0, 2)
        out = self.attention(q, k_buf[:, :end].transpose(1, 0, 2), v_buf[:, :end].transpose(1, 0, 2)) * sigmoid(gate)
        return out.reshape(t, nh * hd)

    def moe(self, x, router, gate_up, down, n_used: int, scale: float):
        logits = self.linear(x, router)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        top = np.argpartition(-probs, n_used - 1, axis=-1)[:, :n_used]
        weights = np.take_along_axis(probs, top, axis=-1)
        weights /= weights.sum(axis=-1, keepdims=True)
        if scale not in (0.0, 1.0):
            weights *= scale
        out = np.zeros_like(x)
        for e in np.unique(top):  # each expert runs on the tokens routed to it, once
            rows, slot = np.nonzero(top == e)
            ye = self.linear(self.swiglu(self.linear(x[rows], gate_up[e])), down[e])
            out[rows] += weights[rows, slot][:, None] * ye
        return out

    # -- state storage
    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, np.float32)

    def to_host(self, a: np.ndarray) -> np.ndarray:
        return a

    def from_host(self, a: np.ndarray) -> np.ndarray:
        return np.array(a, np.float32)

    # -- building blocks of the ops above
    def causal_conv(self, u: np.ndarray, state: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Depthwise causal conv + SiLU. u [T, C], state [K-1, C] (previous raw inputs), w [C, K].
        Returns (SiLU(conv) [T, C], new state = last K-1 raw inputs)."""
        km1 = state.shape[0]
        padded = np.concatenate([state, u], axis=0)
        t = u.shape[0]
        out = padded[0:t] * w[:, 0]
        for i in range(1, km1 + 1):
            out += padded[i : i + t] * w[:, i]
        return silu(out), padded[t:].copy()

    def delta_rule(self, q, k, v, g, beta, state):
        """Gated delta rule. q, k [T, H, dk] (normalised, q scaled), v [T, H, dv], g (log decay)
        and beta [T, H], state S [H, dk, dv]. Returns (o [T, H, dv], new state)."""
        if q.shape[0] < RECURRENT_MAX_TOKENS:
            return delta_rule_recurrent(q, k, v, g, beta, state)
        return delta_rule_chunked(q, k, v, g, beta, state)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Per KV head, plain 2-D matmuls. numpy only uses BLAS when each head's [L, d] keys and
        values are contiguous (the engine's KV buffers are head-major for that); strided operands
        fall back to a loop that is 10-100x slower at long context."""
        t, h, d = q.shape
        length, hkv, _ = k.shape
        r = h // hkv  # query heads g*r .. g*r+r-1 share KV head g
        first = length - t  # position of query 0
        scale = np.float32(1.0 / np.sqrt(d))
        out = np.empty((t, h, d), np.float32)
        block = max(1, ATTN_SCORE_BUDGET // max(1, r * length))
        for g in range(hkv):
            keys, values = np.ascontiguousarray(k[:, g]), np.ascontiguousarray(v[:, g])  # no copy for engine state
            for s in range(0, t, block):
                e = min(t, s + block)
                scores = (q[s:e, g * r : (g + 1) * r] * scale).reshape(-1, d) @ keys.T  # rows (query, head)
                qpos = np.repeat(np.arange(first + s, first + e), r)
                tail = scores[:, first + s :]  # only these keys can lie in some row's future
                tail[np.arange(first + s, length)[None, :] > qpos[:, None]] = -np.inf
                scores -= scores.max(axis=-1, keepdims=True)
                np.exp(scores, out=scores)
                scores /= scores.sum(axis=-1, keepdims=True)
                out[s:e, g * r : (g + 1) * r] = (scores @ values).reshape(e - s, r, d)
        return out

def decode(t: StoredTensor) -> np.ndarray:
    """The tensor as float32 in numpy order (F32 tensors are used in place)."""
    if t.qtype == QT.F32:
        return t.data.view(np.float32).reshape(t.shape)
    return quant.dequantize(t.data, t.qtype, t.shape)


def l2norm(x: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(sum x^2 + eps) per head (the HF form; llama.cpp's max(|x|, eps) differs by ~eps)."""
    norm = np.add.reduce(np.square(x), axis=-1, keepdims=True)
    norm += np.float32(eps)
    np.sqrt(norm, out=norm)
    return x / norm


def rope(x: np.ndarray, positions: np.ndarray, shape: AttentionShape) -> np.ndarray:
    """NEOX rotary embedding on the first rope_dims dims (pairs i, i + rope_dims/2)."""
    half = shape.rope_dims // 2
    angles = positions[:, None].astype(np.float64) * shape.inv_freq[None, :]
    cos = np.cos(angles).astype(np.float32)[:, None, :]
    sin = np.sin(angles).astype(np.float32)[:, None, :]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    out = x.copy()
    out[..., :half] = x1 * cos - x2 * sin
    out[..., half : 2 * half] = x2 * cos + x1 * sin
    return out


def delta_rule_recurrent(q, k, v, g, beta, state):
    """Token-by-token gated delta rule: S <- e^g S; S <- S + k (beta (v - S^T k))^T; o = S^T q."""
    s = state.copy()
    t = q.shape[0]
    out = np.empty(v.shape, np.float32)
    decay = np.exp(g)
    for i in range(t):
        s *= decay[i][:, None, None]
        pred = (k[i][:, None, :] @ s)[:, 0]  # [H, dv]
        delta = beta[i][:, None] * (v[i] - pred)
        s += k[i][:, :, None] * delta[:, None, :]
        out[i] = (q[i][:, None, :] @ s)[:, 0]
    return out, s


def unit_lower_inverse(a: np.ndarray) -> np.ndarray:
    """(I + A)^-1 for strictly lower-triangular A [..., n, n], by forward substitution row by row
    (4x faster than numpy's batched LU solve at n = 64, and exact up to rounding)."""
    n = a.shape[-1]
    t = np.broadcast_to(np.eye(n, dtype=a.dtype), a.shape).copy()
    for i in range(1, n):
        t[..., i, :i] -= np.einsum("...j,...jk->...k", a[..., i, :i], t[..., :i, :i])
    return t


def delta_rule_chunked(q, k, v, g, beta, state, chunk: int = CHUNK):
    """Chunked (WY / UT-transform) form of the gated delta rule, identical to the recurrence.

    Per chunk with gamma = cumsum(g): D_ij = exp(gamma_i - gamma_j) (i >= j),
    A = strict_lower((beta K) K^T * D), T = (I + A)^-1, U = T (beta V), W = T (beta e^gamma K),
    V' = U - W S, O = (Q e^gamma) S + ((Q K^T) * D) V', S <- e^gamma_n S + (K e^(gamma_n - gamma))^T V'.
    """
    t, h, dk = q.shape
    dv = v.shape[2]
    s = state.astype(np.float32, copy=True)
    # head-major and contiguous: numpy's stacked matmul leaves BLAS for strided operands (10x slower)
    qh, kh, vh = (np.ascontiguousarray(a.transpose(1, 0, 2)) for a in (q, k, v))  # [H, T, d]
    gh, bh = g.T, beta.T  # [H, T]
    out = np.empty((h, t, dv), np.float32)
    for c0 in range(0, t, chunk):
        c1 = min(t, c0 + chunk)
        n = c1 - c0
        qc, kc, vc, bc = qh[:, c0:c1], kh[:, c0:c1], vh[:, c0:c1], bh[:, c0:c1]
        gamma = np.cumsum(gh[:, c0:c1], axis=1)
        lower = np.tril(np.ones((n, n), bool))
        diff = np.where(lower, gamma[:, :, None] - gamma[:, None, :], -np.inf)
        decay = np.exp(diff)  # [H, n, n], zero above the diagonal
        a = np.tril((kc * bc[..., None]) @ kc.transpose(0, 2, 1) * decay, -1)
        rhs = np.concatenate([vc * bc[..., None], kc * (bc * np.exp(gamma))[..., None]], axis=2)
        sol = unit_lower_inverse(a) @ rhs
        u, w = sol[..., :dv], sol[..., dv:]
        vp = u - w @ s
        out[:, c0:c1] = (qc * np.exp(gamma)[..., None]) @ s + ((qc @ kc.transpose(0, 2, 1)) * decay) @ vp
        last = gamma[:, -1]
        s = np.exp(last)[:, None, None] * s + (kc * np.exp(last[:, None] - gamma)[..., None]).transpose(0, 2, 1) @ vp
    return out.transpose(1, 0, 2), s.astype(np.float32)
