"""Reference numpy implementation of the Backend ops (float32 throughout)."""

from __future__ import annotations

import numpy as np

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
    name = "numpy"

    def weight(self, w: np.ndarray) -> np.ndarray:
        return w if w.dtype == np.float32 and w.flags.c_contiguous else np.ascontiguousarray(w, np.float32)

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

    def causal_conv(self, u: np.ndarray, state: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        km1 = state.shape[0]
        padded = np.concatenate([state, u], axis=0)
        t = u.shape[0]
        out = padded[0:t] * w[:, 0]
        for i in range(1, km1 + 1):
            out += padded[i : i + t] * w[:, i]
        return silu(out), padded[t:].copy()

    def delta_rule(self, q, k, v, g, beta, state):
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
