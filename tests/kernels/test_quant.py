"""kernels.quant: decoding agrees bit for bit with gguf's own reference dequantizer, encoding
produces blocks that reference decodes within stated per-format error bounds, and bad input
raises clear errors."""

import re

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize as reference_dequantize
from gguf.quants import quantize as reference_quantize

from kernels import quant
from kernels.quant import SUPPORTED_TYPES, UnsupportedTensorType, dequantize, quantize, row_nbytes

REQUIRED = {QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q2_K,
            QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ4_NL, QT.IQ4_XS}
FLOAT_TYPES = {QT.F32, QT.F16, QT.BF16}
BLOCK_TYPES = sorted(REQUIRED - FLOAT_TYPES, key=lambda t: t.value)
ALL_TYPES = sorted(REQUIRED, key=lambda t: t.value)

# Byte offsets of the fp16 scale fields in each block (from the ggml block structs).
FP16_FIELDS = {
    QT.Q8_0: [0], QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.IQ4_NL: [0],
    QT.Q2_K: [80, 82], QT.Q3_K: [108], QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208],
    QT.IQ4_XS: [0],
}


def block_size(qtype: QT) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def random_tensor_bytes(rng: np.random.Generator, qtype: QT, n_blocks: int) -> np.ndarray:
    """Random blocks whose fp16 scales are finite (so the comparison is NaN-free)."""
    type_size = GGML_QUANT_SIZES[qtype][1]
    if qtype == QT.F32:
        return rng.standard_normal(n_blocks).astype(np.float32).view(np.uint8)
    if qtype == QT.F16:
        return rng.standard_normal(n_blocks).astype(np.float16).view(np.uint8)
    if qtype == QT.BF16:
        bits = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint16)
        return (bits & np.uint16(0xBFFF)).view(np.uint8)  # clear the top exponent bit: finite
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    for offset in FP16_FIELDS[qtype]:
        scales = (rng.standard_normal(n_blocks) * rng.choice([1e-4, 1e-2, 1.0, 30.0], n_blocks))
        blocks[:, offset:offset + 2] = scales.astype(np.float16).reshape(-1, 1).view(np.uint8)
    return blocks.reshape(-1)


# ----------------------------------------------------------------------------- layout and decoding

def test_supported_types_cover_the_required_formats():
    assert REQUIRED <= SUPPORTED_TYPES


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_row_nbytes_matches_ggml_block_sizes(qtype):
    size, type_size = GGML_QUANT_SIZES[qtype]
    assert row_nbytes(qtype, size) == type_size
    assert row_nbytes(qtype, 7 * size) == 7 * type_size
    assert row_nbytes(qtype, 0) == 0


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_dequantize_equals_gguf_reference_exactly(qtype):
    rng = np.random.default_rng(qtype.value)
    rows, blocks_per_row = 3, 5
    raw = random_tensor_bytes(rng, qtype, rows * blocks_per_row).reshape(rows, -1)
    shape = (rows, blocks_per_row * block_size(qtype))
    got = dequantize(raw, qtype, shape)
    expected = reference_dequantize(raw, qtype).reshape(shape)
    assert got.dtype == np.float32 and got.shape == shape and got.flags.c_contiguous
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, expected)  # 0 ulp


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_arbitrary_bytes_decode_like_reference(qtype):
    """Any bit pattern (inf/NaN/subnormal scales included) decodes as the reference does."""
    rng = np.random.default_rng(100 + qtype.value)
    raw = rng.integers(0, 256, (4, 3 * GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    raw[0, :2] = [0x01, 0x00]  # a subnormal fp16 scale
    with np.errstate(all="ignore"):
        got = dequantize(raw, qtype, (4, 3 * block_size(qtype)))
        expected = reference_dequantize(raw, qtype)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_K, QT.Q6_K, QT.F16], ids=lambda t: t.name)
def test_decoding_in_many_chunks_matches_one_pass(qtype, monkeypatch):
    rng = np.random.default_rng(7)
    raw = random_tensor_bytes(rng, qtype, 40)
    shape = (4, 10 * block_size(qtype))
    whole = dequantize(raw, qtype, shape)
    monkeypatch.setattr(quant, "_CHUNK_VALUES", 3 * block_size(qtype))  # 3 blocks per step
    np.testing.assert_array_equal(dequantize(raw, qtype, shape), whole)


def test_dequantize_accepts_the_arrays_gguf_reader_gives():
    rng = np.random.default_rng(3)
    values = rng.standard_normal((2, 3, 32)).astype(np.float32)
    np.testing.assert_array_equal(dequantize(values, QT.F32, (2, 3, 32)), values)
    halves = values.astype(np.float16)
    np.testing.assert_array_equal(dequantize(halves, QT.F16, (6, 32)), halves.astype(np.float32).reshape(6, 32))
    read_only = np.frombuffer(quantize(values, QT.Q8_0).tobytes(), dtype=np.uint8)
    assert dequantize(read_only, QT.Q8_0, (2, 3, 32)).shape == (2, 3, 32)
    strided = np.repeat(values, 2, axis=0)[::2]  # not contiguous
    np.testing.assert_array_equal(dequantize(strided, QT.F32, (2, 3, 32)), values)
    assert dequantize(np.zeros(0, np.uint8), QT.Q4_K, (0, 256)).shape == (0, 256)


# ----------------------------------------------------------------------------- quantization

def sample_data(rng: np.random.Generator, cols: int = 512) -> np.ndarray:
    """Rows that exercise the quantizers: Gaussians of several scales, heavy tails, outliers,
    constant, zero, all-positive and all-negative blocks."""
    gauss = rng.standard_normal((6, cols)) * np.array([1e-3, 0.02, 1.0, 5.0, 100.0, 0.5])[:, None]
    heavy = rng.standard_t(2, (2, cols))
    outlier = rng.standard_normal((1, cols)) * 0.01
    outlier[0, ::97] = 3.0
    special = np.stack([np.zeros(cols), np.full(cols, 0.37), rng.random(cols) + 1.0,
                        -rng.random(cols) - 0.5])
    mixed = rng.standard_normal((1, cols)) * np.repeat(10.0 ** rng.uniform(-3, 1, cols // 16), 16)
    return np.concatenate([gauss, heavy, outlier, special, mixed]).astype(np.float32)


def per_group(values: np.ndarray, size: int) -> np.ndarray:
    return values.reshape(*values.shape[:-1], -1, size)


def error_bound(x: np.ndarray, qtype: QT) -> np.ndarray:
    """Largest |dequantize(quantize(x)) - x| allowed per value, derived from each format's grid.

    Scales are fp16 rounded up (factor R) and sub-block scales are 6-bit or 4-bit integer
    multiples of a super-block scale rounded up, so the bounds are half a quantization step plus
    one step of the coarse scale grid (see kernels/quant.py).
    """
    R = 1 + 2.0 ** -9  # fp16 rounding up, with slack for float32 arithmetic
    eps = 4 * np.finfo(np.float32).eps * np.abs(x).max(axis=-1, keepdims=True)
    if qtype == QT.F32:
        return np.zeros_like(x)
    if qtype in (QT.F16, QT.BF16):
        if qtype == QT.BF16:
            return np.abs(x) * 2.0 ** -8
        return np.abs(x) * 2.0 ** -11 + 2.0 ** -25  # half an fp16 subnormal step
    blocks = grouped = per_group(x, block_size(qtype))
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    if qtype == QT.Q8_0:
        bound = amax / 254 * R
    elif qtype in (QT.Q4_0, QT.Q5_0):  # -absmax maps to the lowest code; +absmax clips one step
        bound = amax / (8 if qtype == QT.Q4_0 else 16) * R
    elif qtype in (QT.Q4_1, QT.Q5_1):
        levels = 15 if qtype == QT.Q4_1 else 31
        low, high = blocks.min(axis=-1, keepdims=True), blocks.max(axis=-1, keepdims=True)
        bound = (high - low + np.abs(low) * 2.0 ** -10) / (2 * levels) * R
    elif qtype == QT.IQ4_NL:  # grid -127..113: nearest value is within 14 grid units
        bound = 14 / 127 * amax * R
    elif qtype in (QT.Q2_K, QT.Q4_K, QT.Q5_K):  # y = d*sc*q - dmin*m, q in 0..levels
        sub, levels, scale_max = {QT.Q2_K: (16, 3, 15), QT.Q4_K: (32, 15, 63), QT.Q5_K: (32, 31, 63)}[qtype]
        grouped = per_group(blocks, sub)
        low = np.minimum(grouped.min(axis=-1, keepdims=True), 0)
        spread = grouped.max(axis=-1, keepdims=True) - low
        widest = spread.max(axis=-2, keepdims=True)
        dmin = widest / scale_max * R
        d = (widest + dmin) / (levels * scale_max) * R
        bound = ((spread + dmin) / levels + d) / 2 * R
    elif qtype in (QT.Q3_K, QT.Q6_K):  # y = d*sc*q, q in -4..3 / -32..31
        half_range, scale_max = (3.5, 31) if qtype == QT.Q3_K else (31.5, 127)
        grouped = per_group(blocks, 16)
        ideal = np.abs(grouped).max(axis=-1, keepdims=True) / half_range
        d = ideal.max(axis=-2, keepdims=True) / scale_max * R
        bound = (ideal + d) / 2 * R
    elif qtype == QT.IQ4_XS:  # IQ4_NL per 32 values, sub-block scale a 6-bit multiple of d
        grouped = per_group(blocks, 32)
        ideal = np.abs(grouped).max(axis=-1, keepdims=True) / 127 * R
        d = ideal.max(axis=-2, keepdims=True) / 31 * R
        bound = 14 * (ideal + d / 2) + 127 * d / 2
    else:
        raise AssertionError(f"no bound for {qtype.name}")
    return np.broadcast_to(bound, grouped.shape).reshape(x.shape) + eps


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_quantize_round_trip_within_format_bound(qtype):
    x = sample_data(np.random.default_rng(11))
    encoded = quantize(x, qtype)
    decoded = reference_dequantize(encoded, qtype).reshape(x.shape)  # independent decoder
    np.testing.assert_array_equal(dequantize(encoded, qtype, x.shape), decoded)
    error = np.abs(decoded - x)
    bound = error_bound(x, qtype)
    worst = np.unravel_index(np.argmax(error - bound), x.shape)
    assert (error <= bound).all(), f"{qtype.name}: error {error[worst]} > bound {bound[worst]} at {worst}"


# Relative RMS error on standard Gaussian data: a regression guard on quantizer quality.
RELATIVE_RMS_LIMIT = {
    QT.F32: 0.0, QT.F16: 3e-4, QT.BF16: 2.5e-3, QT.Q8_0: 0.006, QT.Q6_K: 0.022, QT.Q5_K: 0.042,
    QT.Q5_1: 0.040, QT.Q5_0: 0.045, QT.Q4_K: 0.085, QT.Q4_1: 0.081, QT.Q4_0: 0.09,
    QT.IQ4_NL: 0.085, QT.IQ4_XS: 0.085, QT.Q3_K: 0.20, QT.Q2_K: 0.38,
}


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_quantize_relative_rms_error_on_gaussian_data(qtype):
    x = np.random.default_rng(5).standard_normal((32, 1024)).astype(np.float32)
    y = dequantize(quantize(x, qtype), qtype, x.shape)
    assert np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2)) <= RELATIVE_RMS_LIMIT[qtype]


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1], ids=lambda t: t.name)
def test_quantize_is_as_accurate_as_gguf_reference_quantizer(qtype):
    """Per row RMS no worse than gguf's quantizer, on blocks whose scales are normal fp16 numbers.

    (With fp16-subnormal scales, |x| below ~1e-2, rounding the scale up costs up to one
    subnormal step more than gguf's round-to-nearest, in exchange for the hard bound above.)
    """
    x = sample_data(np.random.default_rng(8))[1:-1]
    ours = dequantize(quantize(x, qtype), qtype, x.shape)
    theirs = reference_dequantize(reference_quantize(x, qtype), qtype).reshape(x.shape)
    rms = lambda y: np.sqrt(np.mean((y - x) ** 2, axis=-1))  # noqa: E731
    fp16_precision = 2.0 ** -11 * np.sqrt(np.mean(x ** 2, axis=-1))  # differences below it don't count
    assert (rms(ours) <= rms(theirs) * 1.01 + fp16_precision).all()


def test_bf16_quantize_rounds_like_ggml():
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.standard_normal(1000), [0.0, -0.0, 1e-40, np.inf, -np.inf, np.nan]])
    x = x.astype(np.float32)[None, :]
    np.testing.assert_array_equal(quantize(x, QT.BF16), reference_quantize(x, QT.BF16))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_quantize_output_is_what_gguf_writer_expects(qtype, tmp_path):
    """Written with GGUFWriter(raw_dtype=qtype) and read back by GGUFReader, the tensor keeps its
    shape and decodes to the same values."""
    x = sample_data(np.random.default_rng(2), cols=256)[:3]
    encoded = quantize(x, qtype)
    lead = x.shape[:-1]
    expected_dtype = {QT.F32: np.float32, QT.F16: np.float16}.get(qtype, np.uint8)
    assert encoded.dtype == expected_dtype
    assert encoded.nbytes == x.shape[0] * row_nbytes(qtype, x.shape[-1])
    assert encoded.shape[:-1] == lead
    path = tmp_path / "t.gguf"
    writer = gguf.GGUFWriter(path, arch="test")
    writer.add_tensor("t", encoded, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (tensor,) = gguf.GGUFReader(path).tensors
    assert tensor.tensor_type == qtype
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    assert shape == x.shape
    np.testing.assert_array_equal(dequantize(tensor.data, qtype, shape), dequantize(encoded, qtype, x.shape))


def test_quantize_handles_leading_dimensions_and_all_zero_input():
    x = np.zeros((2, 3, 256), np.float32)
    encoded = quantize(x, QT.Q4_K)
    assert encoded.shape == (2, 3, row_nbytes(QT.Q4_K, 256))
    np.testing.assert_array_equal(dequantize(encoded, QT.Q4_K, x.shape), x)


# ----------------------------------------------------------------------------- errors

def test_byte_count_mismatch_names_expected_and_actual():
    raw = np.zeros(2 * 34 - 1, np.uint8)
    with pytest.raises(ValueError, match=re.escape("needs 68 bytes, got 67")):
        dequantize(raw, QT.Q8_0, (2, 32))
    with pytest.raises(ValueError, match="needs 16 bytes, got 8"):
        dequantize(np.zeros(2, np.float32), QT.F32, (4,))


def test_row_length_must_be_a_multiple_of_the_block_size():
    with pytest.raises(ValueError, match="multiple of 256"):
        row_nbytes(QT.Q4_K, 300)
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantize(np.zeros(34, np.uint8), QT.Q8_0, (17, 2))
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(np.zeros((2, 48), np.float32), QT.Q4_0)


@pytest.mark.parametrize("qtype", [QT.IQ2_XXS, QT.Q8_1, QT.I32, 999], ids=lambda t: getattr(t, "name", str(t)))
def test_unsupported_types_raise_a_clear_error(qtype):
    name = qtype.name if isinstance(qtype, QT) else "999"
    for call in (lambda: dequantize(np.zeros(64, np.uint8), qtype, (64,)),
                 lambda: quantize(np.zeros((1, 256), np.float32), qtype),
                 lambda: row_nbytes(qtype, 256)):
        with pytest.raises(UnsupportedTensorType, match=name):
            call()
    assert issubclass(UnsupportedTensorType, ValueError)


def test_quantize_rejects_values_the_format_cannot_hold():
    with pytest.raises(ValueError, match="non-finite"):
        quantize(np.full((1, 32), np.nan, np.float32), QT.Q8_0)
    with pytest.raises(ValueError, match="F16 range"):
        quantize(np.full((1, 4), 1e6, np.float32), QT.F16)
    with pytest.raises(ValueError, match="fp16 scales"):
        quantize(np.full((1, 32), 1e10, np.float32), QT.Q8_0)


def test_shapes_without_dimensions_or_with_negative_sizes_are_rejected():
    with pytest.raises(ValueError, match="one or more sizes"):
        dequantize(np.zeros(4, np.uint8), QT.F32, ())
    with pytest.raises(ValueError, match="one or more sizes"):
        dequantize(np.zeros(4, np.uint8), QT.F32, (-1, 1))
    with pytest.raises(ValueError, match="at least one dimension"):
        quantize(np.float32(1.0), QT.F32)
