"""The numpy backend's fast forms against plain loops (float64 references)."""

import numpy as np
import pytest

from kernels.numpy_backend import NumpyBackend, delta_rule_chunked, delta_rule_recurrent, unit_lower_inverse


def _delta_inputs(rng, t, h=3, dk=8, dv=6):
    q = rng.standard_normal((t, h, dk)).astype(np.float32)
    k = rng.standard_normal((t, h, dk)).astype(np.float32)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q /= np.linalg.norm(q, axis=-1, keepdims=True) * np.sqrt(dk)
    v = rng.standard_normal((t, h, dv)).astype(np.float32)
    g = -rng.uniform(0.0, 0.5, (t, h)).astype(np.float32)
    beta = rng.uniform(0.1, 0.9, (t, h)).astype(np.float32)
    s0 = rng.standard_normal((h, dk, dv)).astype(np.float32) * 0.3
    return q, k, v, g, beta, s0


def _delta_reference(q, k, v, g, beta, s0):
    """Per head, per token: S_t = e^g (I - b k k^T) S + b k v^T; o = S^T q (float64)."""
    t, h, dk = q.shape
    s = s0.astype(np.float64).copy()
    out = np.zeros(v.shape)
    for i in range(t):
        for j in range(h):
            kk = k[i, j].astype(np.float64)
            s[j] = np.exp(g[i, j]) * (np.eye(dk) - beta[i, j] * np.outer(kk, kk)) @ s[j] + beta[i, j] * np.outer(kk, v[i, j])
            out[i, j] = s[j].T @ q[i, j]
    return out, s


@pytest.mark.parametrize("t", [1, 5, 64, 150])
def test_delta_rule_forms_match_reference(t):
    rng = np.random.default_rng(t)
    args = _delta_inputs(rng, t)
    ref_o, ref_s = _delta_reference(*args)
    for fn in (delta_rule_recurrent, delta_rule_chunked):
        o, s = fn(*args)
        assert o.dtype == np.float32 and s.dtype == np.float32
        np.testing.assert_allclose(o, ref_o, atol=2e-5)
        np.testing.assert_allclose(s, ref_s, atol=2e-5)


def test_chunked_state_carries_across_calls():
    rng = np.random.default_rng(7)
    q, k, v, g, beta, s0 = _delta_inputs(rng, 100)
    o_all, s_all = delta_rule_chunked(q, k, v, g, beta, s0)
    o1, s1 = delta_rule_chunked(q[:37], k[:37], v[:37], g[:37], beta[:37], s0)
    o2, s2 = delta_rule_recurrent(q[37:40], k[37:40], v[37:40], g[37:40], beta[37:40], s1)
    o3, s3 = delta_rule_chunked(q[40:], k[40:], v[40:], g[40:], beta[40:], s2)
    np.testing.assert_allclose(np.concatenate([o1, o2, o3]), o_all, atol=1e-5)
    np.testing.assert_allclose(s3, s_all, atol=1e-5)


def test_attention_matches_loop_with_gqa_and_offset():
    rng = np.random.default_rng(0)
    t, length, h, hkv, d = 5, 12, 4, 2, 8
    q = rng.standard_normal((t, h, d)).astype(np.float32)
    k = rng.standard_normal((length, hkv, d)).astype(np.float32)
    v = rng.standard_normal((length, hkv, d)).astype(np.float32)
    out = NumpyBackend().attention(q, k, v)
    for i in range(t):
        pos = length - t + i
        for j in range(h):
            kv = j // (h // hkv)
            sc = k[: pos + 1, kv] @ q[i, j] / np.sqrt(d)
            p = np.exp(sc - sc.max())
            p /= p.sum()
            np.testing.assert_allclose(out[i, j], p @ v[: pos + 1, kv], atol=1e-5)


def test_causal_conv_streams_like_one_pass():
    rng = np.random.default_rng(1)
    be = NumpyBackend()
    u = rng.standard_normal((10, 6)).astype(np.float32)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    zero = np.zeros((3, 6), np.float32)
    full, st = be.causal_conv(u, zero, w)
    a, st1 = be.causal_conv(u[:4], zero, w)
    b, st2 = be.causal_conv(u[4:], st1, w)
    np.testing.assert_allclose(np.concatenate([a, b]), full, atol=1e-6)
    np.testing.assert_array_equal(st2, st)
    padded = np.concatenate([zero, u])
    ref = sum(padded[i : i + 10] * w[:, i] for i in range(4))
    np.testing.assert_allclose(full, ref / (1 + np.exp(-ref)), atol=1e-6)


def test_unit_lower_inverse():
    rng = np.random.default_rng(2)
    a = np.tril(rng.standard_normal((3, 64, 64)), -1).astype(np.float32) * 0.2
    inv = unit_lower_inverse(a)
    eye = np.broadcast_to(np.eye(64, dtype=np.float32), a.shape)
    np.testing.assert_allclose(inv @ (eye + a), eye, atol=1e-4)
    np.testing.assert_array_equal(np.triu(inv, 1), 0)
