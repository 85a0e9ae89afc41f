"""kernels._fused against the numpy reference backend's ops.

Tolerance: float32 rounding. The fused ops differ from the reference only in the order of
reductions (dot products, norms, softmax sums), in the delta-rule output written as
e^g S^T q + (k . q) delta, and in exp (a polynomial, a few ulp). On values of magnitude ~1 they
agree to atol = rtol = 2e-5 (observed: at most ~1.5e-6 relative); on larger values atol scales
with the largest reference value.
"""

from dataclasses import dataclass

import numpy as np
import pytest

from kernels.backend import AttentionShape, DeltaNetShape
from kernels.numpy_backend import NumpyBackend, silu

fused = pytest.importorskip("kernels._fused", reason="kernels._fused is not built (python setup.py build_ext --inplace)")

TOL = dict(atol=2e-5, rtol=2e-5)  # atol scales with the largest reference value where that exceeds 1
EPS = 1e-6
be = NumpyBackend()


def _isas() -> list[str]:
    found = ["generic"]
    try:
        fused.set_isa("avx2")
        found.append("avx2")
    except ValueError:
        pass
    return found


ISAS = _isas()


@pytest.fixture(params=ISAS)
def isa(request):
    before = fused.isa()
    fused.set_isa(request.param)
    yield request.param
    fused.set_isa(before)


# ---- Gated DeltaNet -----------------------------------------------------------------------


@dataclass
class DeltaNet:
    hk: int
    hv: int
    d: int
    kernel: int = 4

    @property
    def channels(self) -> int:
        return 2 * self.hk * self.d + self.hv * self.d

    @property
    def width(self) -> int:
        return self.channels + self.hv * self.d + 2 * self.hv

    def weights(self, rng) -> dict:
        return dict(
            conv_w=(rng.standard_normal((self.channels, self.kernel)) * 0.5).astype(np.float32),
            dt_bias=rng.standard_normal(self.hv).astype(np.float32),
            a=-np.exp(rng.uniform(-1, 1, self.hv)).astype(np.float32),
            norm_w=(1 + 0.1 * rng.standard_normal(self.d)).astype(np.float32),
        )

    def state(self, rng) -> tuple[np.ndarray, np.ndarray]:
        conv = rng.standard_normal((self.kernel - 1, self.channels)).astype(np.float32)
        ssm = (rng.standard_normal((self.hv, self.d, self.d)) * 0.1).astype(np.float32)
        return conv, ssm


def reference_delta_net(net: DeltaNet, proj, conv_w, dt_bias, a, norm_w, conv_state, ssm_state):
    """The numpy backend's op (recurrent below 4 tokens, chunked above)."""
    shape = DeltaNetShape(net.hk, net.hv, net.d, net.kernel, EPS)
    return be.gated_delta_net(proj, conv_w, dt_bias, a, norm_w, conv_state, ssm_state, shape)


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """TOL, with atol scaled up where the values are far larger than 1."""
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=TOL["rtol"], atol=TOL["atol"] * scale)


def check_delta_steps(net: DeltaNet, steps: tuple[int, ...], seed: int = 0, scale: float = 1.0) -> None:
    """Successive calls from one random state (carried), each checked against the reference."""
    rng = np.random.default_rng(seed)
    w = net.weights(rng)
    conv, ssm = net.state(rng)
    ref_conv, ref_ssm = conv.copy(), ssm.copy()
    for t in steps:
        proj = (rng.standard_normal((t, net.width)) * scale).astype(np.float32)
        y = np.full((t, net.hv * net.d), np.nan, np.float32)
        fused.gated_delta_net(proj, *w.values(), conv, ssm, y, net.hk, net.hv, net.d, EPS)
        with np.errstate(over="ignore"):  # the reference's exp may overflow to inf on purpose
            ref_y, ref_conv, ref_ssm = reference_delta_net(net, proj, **w, conv_state=ref_conv, ssm_state=ref_ssm)
        assert np.isfinite(y).all() and np.isfinite(ssm).all()
        assert_close(y, ref_y)
        np.testing.assert_array_equal(conv, ref_conv)  # raw inputs are copied, not computed
        assert_close(ssm, ref_ssm)


DELTA_DIMS = [DeltaNet(hk=16, hv=16, d=128), DeltaNet(hk=2, hv=4, d=8), DeltaNet(hk=1, hv=3, d=5, kernel=2)]


@pytest.mark.parametrize("net", DELTA_DIMS, ids=lambda n: f"hk{n.hk}-hv{n.hv}-d{n.d}-K{n.kernel}")
def test_gated_delta_net_matches_reference_over_successive_calls(net, isa):
    check_delta_steps(net, (1, 2, 5, 1), seed=net.d)


def test_gated_delta_net_long_step_matches_reference():
    """T larger than the conv window and than the numpy backend's recurrent cut-off."""
    check_delta_steps(DeltaNet(hk=2, hv=4, d=16), (16,), seed=7)


def test_gated_delta_net_large_inputs_stay_finite_and_close():
    """Saturated gates, decays near 0 and SiLU far in its tails (the fused exp saturates at e^-87, e^88)."""
    check_delta_steps(DeltaNet(hk=2, hv=4, d=8), (3, 3), seed=11, scale=100.0)


def test_zero_tokens_change_nothing():
    args = _delta_args(DeltaNet(hk=2, hv=4, d=8), t=0)
    before = args["conv_state"].copy(), args["ssm_state"].copy()
    fused.gated_delta_net(**args)
    np.testing.assert_array_equal(args["conv_state"], before[0])
    np.testing.assert_array_equal(args["ssm_state"], before[1])
    attn = _attention_args(Attention(n_head=4, n_kv=2, hd=8, rope_dims=4), t=0, position=4)
    fused.gated_attention(**attn)
    assert not attn["k_buf"].any()


# ---- Gated attention ----------------------------------------------------------------------


@dataclass
class Attention:
    n_head: int
    n_kv: int
    hd: int
    rope_dims: int
    base: float = 1e7

    @property
    def width(self) -> int:
        return 2 * self.n_head * self.hd + 2 * self.n_kv * self.hd

    @property
    def inv_freq(self) -> np.ndarray:
        half = self.rope_dims // 2
        return self.base ** (-np.arange(half, dtype=np.float64) * 2.0 / self.rope_dims)



def reference_attention(net: Attention, proj, q_norm, k_norm, keys, values, position):
    """The numpy backend's op on head-major copies; keys, values [position, n_kv, hd] hold the prefix."""
    t = proj.shape[0]
    k_buf = np.zeros((net.n_kv, position + t, net.hd), np.float32)
    v_buf = np.zeros_like(k_buf)
    k_buf[:, :position], v_buf[:, :position] = keys.transpose(1, 0, 2), values.transpose(1, 0, 2)
    shape = AttentionShape(net.n_head, net.n_kv, net.hd, net.rope_dims, net.inv_freq, EPS)
    y = be.gated_attention(proj, q_norm, k_norm, position, lambda end: (k_buf, v_buf), shape)
    return y, k_buf.transpose(1, 0, 2), v_buf.transpose(1, 0, 2)


ATTN_DIMS = [Attention(n_head=8, n_kv=2, hd=256, rope_dims=64), Attention(n_head=4, n_kv=2, hd=8, rope_dims=4), Attention(n_head=3, n_kv=1, hd=6, rope_dims=6)]


@pytest.mark.parametrize("net", ATTN_DIMS, ids=lambda n: f"h{n.n_head}-kv{n.n_kv}-hd{n.hd}-rope{n.rope_dims}")
@pytest.mark.parametrize("prefix", [0, 37])
def test_gated_attention_matches_reference_over_successive_calls(net, prefix, isa):
    rng = np.random.default_rng(prefix + net.hd)
    q_norm = (1 + 0.1 * rng.standard_normal(net.hd)).astype(np.float32)
    k_norm = q_norm if prefix else (1 + 0.1 * rng.standard_normal(net.hd)).astype(np.float32)  # inputs may share memory
    keys = rng.standard_normal((prefix, net.n_kv, net.hd)).astype(np.float32)
    values = rng.standard_normal((prefix, net.n_kv, net.hd)).astype(np.float32)
    capacity = prefix + 1 + 2 + 5 + 3
    # rows past the written ones hold NaN: reading any of them would poison the output
    k_buf = np.full((net.n_kv, capacity, net.hd), np.nan, np.float32)
    v_buf = np.full_like(k_buf, np.nan)
    k_buf[:, :prefix], v_buf[:, :prefix] = keys.transpose(1, 0, 2), values.transpose(1, 0, 2)
    position = prefix
    for t in (1, 2, 5):
        proj = (rng.standard_normal((t, net.width)) * 2).astype(np.float32)
        y = np.full((t, net.n_head * net.hd), np.nan, np.float32)
        fused.gated_attention(proj, q_norm, k_norm, k_buf, v_buf, position, net.n_head, net.n_kv, net.hd, net.rope_dims, net.inv_freq, EPS, y)
        ref_y, keys, values = reference_attention(net, proj, q_norm, k_norm, keys, values, position)
        position += t
        assert_close(y, ref_y)
        assert_close(k_buf[:, :position], keys.transpose(1, 0, 2))
        np.testing.assert_array_equal(v_buf[:, :position], values.transpose(1, 0, 2))
    assert np.isnan(k_buf[:, position:]).all() and np.isnan(v_buf[:, position:]).all()


def test_gated_attention_peaked_softmax():
    """Scores in the hundreds: the softmax must subtract its max (exp would overflow otherwise)."""
    net = Attention(n_head=4, n_kv=2, hd=8, rope_dims=4)
    args = _attention_args(net, t=3, capacity=3, position=0)
    args["q_norm"] = args["k_norm"] = np.full(net.hd, 8.0, np.float32)
    args["proj"] *= 100
    fused.gated_attention(**args)
    empty = np.zeros((0, net.n_kv, net.hd), np.float32)
    with np.errstate(over="ignore"):  # the reference's sigmoid overflows to inf on purpose
        ref_y, _, _ = reference_attention(net, args["proj"], args["q_norm"], args["k_norm"], empty, empty, 0)
    assert np.isfinite(args["y"]).all()
    assert_close(args["y"], ref_y)


# ---- Norms and the FFN gate ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1024), (5, 1024), (3, 2, 7)])
def test_norms_and_swiglu_match_reference(shape, isa):
    rng = np.random.default_rng(len(shape))
    n = shape[-1]
    h, y = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    w = (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    out = np.empty(shape, np.float32)
    fused.rms_norm(h, w, EPS, out)
    assert_close(out, be.rms_norm(h, w, EPS))

    summed = h + y
    fused.add_rms_norm(h, y, w, EPS, out)
    np.testing.assert_array_equal(h, summed)
    assert_close(out, be.rms_norm(summed, w, EPS))

    gu = rng.standard_normal(shape[:-1] + (2 * n,)).astype(np.float32)
    fused.swiglu(gu, out)
    assert_close(out, silu(gu[..., :n]) * gu[..., n:])


@pytest.mark.skipif(len(ISAS) < 2, reason="this CPU has only the generic variant")
def test_variants_give_identical_bits():
    net = DeltaNet(hk=16, hv=16, d=128)
    rng = np.random.default_rng(3)
    w = net.weights(rng)
    conv, ssm = net.state(rng)
    proj = rng.standard_normal((2, net.width)).astype(np.float32)
    before = fused.isa()
    results = []
    for name in ISAS:
        fused.set_isa(name)
        c, s, y = conv.copy(), ssm.copy(), np.empty((2, net.hv * net.d), np.float32)
        fused.gated_delta_net(proj, *w.values(), c, s, y, net.hk, net.hv, net.d, EPS)
        results.append((y, s))
    fused.set_isa(before)
    for y, s in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(s, results[0][1])


# ---- Bad input ----------------------------------------------------------------------------


def _delta_args(net: DeltaNet, t: int = 2) -> dict:
    rng = np.random.default_rng(0)
    conv, ssm = net.state(rng)
    return dict(
        proj=rng.standard_normal((t, net.width)).astype(np.float32),
        **net.weights(rng),
        conv_state=conv,
        ssm_state=ssm,
        y=np.zeros((t, net.hv * net.d), np.float32),
        hk=net.hk,
        hv=net.hv,
        d=net.d,
        eps=EPS,
    )


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a


DELTA_BAD = {
    "float64 proj": lambda a: dict(proj=a["proj"].astype(np.float64)),
    "proj too narrow": lambda a: dict(proj=a["proj"][:, :-1].copy()),
    "strided proj": lambda a: dict(proj=np.repeat(a["proj"], 2, axis=1)[:, ::2]),
    "list proj": lambda a: dict(proj=a["proj"].tolist()),
    "y rows != T": lambda a: dict(y=np.zeros((3, a["y"].shape[1]), np.float32)),
    "read-only state": lambda a: dict(ssm_state=_readonly(a["ssm_state"])),
    "conv state for another kernel": lambda a: dict(conv_state=np.zeros((2, a["conv_state"].shape[1]), np.float32)),
    "y overlaps ssm_state": lambda a: dict(y=a["ssm_state"].reshape(-1)[: a["y"].size].reshape(a["y"].shape)),
    "zero heads": lambda a: dict(hk=0),
    "negative eps": lambda a: dict(eps=-1.0),
}


@pytest.mark.parametrize("case", DELTA_BAD)
def test_gated_delta_net_rejects_bad_input_and_touches_nothing(case):
    args = _delta_args(DeltaNet(hk=2, hv=4, d=8))
    states = args["conv_state"], args["ssm_state"]
    before = [s.copy() for s in states]
    args.update(DELTA_BAD[case](args))
    with pytest.raises(ValueError, match="gated_delta_net"):
        fused.gated_delta_net(**args)
    for state, saved in zip(states, before):
        np.testing.assert_array_equal(state, saved)


def _attention_args(net: Attention, t: int = 2, capacity: int = 4, position: int = 1) -> dict:
    rng = np.random.default_rng(0)
    return dict(
        proj=rng.standard_normal((t, net.width)).astype(np.float32),
        q_norm=np.ones(net.hd, np.float32),
        k_norm=np.ones(net.hd, np.float32),
        k_buf=np.zeros((net.n_kv, capacity, net.hd), np.float32),
        v_buf=np.zeros((net.n_kv, capacity, net.hd), np.float32),
        position=position,
        n_head=net.n_head,
        n_kv=net.n_kv,
        hd=net.hd,
        rope_dims=net.rope_dims,
        inv_freq=net.inv_freq,
        eps=EPS,
        y=np.zeros((t, net.n_head * net.hd), np.float32),
    )


ATTN_BAD = {
    "KV capacity too small": lambda a: dict(position=3),
    "negative position": lambda a: dict(position=-1),
    "float32 inv_freq": lambda a: dict(inv_freq=a["inv_freq"].astype(np.float32)),
    "inv_freq for other rope dims": lambda a: dict(inv_freq=a["inv_freq"][:1].copy()),
    "heads not a multiple of kv": lambda a: dict(n_head=3, proj=np.zeros((2, 2 * 3 * 8 + 2 * 2 * 8), np.float32), y=np.zeros((2, 24), np.float32)),
    "odd rope dims": lambda a: dict(rope_dims=3),
    "rope dims beyond head": lambda a: dict(rope_dims=10),
    "v_buf of another capacity": lambda a: dict(v_buf=np.zeros((2, 5, 8), np.float32)),
    "y aliases k_buf": lambda a: dict(y=a["k_buf"].reshape(-1)[:32].reshape(2, 16)),
    "k_norm wrong length": lambda a: dict(k_norm=np.ones(7, np.float32)),
}


@pytest.mark.parametrize("case", ATTN_BAD)
def test_gated_attention_rejects_bad_input_and_touches_nothing(case):
    args = _attention_args(Attention(n_head=4, n_kv=2, hd=8, rope_dims=4))
    args.update(ATTN_BAD[case](args))
    with pytest.raises(ValueError, match="gated_attention"):
        fused.gated_attention(**args)
    assert not args["k_buf"].any() and not args["v_buf"].any()


@pytest.mark.parametrize(
    "call",
    [
        lambda: fused.rms_norm(np.zeros((2, 4), np.float32), np.ones(3, np.float32), EPS, np.zeros((2, 4), np.float32)),
        lambda: fused.rms_norm(np.zeros((2, 4), np.float32), np.ones(4, np.float32), EPS, np.zeros((4, 2), np.float32)),
        lambda: fused.add_rms_norm(np.zeros((2, 4), np.float32), np.zeros((1, 4), np.float32), np.ones(4, np.float32), EPS, np.zeros((2, 4), np.float32)),
        lambda: fused.add_rms_norm(*([np.zeros((2, 4), np.float32)] * 2), np.ones(4, np.float32), EPS, np.zeros((2, 4), np.float32)),
        lambda: fused.swiglu(np.zeros((2, 5), np.float32), np.zeros((2, 2), np.float32)),
        lambda: fused.swiglu(np.zeros((2, 8), np.float32), np.zeros((2, 4), np.float64)),
        lambda: fused.set_isa("avx9000"),
    ],
    ids=["w length", "out shape", "y shape", "h is y", "odd width", "float64 out", "unknown isa"],
)
def test_small_ops_reject_bad_input(call):
    with pytest.raises(ValueError):
        call()
