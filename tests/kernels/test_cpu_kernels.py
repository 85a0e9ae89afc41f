"""kernels._cpu, the compiled CPU kernels, on every SIMD variant this CPU can run.

Stated tolerances:
- dequant_rows is bit-exact with gguf.quants.dequantize and kernels.quant.dequantize.
- qmatmul on F32/F16/BF16 weights (float32 FMA on float32 activations): relative error of the
  output matrix (Frobenius norm, against float64 x @ W.T on the dequantized weights) <= 1e-5.
- qmatmul on integer types quantizes each activation row to int8 (absmax scale per 32 values,
  or per 256 for the K-quants and IQ4_XS), as llama.cpp does; that rounding sets the error:
  <= 1e-2 for 32-value activation blocks, <= 1.5e-2 for 256-value ones (Gaussian data gives
  about 0.5% and 0.7%; a wrong kernel gives errors of order 1).
- Results are bitwise identical across thread counts, batch sizes (row t of the output depends
  only on x[t]) and between the AVX2 and AVX-512 VNNI variants (exact integer sums, same float
  operation order).
"""

import mmap
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize as gguf_dequantize

from kernels import quant
from tests.kernels.test_quant import ALL_TYPES, FLOAT_TYPES, random_tensor_bytes

cpu = pytest.importorskip("kernels._cpu")

ISAS = cpu.available_isas()
K_QUANT_ACTIVATIONS = {QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ4_XS}
T_VALUES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 64)


def tolerance(qtype: QT) -> float:
    if qtype in FLOAT_TYPES:
        return 1e-5
    return 1.5e-2 if qtype in K_QUANT_ACTIVATIONS else 1e-2


def block_size(qtype: QT) -> int:
    return GGML_QUANT_SIZES[qtype][0]


@pytest.fixture(params=ISAS)
def isa(request):
    before = cpu.isa()
    cpu.set_isa(request.param)
    yield request.param
    cpu.set_isa(before)


@pytest.fixture
def threads():
    """Restores the pool size a test changes."""
    before = cpu.get_threads()
    yield
    cpu.set_threads(before)


def random_weights(rng, qtype: QT, n_rows: int, k: int, raw: bool) -> np.ndarray:
    """Weight bytes (uint8, n_rows * row bytes): raw random blocks with sane fp16 scales (every
    code pattern, e.g. Q8_0's -128 or negative Q6_K scales), or quantized Gaussian floats."""
    if raw:
        n_blocks = n_rows * k // block_size(qtype)
        return np.ascontiguousarray(random_tensor_bytes(rng, qtype, n_blocks)).view(np.uint8)
    data = quant.quantize(rng.standard_normal((n_rows, k)).astype(np.float32), qtype)
    return np.ascontiguousarray(data).view(np.uint8).reshape(-1)


def reference_rows(w: np.ndarray, qtype: QT, n_rows: int, k: int) -> np.ndarray:
    return gguf_dequantize(w.reshape(n_rows, -1), qtype).reshape(n_rows, k)


def ks_for(qtype: QT) -> list[int]:
    """One block, an odd number of blocks and many blocks (float types: odd tails too)."""
    if qtype in FLOAT_TYPES:
        return [1, 7, 37, 1000]
    return [block_size(qtype) * n for n in (1, 3, 8)]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


# ----------------------------------------------------------------------------- dequant_rows

@pytest.mark.parametrize("raw", [True, False], ids=["raw-blocks", "quantized"])
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_dequant_rows_is_bit_exact_with_both_references(qtype, raw):
    rng = np.random.default_rng(int(qtype))
    n_rows, k = 21, 8 * block_size(qtype) if qtype not in FLOAT_TYPES else 300
    w = random_weights(rng, qtype, n_rows, k, raw)
    want = reference_rows(w, qtype, n_rows, k)
    assert np.array_equal(want, quant.dequantize(w, qtype, (n_rows, k)), equal_nan=True)
    got = np.full((n_rows - 5, k), np.nan, dtype=np.float32)
    cpu.dequant_rows(w, int(qtype), k, 3, n_rows - 2, got)
    assert np.array_equal(got.view(np.uint32), want[3:n_rows - 2].view(np.uint32))


def test_dequant_rows_of_a_large_tensor_uses_the_pool_and_stays_exact(threads):
    rng = np.random.default_rng(1)
    n_rows, k = 600, 512
    w = random_weights(rng, QT.Q4_K, n_rows, k, raw=True)
    want = reference_rows(w, QT.Q4_K, n_rows, k)
    for n in (1, 2):
        cpu.set_threads(n)
        got = np.empty((n_rows, k), dtype=np.float32)
        cpu.dequant_rows(w, int(QT.Q4_K), k, 0, n_rows, got)
        assert np.array_equal(got, want)


# ----------------------------------------------------------------------------- qmatmul accuracy

@pytest.mark.parametrize("raw", [True, False], ids=["raw-blocks", "quantized"])
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_qmatmul_matches_float64_reference_on_odd_shapes(isa, qtype, raw):
    rng = np.random.default_rng(int(qtype) * 7 + raw)
    for n_rows, k in zip((1, 3, 7, 33, 257), ks_for(qtype) + [ks_for(qtype)[-1]]):
        w = random_weights(rng, qtype, n_rows, k, raw)
        ref_w = reference_rows(w, qtype, n_rows, k).astype(np.float64)
        x = rng.standard_normal((max(T_VALUES), k)).astype(np.float32)
        full = np.full((max(T_VALUES), n_rows + 5), np.nan, dtype=np.float32)
        cpu.qmatmul(w, int(qtype), n_rows, k, x, full, out_col=3)
        assert np.isnan(full[:, :3]).all() and np.isnan(full[:, 3 + n_rows:]).all(), "wrote outside its columns"
        want = x.astype(np.float64) @ ref_w.T
        assert relative_error(full[:, 3:3 + n_rows], want) <= tolerance(qtype), (n_rows, k)
        for T in T_VALUES:  # batch invariance: the first T rows alone give the same bits
            part = np.empty((T, n_rows), dtype=np.float32)
            cpu.qmatmul(w, int(qtype), n_rows, k, x[:T], part)
            assert np.array_equal(part, full[:T, 3:3 + n_rows]), (n_rows, k, T)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_qmatmul_prompt_sized_batch(isa, qtype):
    rng = np.random.default_rng(3)
    n_rows, k, T = 67, 4 * max(block_size(qtype), 64), 512
    w = random_weights(rng, qtype, n_rows, k, raw=False)
    x = rng.standard_normal((T, k)).astype(np.float32)
    out = np.empty((T, n_rows), dtype=np.float32)
    cpu.qmatmul(w, int(qtype), n_rows, k, x, out)
    want = x.astype(np.float64) @ reference_rows(w, qtype, n_rows, k).astype(np.float64).T
    assert relative_error(out, want) <= tolerance(qtype)
    single = np.empty((1, n_rows), dtype=np.float32)
    for t in (0, 255, 511):
        cpu.qmatmul(w, int(qtype), n_rows, k, x[t:t + 1], single)
        assert np.array_equal(single[0], out[t])


def test_a_row_result_does_not_depend_on_the_other_rows(isa):
    rng = np.random.default_rng(4)
    n_rows, k = 40, 512
    for qtype in (QT.Q4_K, QT.Q8_0, QT.F16):
        w = random_weights(rng, qtype, n_rows, k, raw=False)
        x = rng.standard_normal((6, k)).astype(np.float32)
        other = x.copy()
        other[[0, 1, 3, 4, 5]] = rng.standard_normal((5, k)) * 100
        a, b = np.empty((6, n_rows), np.float32), np.empty((6, n_rows), np.float32)
        cpu.qmatmul(w, int(qtype), n_rows, k, x, a)
        cpu.qmatmul(w, int(qtype), n_rows, k, other, b)
        assert np.array_equal(a[2], b[2])


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_thread_count_does_not_change_a_bit(isa, qtype, threads):
    rng = np.random.default_rng(5)
    n_rows, k = 1031, 2 * max(block_size(qtype), 128)
    w = random_weights(rng, qtype, n_rows, k, raw=True)
    for T in (1, 5, 40):
        x = rng.standard_normal((T, k)).astype(np.float32)
        per_threads = []
        for n in (1, 2, 3):
            cpu.set_threads(n)
            out = np.empty((T, n_rows), dtype=np.float32)
            cpu.qmatmul(w, int(qtype), n_rows, k, x, out)
            per_threads.append(out)
        assert all(np.array_equal(per_threads[0], o) for o in per_threads[1:]), T


@pytest.mark.skipif(not {"avx2", "avx512vnni"} <= set(ISAS), reason="needs both x86 SIMD variants")
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_avx2_and_avx512_variants_agree_bitwise(qtype):
    rng = np.random.default_rng(6)
    n_rows, k = 45, 3 * max(block_size(qtype), 64)
    w = random_weights(rng, qtype, n_rows, k, raw=True)
    x = rng.standard_normal((11, k)).astype(np.float32)
    before, outs = cpu.isa(), []
    try:
        for name in ("avx2", "avx512vnni"):
            cpu.set_isa(name)
            outs.append(np.empty((11, n_rows), dtype=np.float32))
            cpu.qmatmul(w, int(qtype), n_rows, k, x, outs[-1])
    finally:
        cpu.set_isa(before)
    assert np.array_equal(outs[0], outs[1])


def test_weights_from_a_read_only_memory_map(tmp_path):
    rng = np.random.default_rng(7)
    n_rows, k = 9, 256
    w = random_weights(rng, QT.Q6_K, n_rows, k, raw=False)
    path = tmp_path / "w.bin"
    path.write_bytes(b"\0" * 64 + w.tobytes())
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint8, offset=64)
        assert not view.flags.writeable
        x = rng.standard_normal((2, k)).astype(np.float32)
        got, want = np.empty((2, n_rows), np.float32), np.empty((2, n_rows), np.float32)
        cpu.qmatmul(view, int(QT.Q6_K), n_rows, k, x, got)
        cpu.qmatmul(w, int(QT.Q6_K), n_rows, k, x, want)
        del view
    assert np.array_equal(got, want)


def test_a_one_dimensional_x_is_one_row():
    rng = np.random.default_rng(8)
    w = random_weights(rng, QT.Q8_0, 5, 64, raw=False)
    x = rng.standard_normal(64).astype(np.float32)
    out, out2 = np.empty(5, np.float32), np.empty((1, 5), np.float32)
    cpu.qmatmul(w, int(QT.Q8_0), 5, 64, x, out)
    cpu.qmatmul(w, int(QT.Q8_0), 5, 64, x[None], out2)
    assert np.array_equal(out, out2[0])


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_K, QT.F16], ids=lambda t: t.name)
def test_non_finite_activations_reach_the_output(isa, qtype):
    rng = np.random.default_rng(10)
    w = random_weights(rng, qtype, 6, 256, raw=False)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    x[0, 17], x[2, 200] = np.nan, np.inf
    out = np.empty((3, 6), np.float32)
    cpu.qmatmul(w, int(qtype), 6, 256, x, out)
    assert not np.isfinite(out[0]).any() and not np.isfinite(out[2]).any()
    assert np.isfinite(out[1]).all()


# ----------------------------------------------------------------------------- variants and pool

def test_isa_can_be_lowered_but_not_raised_or_misnamed():
    assert cpu.isa() in ISAS and ISAS[-1] == "scalar"
    with pytest.raises(ValueError, match="unknown ISA"):
        cpu.set_isa("sse9")
    if "avx512vnni" not in ISAS:
        with pytest.raises(ValueError, match="lacks"):
            cpu.set_isa("avx512vnni")


@pytest.mark.parametrize("requested", ["scalar", "avx2"])
def test_environment_variable_forces_a_lower_variant(requested):
    if requested not in ISAS:
        pytest.skip(f"{requested} not available here")
    env = dict(os.environ, AGENTD_CPU_ISA=requested)
    done = subprocess.run([sys.executable, "-c", "import kernels._cpu as c; print(c.isa())"],
                          env=env, capture_output=True, text=True, check=True, cwd=os.getcwd())
    assert done.stdout.strip() == requested


def test_thread_count_is_validated(threads):
    cpu.set_threads(3)
    assert cpu.get_threads() == 3
    for bad in (0, -1, 100000):
        with pytest.raises(ValueError, match="threads"):
            cpu.set_threads(bad)


# ----------------------------------------------------------------------------- bad input

@pytest.fixture
def q4k():
    rng = np.random.default_rng(9)
    w = random_weights(rng, QT.Q4_K, 4, 256, raw=False)
    return w, rng.standard_normal((2, 256)).astype(np.float32), np.empty((2, 4), np.float32)


def test_truncated_block_data_is_an_error(q4k):
    w, x, out = q4k
    with pytest.raises(ValueError, match="block data truncated"):
        cpu.qmatmul(w[:-1], int(QT.Q4_K), 4, 256, x, out)
    with pytest.raises(ValueError, match="block data truncated"):
        cpu.dequant_rows(w[:-1], int(QT.Q4_K), 256, 3, 4, np.empty(256, np.float32))


@pytest.mark.parametrize("qtype, name", [(9, "Q8_1"), (16, "IQ2_XXS"), (39, "MXFP4"), (12345, "unknown")])
def test_unsupported_types_are_named(q4k, qtype, name):
    w, x, out = q4k
    with pytest.raises(ValueError, match=f"type {name} .*not supported"):
        cpu.qmatmul(w, qtype, 4, 256, x, out)
    with pytest.raises(ValueError, match=f"type {name} "):
        cpu.dequant_rows(w, qtype, 256, 0, 1, np.empty(256, np.float32))


def test_bad_activations_and_outputs_raise_clear_errors(q4k):
    w, x, out = q4k
    qt = int(QT.Q4_K)
    with pytest.raises(TypeError, match="x must be float32"):
        cpu.qmatmul(w, qt, 4, 256, x.astype(np.float64), out)
    with pytest.raises(TypeError, match="x must be a C-contiguous"):
        cpu.qmatmul(w, qt, 4, 256, np.zeros((2, 512), np.float32)[:, ::2], out)
    with pytest.raises(TypeError, match="out must be a C-contiguous, writable"):
        readonly = out.copy()
        readonly.flags.writeable = False
        cpu.qmatmul(w, qt, 4, 256, x, readonly)
    with pytest.raises(ValueError, match="k=256"):
        cpu.qmatmul(w, qt, 4, 256, x[:, :128].copy(), out)
    with pytest.raises(ValueError, match="out must be"):
        cpu.qmatmul(w, qt, 4, 256, x, np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        cpu.qmatmul(w, qt, 4, 256, x, np.empty((3, 4), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        cpu.qmatmul(w, qt, 4, 256, x, np.empty((2, 5), np.float32), out_col=2)
    with pytest.raises(ValueError, match="multiple of 256"):
        cpu.qmatmul(w, qt, 4, 200, x[:, :200].copy(), out)
    with pytest.raises(ValueError, match="share memory"):
        both = np.zeros(512, np.float32)
        cpu.qmatmul(w, qt, 4, 256, both.reshape(2, 256), both[504:].reshape(2, 4))
    with pytest.raises(ValueError, match="1 or 2 dimensions"):
        cpu.qmatmul(w, qt, 4, 256, x[None], out)
    with pytest.raises(ValueError, match="row0 <= row1"):
        cpu.dequant_rows(w, qt, 256, 3, 1, np.empty(256, np.float32))
    with pytest.raises(ValueError, match="2 x 256"):
        cpu.dequant_rows(w, qt, 256, 0, 2, np.empty(256, np.float32))
