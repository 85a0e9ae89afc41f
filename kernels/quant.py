"""GGUF tensor (de)quantization in vectorized numpy.

Model loading turns hundreds of MB of GGUF blocks into float32, so every format is decoded for
all blocks at once (in cache-sized chunks), never block by block. The quantizers are simple
(min/max or absmax scales, no iterative search) but always emit valid blocks with a bounded error:
every scale is rounded *up* to fp16 and the 6-bit sub-block scales are rounded up too, so no
input value falls outside its block's grid.

Layouts (little endian; "fp16" = IEEE half; sub-block scale indices follow value order):
  Q8_0   32 values:  d fp16 | 32 x int8                            y = d*q
  Q4_0   32 values:  d fp16 | 16 B nibbles (lo: 0..15, hi: 16..31)  y = d*(q-8)
  Q4_1   32 values:  d, m fp16 | 16 B nibbles                       y = d*q + m
  Q5_0   32 values:  d fp16 | qh u32 (bit i = 5th bit of value i) | 16 B nibbles   y = d*(q-16)
  Q5_1   32 values:  d, m fp16 | qh u32 | 16 B nibbles              y = d*q + m
  IQ4_NL 32 values:  d fp16 | 16 B nibbles indexing a 16-entry non-uniform grid   y = d*grid[q]
  K-quants, 256 values per super-block:
  Q2_K   scales 16 B (lo nibble scale, hi nibble min) | qs 64 B | d, dmin fp16
         value h*128 + s*32 + l = 2 bits (qs[h*32+l] >> 2s); y = d*sc*q - dmin*m per 16 values
  Q3_K   hmask 32 B | qs 64 B | 12 B of 6-bit scales | d fp16
         low 2 bits as Q2_K; hmask[l] bit 4h+s set means +0, clear means -4; y = d*(sc-32)*q
  Q4_K   d, dmin fp16 | 12 B of 6-bit (scale, min) x 8 | qs 128 B
         32-byte chunk c: lo nibbles = sub-block 2c, hi nibbles = 2c+1; y = d*sc*q - dmin*m
  Q5_K   as Q4_K plus qh 32 B before qs: bit s of qh[l] = 5th bit of value l of sub-block s
  Q6_K   ql 128 B | qh 64 B | 16 x int8 scales | d fp16; per 128-value half h, l in 0..31:
         values l, l+32, l+64, l+96 = lo(ql[l]), lo(ql[l+32]), hi(ql[l]), hi(ql[l+32]) with
         2 high bits from qh[l] >> 0, 2, 4, 6; y = d*sc*(q-32) per 16 values
  IQ4_XS d fp16 | scales_h u16 (2 bits each) | scales_l 4 B (nibbles) | qs 128 B
         8 sub-blocks of 32 laid out as IQ4_NL; y = d*(ls-32)*grid[q]
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from math import prod

import numpy as np
from gguf import GGMLQuantizationType as QT


class UnsupportedTensorType(ValueError):
    """A GGML tensor type this module cannot (de)quantize."""


@dataclass(frozen=True)
class _Format:
    block_size: int  # values per block
    type_size: int  # bytes per block
    decode: Callable[[np.ndarray, np.ndarray], None]  # (uint8 (n, type_size), out float32 (n, block_size))
    encode: Callable[[np.ndarray], np.ndarray]  # float32 (n, block_size) -> uint8 (n, type_size)


_SUPER = 256  # values per K-quant / IQ4_XS super-block
_CHUNK_VALUES = 1 << 18  # values per step: bounds temporaries (~1 MB of float32 each)
_IQ4_GRID = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                     dtype=np.float32)
_IQ4_MIDPOINTS = (_IQ4_GRID[1:] + _IQ4_GRID[:-1]) / 2
# numpy's float16 -> float32 cast is scalar code; a table lookup of all 2^16 halves is ~2x faster
_HALF_TO_FLOAT = np.arange(1 << 16).astype(np.uint16).view(np.float16).astype(np.float32)
_SHIFTS_2BIT = np.array([0, 2, 4, 6], dtype=np.uint8)
_SHIFTS_1BIT = np.arange(8, dtype=np.uint8)


# ----------------------------------------------------------------------------- shared helpers
# Decoding keeps numpy's inner loops long: per-block fields are read field-major (k, n) and
# per-run scales are expanded with np.repeat, because a ufunc over many 16/32-value runs spends
# its time in per-run loop overhead rather than arithmetic.

def _half(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The fp16 field at byte `offset` of every block, as float32 (n,)."""
    return blocks[:, offset:offset + 2].view(np.float16)[:, 0].astype(np.float32)


def _fields(blocks: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Bytes start:stop of every block, field-major: (stop - start, n)."""
    return np.ascontiguousarray(blocks[:, start:stop].T)


def _per_run(ufunc: np.ufunc, out: np.ndarray, per_run: np.ndarray) -> None:
    """out = ufunc(out, v), v holding one value per equal-length contiguous run of out.

    per_run is (n, runs) in value order (a transposed field-major view is fine).
    """
    flat = out.reshape(-1)
    ufunc(flat, np.repeat(per_run, flat.size // per_run.size), out=flat)


def _split_bits(packed: np.ndarray, run: int, width: int) -> np.ndarray:
    """Bit fields of byte runs: (n, r*run) bytes -> (n, r, 8 // width, run) uint8 codes.

    Field s (bits s*width and up) of byte j in run i lands at [:, i, s, j]. Works on 64-bit
    words (run is a multiple of 8), then moves whole runs as opaque `run`-byte items so each
    copy is one long loop.
    """
    n = packed.shape[0]
    words = np.ascontiguousarray(packed).view(np.uint64)
    count = 8 // width
    mask = np.uint64(((1 << width) - 1) * 0x0101010101010101)
    run_type = np.dtype(f"V{run}")
    out = np.empty((n, packed.shape[1] // run, count, run), dtype=np.uint8)
    runs = out.view(run_type)[..., 0]  # (n, r, count)
    for field in range(count):
        runs[:, :, field] = ((words >> np.uint64(field * width)) & mask).view(run_type)
    return out


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """(..., 2, k) 4-bit values -> (..., k) bytes: low nibble first, as `_split_bits` reads them."""
    return values[..., 0, :] | (values[..., 1, :] << 4)


def _pack_crumbs(values: np.ndarray) -> np.ndarray:
    """(..., 4, k) 2-bit values -> (..., k) bytes, field s in bits 2s..2s+1."""
    return np.bitwise_or.reduce(values << _SHIFTS_2BIT[:, None], axis=-2)


def _unpack_k_scales(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 field-major bytes (12, n) -> 6-bit scales and mins, (8, n) each.

    Bytes 0-3 hold scales 0-3, bytes 4-7 mins 0-3 (low 6 bits; their top 2 bits are the high bits
    of scales/mins 4-7); bytes 8-11 hold the low nibbles of scales 4-7 and (high nibble) mins 4-7.
    """
    a, b, c = fields[0:4], fields[4:8], fields[8:12]
    scales = np.concatenate([a & 63, (c & 15) | ((a >> 6) << 4)])
    mins = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)])
    return scales, mins


def _pack_k_scales(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """(n, 8) scales and mins -> (n, 12) bytes, the layout `_unpack_k_scales` reads."""
    return np.concatenate([
        (scales[:, :4] & 63) | ((scales[:, 4:] >> 4) << 6),
        (mins[:, :4] & 63) | ((mins[:, 4:] >> 4) << 6),
        (scales[:, 4:] & 15) | ((mins[:, 4:] & 15) << 4),
    ], axis=1)


def _fp16_at_least(x: np.ndarray) -> np.ndarray:
    """Smallest fp16 >= x (x >= 0): a scale rounded up keeps every value inside its grid."""
    with np.errstate(over="ignore"):
        half = x.astype(np.float16)
    low = half.astype(np.float32) < x
    half[low] = np.nextafter(half[low], np.float16(np.inf))
    if not np.isfinite(half).all():
        raise ValueError("values too large for the format's fp16 scales (block scale > 65504)")
    return half


def _ceil_ratio(numerator: np.ndarray, denominator: np.ndarray, limit: int) -> np.ndarray:
    """ceil(numerator / denominator) clipped to [0, limit], 0 where the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(denominator > 0, np.ceil(numerator / denominator), 0)
    return np.clip(ratio, 0, limit).astype(np.uint8)


def _round_runs(x: np.ndarray, step: np.ndarray, low: int, high: int,
                offset: np.ndarray | None = None) -> np.ndarray:
    """Codes rint((x + offset) / step) clipped to [low, high], 0 where the step is 0.

    x: (n, runs, run); step and offset: (n, runs), one value per run. Returns float32 like x.
    """
    with np.errstate(divide="ignore"):
        inverse = np.where(step != 0, 1 / step, 0).astype(np.float32)
    run = x.shape[-1]
    codes = x if offset is None else x + np.repeat(offset, run).reshape(x.shape)
    codes = codes * np.repeat(inverse, run).reshape(x.shape)
    np.rint(codes, out=codes)
    return np.clip(codes, low, high, out=codes)


def _to_bytes(*fields: np.ndarray) -> np.ndarray:
    """Concatenate per-block fields (n, k_i) of any dtype into uint8 blocks (n, sum of bytes)."""
    n = fields[0].shape[0]
    return np.concatenate([np.ascontiguousarray(f).view(np.uint8).reshape(n, -1) for f in fields],
                          axis=1)


# ----------------------------------------------------------------------------- float formats

def _decode_f32(blocks: np.ndarray, out: np.ndarray) -> None:
    out[:] = blocks.view(np.float32)


def _decode_f16(blocks: np.ndarray, out: np.ndarray) -> None:
    np.take(_HALF_TO_FLOAT, blocks.view(np.uint16), out=out)


def _decode_bf16(blocks: np.ndarray, out: np.ndarray) -> None:
    bits = out.view(np.uint32)
    bits[:] = blocks.view(np.uint16)
    np.left_shift(bits, 16, out=bits)


def _encode_f32(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint8)


def _encode_f16(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        half = x.astype(np.float16)
    if (np.isinf(half) & np.isfinite(x)).any():
        raise ValueError("values outside the F16 range (|x| > 65504)")
    return half.view(np.uint8)


def _encode_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even on the top 16 bits; NaNs stay NaN (made quiet)."""
    bits = x.view(np.uint32)
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16
    top = np.where(is_nan, (bits >> 16) | 0x40, rounded).astype(np.uint16)
    return top.view(np.uint8)


# ----------------------------------------------------------------------------- 32-value formats

def _decode_q8_0(blocks: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, blocks[:, 2:].view(np.int8))
    _per_run(np.multiply, out, _half(blocks, 0))


def _decode_q4_0(blocks: np.ndarray, out: np.ndarray) -> None:
    q = _split_bits(blocks[:, 2:], 16, 4).reshape(out.shape).view(np.int8)
    np.subtract(q, 8, out=q)
    np.copyto(out, q)
    _per_run(np.multiply, out, _half(blocks, 0))


def _decode_q4_1(blocks: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, _split_bits(blocks[:, 4:], 16, 4).reshape(out.shape))
    _per_run(np.multiply, out, _half(blocks, 0))
    _per_run(np.add, out, _half(blocks, 2))


def _five_bit(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1 codes (n, 32) in 0..31 from the 4-byte high-bit mask and 16 nibble bytes."""
    q = _split_bits(qs, 16, 4).reshape(-1, 32)
    high = np.unpackbits(qh, axis=1, bitorder="little")
    np.left_shift(high, 4, out=high)
    np.bitwise_or(q, high, out=q)
    return q


def _decode_q5_0(blocks: np.ndarray, out: np.ndarray) -> None:
    q = _five_bit(blocks[:, 2:6], blocks[:, 6:]).view(np.int8)
    np.subtract(q, 16, out=q)
    np.copyto(out, q)
    _per_run(np.multiply, out, _half(blocks, 0))


def _decode_q5_1(blocks: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, _five_bit(blocks[:, 4:8], blocks[:, 8:]))
    _per_run(np.multiply, out, _half(blocks, 0))
    _per_run(np.add, out, _half(blocks, 2))


def _decode_iq4_nl(blocks: np.ndarray, out: np.ndarray) -> None:
    np.take(_IQ4_GRID, _split_bits(blocks[:, 2:], 16, 4).reshape(out.shape), out=out)
    _per_run(np.multiply, out, _half(blocks, 0))


def _encode_q8_0(x: np.ndarray) -> np.ndarray:
    d = _fp16_at_least(np.abs(x).max(axis=1, keepdims=True) / 127)
    q = _round_runs(x[:, None], d.astype(np.float32), -127, 127).astype(np.int8)[:, 0]
    return _to_bytes(d, q)


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """The value of largest magnitude in each row, with its sign, (n, 1)."""
    return np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)


def _encode_offset_symmetric(x: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0/Q5_0: d = -absmax/offset maps the largest-magnitude value to code 0 (-offset).

    Returns the fp16 scale (n, 1) and codes in 0..2*offset-1 (n, 32).
    """
    extreme = _signed_absmax(x)
    d = (-np.sign(extreme) * _fp16_at_least(np.abs(extreme) / offset)).astype(np.float16)
    q = _round_runs(x[:, None], d.astype(np.float32), -offset, offset - 1)[:, 0] + offset
    return d, q.astype(np.uint8)


def _encode_min_scale(x: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1/Q5_1: y = d*q + m with m = block min; returns fp16 d, fp16 m and codes (n, 32)."""
    m = x.min(axis=1, keepdims=True).astype(np.float16)
    m = np.where(m.astype(np.float32) > x.min(axis=1, keepdims=True),
                 np.nextafter(m, np.float16(-np.inf)), m)  # m <= every value
    span = x.max(axis=1, keepdims=True) - m.astype(np.float32)
    d = _fp16_at_least(span / levels)
    q = _round_runs(x[:, None], d.astype(np.float32), 0, levels, -m.astype(np.float32))[:, 0]
    return d, m, q.astype(np.uint8)


def _encode_q4_0(x: np.ndarray) -> np.ndarray:
    d, q = _encode_offset_symmetric(x, 8)
    return _to_bytes(d, _pack_nibbles(q.reshape(-1, 2, 16)))


def _encode_q4_1(x: np.ndarray) -> np.ndarray:
    d, m, q = _encode_min_scale(x, 15)
    return _to_bytes(d, m, _pack_nibbles(q.reshape(-1, 2, 16)))


def _pack_five_bit(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes (n, 32) in 0..31 -> (qh (n, 4), qs (n, 16)), inverse of `_five_bit`."""
    qh = np.packbits(q >> 4, axis=1, bitorder="little")
    return qh, _pack_nibbles((q & 15).reshape(-1, 2, 16))


def _encode_q5_0(x: np.ndarray) -> np.ndarray:
    d, q = _encode_offset_symmetric(x, 16)
    return _to_bytes(d, *_pack_five_bit(q))


def _encode_q5_1(x: np.ndarray) -> np.ndarray:
    d, m, q = _encode_min_scale(x, 31)
    return _to_bytes(d, m, *_pack_five_bit(q))


def _nearest_iq4(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Index of the grid value nearest to x/scale (taking x/scale as 0 where scale is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(scale != 0, x / scale, 0)
    return np.searchsorted(_IQ4_MIDPOINTS, ratio).astype(np.uint8)


def _iq4_scale(x: np.ndarray) -> np.ndarray:
    """Scale per row mapping the largest-magnitude value onto the grid end -127 (|scale| rounded up)."""
    extreme = _signed_absmax(x)
    return (-np.sign(extreme) * _fp16_at_least(np.abs(extreme) / 127).astype(np.float32))


def _encode_iq4_nl(x: np.ndarray) -> np.ndarray:
    d = _iq4_scale(x)
    return _to_bytes(d.astype(np.float16), _pack_nibbles(_nearest_iq4(x, d).reshape(-1, 2, 16)))


# ----------------------------------------------------------------------------- K-quants

def _decode_q2_k(blocks: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, _split_bits(blocks[:, 16:80], 32, 2).reshape(out.shape))
    scales = _fields(blocks, 0, 16)
    _per_run(np.multiply, out, (_half(blocks, 80) * (scales & 15)).T)
    _per_run(np.subtract, out, (_half(blocks, 82) * (scales >> 4)).T)


def _q3_k_scales(fields: np.ndarray) -> np.ndarray:
    """12 field-major bytes (12, n) -> sixteen signed 6-bit scales (16, n), int8 in -32..31.

    Scale j has its low nibble in byte j % 8 (low nibble for j < 8, high for j >= 8) and its
    top 2 bits in byte 8 + j % 4 at bit 2*(j // 4).
    """
    low = np.concatenate([fields[:8] & 15, fields[:8] >> 4])
    high = ((fields[None, 8:12] >> _SHIFTS_2BIT[:, None, None]) & 3).reshape(16, -1)
    return (low | (high << 4)).view(np.int8) - np.int8(32)


def _decode_q3_k(blocks: np.ndarray, out: np.ndarray) -> None:
    q = _split_bits(blocks[:, 32:96], 32, 2).reshape(out.shape)  # (half, shift, l) flattened
    high = _split_bits(blocks[:, :32], 32, 1).reshape(out.shape)  # hmask bit 4*half + shift
    np.left_shift(high, 2, out=high)
    np.bitwise_or(q, high, out=q)
    signed = q.view(np.int8)
    np.subtract(signed, 4, out=signed)  # a clear hmask bit means -4
    np.copyto(out, signed)
    _per_run(np.multiply, out, (_half(blocks, 108) * _q3_k_scales(_fields(blocks, 96, 108))).T)


def _decode_q4_k(blocks: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, _split_bits(blocks[:, 16:], 32, 4).reshape(out.shape))
    scales, mins = _unpack_k_scales(_fields(blocks, 4, 16))
    _per_run(np.multiply, out, (_half(blocks, 0) * scales).T)
    _per_run(np.subtract, out, (_half(blocks, 2) * mins).T)


def _decode_q5_k(blocks: np.ndarray, out: np.ndarray) -> None:
    q = _split_bits(blocks[:, 48:], 32, 4).reshape(out.shape)
    high = _split_bits(blocks[:, 16:48], 32, 1).reshape(out.shape)
    np.left_shift(high, 4, out=high)
    np.bitwise_or(q, high, out=q)
    np.copyto(out, q)
    scales, mins = _unpack_k_scales(_fields(blocks, 4, 16))
    _per_run(np.multiply, out, (_half(blocks, 0) * scales).T)
    _per_run(np.subtract, out, (_half(blocks, 2) * mins).T)


def _decode_q6_k(blocks: np.ndarray, out: np.ndarray) -> None:
    q = _split_bits(blocks[:, :128], 64, 4).reshape(out.shape)  # (half, nibble, 2, l): (half, group, l)
    high = _split_bits(blocks[:, 128:192], 32, 2).reshape(out.shape)  # (half, group, l)
    np.left_shift(high, 4, out=high)
    np.bitwise_or(q, high, out=q)
    signed = q.view(np.int8)
    np.subtract(signed, 32, out=signed)
    np.copyto(out, signed)
    _per_run(np.multiply, out, (_half(blocks, 208) * _fields(blocks, 192, 208).view(np.int8)).T)


def _decode_iq4_xs(blocks: np.ndarray, out: np.ndarray) -> None:
    high = (blocks[:, 2:4].view(np.uint16)[:, 0] >> (2 * _SHIFTS_1BIT).astype(np.uint16)[:, None]) & 3
    low = _fields(blocks, 4, 8)
    scales = np.empty((8, low.shape[1]), dtype=np.uint8)
    np.bitwise_and(low, 15, out=scales[0::2])  # scale j: nibble j % 2 of byte j // 2
    np.right_shift(low, 4, out=scales[1::2])
    scales |= high.astype(np.uint8) << 4
    np.take(_IQ4_GRID, _split_bits(blocks[:, 8:], 16, 4).reshape(out.shape), out=out)
    _per_run(np.multiply, out, (_half(blocks, 0) * (scales.view(np.int8) - np.int8(32))).T)


def _encode_scale_min(x: np.ndarray, levels: int, scale_max: int):
    """Super-block with per-sub-block y = d*sc*q - dmin*m (Q2_K, Q4_K, Q5_K).

    x: (n, sub_blocks, sub_size). Each sub-block covers [min(x, 0), max(x)]: m is rounded up so
    -dmin*m <= the minimum, then sc is rounded up so the grid's top reaches the maximum. Returns
    fp16 d (n, 1), fp16 dmin (n, 1), sc, m (n, sub_blocks) uint8 and codes q like x, uint8.
    """
    low = np.minimum(x.min(axis=2), 0)
    dmin = _fp16_at_least(-low.min(axis=1, keepdims=True) / scale_max)
    m = _ceil_ratio(-low, dmin.astype(np.float32), scale_max)
    offset = dmin.astype(np.float32) * m
    top = x.max(axis=2) + offset
    d = _fp16_at_least(top.max(axis=1, keepdims=True) / (levels * scale_max))
    sc = _ceil_ratio(top / levels, d.astype(np.float32), scale_max)
    step = d.astype(np.float32) * sc
    q = _round_runs(x, step, 0, levels, offset).astype(np.uint8)
    return d, dmin, sc, m, q


def _encode_symmetric(x: np.ndarray, half_range: float, q_min: int, q_max: int, scale_max: int):
    """Super-block with per-sub-block y = d*sc*q, sc >= 0 (Q3_K, Q6_K).

    x: (n, sub_blocks, sub_size); the step d*sc is at least absmax/half_range so codes stay in
    [q_min, q_max]. Returns fp16 d (n, 1), sc (n, sub_blocks) and int8 codes like x.
    """
    ideal = np.abs(x).max(axis=2) / half_range
    d = _fp16_at_least(ideal.max(axis=1, keepdims=True) / scale_max)
    sc = _ceil_ratio(ideal, d.astype(np.float32), scale_max)
    step = d.astype(np.float32) * sc
    q = _round_runs(x, step, q_min, q_max).astype(np.int8)
    return d, sc, q


def _encode_q2_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _encode_scale_min(x.reshape(-1, 16, 16), 3, 15)
    qs = _pack_crumbs(q.reshape(-1, 2, 4, 32)).reshape(-1, 64)
    return _to_bytes(sc | (m << 4), qs, d, dmin)


def _encode_q3_k(x: np.ndarray) -> np.ndarray:
    d, sc, q = _encode_symmetric(x.reshape(-1, 16, 16), 3.5, -4, 3, 31)
    codes = (q + 4).astype(np.uint8).reshape(-1, 2, 4, 32)  # (n, half, shift, l)
    hmask = np.bitwise_or.reduce((codes >> 2).reshape(-1, 8, 32) << _SHIFTS_1BIT[:, None], axis=1)
    qs = _pack_crumbs(codes & 3).reshape(-1, 64)
    biased = sc + np.uint8(32)
    packed_scales = np.concatenate(
        [_pack_nibbles(biased.reshape(-1, 2, 8) & 15), _pack_crumbs((biased >> 4).reshape(-1, 4, 4))],
        axis=1)
    return _to_bytes(hmask, qs, packed_scales, d)


def _encode_q4_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _encode_scale_min(x.reshape(-1, 8, 32), 15, 63)
    qs = _pack_nibbles(q.reshape(-1, 4, 2, 32)).reshape(-1, 128)
    return _to_bytes(d, dmin, _pack_k_scales(sc, m), qs)


def _encode_q5_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _encode_scale_min(x.reshape(-1, 8, 32), 31, 63)
    qh = np.bitwise_or.reduce((q >> 4) << _SHIFTS_1BIT[:, None], axis=1)
    qs = _pack_nibbles((q & 15).reshape(-1, 4, 2, 32)).reshape(-1, 128)
    return _to_bytes(d, dmin, _pack_k_scales(sc, m), qh, qs)


def _encode_q6_k(x: np.ndarray) -> np.ndarray:
    d, sc, q = _encode_symmetric(x.reshape(-1, 16, 16), 31.5, -32, 31, 127)
    codes = (q + 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # (n, half, group, l)
    ql = _pack_nibbles((codes & 15).reshape(-1, 2, 2, 64)).reshape(-1, 128)
    qh = _pack_crumbs(codes >> 4).reshape(-1, 64)
    return _to_bytes(ql, qh, sc.view(np.int8), d)


def _encode_iq4_xs(x: np.ndarray) -> np.ndarray:
    """Ideal per-sub-block scales (as IQ4_NL) quantized to signed 6-bit multiples of d."""
    sub = x.reshape(-1, 8, 32)
    ideal = _iq4_scale(sub.reshape(-1, 32)).reshape(-1, 8)
    d = _fp16_at_least(np.abs(ideal).max(axis=1, keepdims=True) / 31)
    ls = _round_runs(ideal[:, None], d.astype(np.float32), -31, 31)[:, 0]
    scale = (d.astype(np.float32) * ls)[:, :, None]
    idx = _nearest_iq4(sub, scale)
    biased = (ls + 32).astype(np.uint16)
    scales_h = np.bitwise_or.reduce((biased >> 4) << (2 * _SHIFTS_1BIT).astype(np.uint16), axis=1)
    scales_l = _pack_nibbles((biased.astype(np.uint8) & 15).reshape(-1, 4, 2).swapaxes(1, 2))
    qs = _pack_nibbles(idx.reshape(-1, 8, 2, 16)).reshape(-1, 128)
    return _to_bytes(d, scales_h[:, None], scales_l, qs)


# ----------------------------------------------------------------------------- registry and API

_FORMATS: dict[QT, _Format] = {
    QT.F32: _Format(1, 4, _decode_f32, _encode_f32),
    QT.F16: _Format(1, 2, _decode_f16, _encode_f16),
    QT.BF16: _Format(1, 2, _decode_bf16, _encode_bf16),
    QT.Q8_0: _Format(32, 2 + 32, _decode_q8_0, _encode_q8_0),
    QT.Q4_0: _Format(32, 2 + 16, _decode_q4_0, _encode_q4_0),
    QT.Q4_1: _Format(32, 2 + 2 + 16, _decode_q4_1, _encode_q4_1),
    QT.Q5_0: _Format(32, 2 + 4 + 16, _decode_q5_0, _encode_q5_0),
    QT.Q5_1: _Format(32, 2 + 2 + 4 + 16, _decode_q5_1, _encode_q5_1),
    QT.IQ4_NL: _Format(32, 2 + 16, _decode_iq4_nl, _encode_iq4_nl),
    QT.Q2_K: _Format(_SUPER, 16 + 64 + 2 + 2, _decode_q2_k, _encode_q2_k),
    QT.Q3_K: _Format(_SUPER, 32 + 64 + 12 + 2, _decode_q3_k, _encode_q3_k),
    QT.Q4_K: _Format(_SUPER, 2 + 2 + 12 + 128, _decode_q4_k, _encode_q4_k),
    QT.Q5_K: _Format(_SUPER, 2 + 2 + 12 + 32 + 128, _decode_q5_k, _encode_q5_k),
    QT.Q6_K: _Format(_SUPER, 128 + 64 + 16 + 2, _decode_q6_k, _encode_q6_k),
    QT.IQ4_XS: _Format(_SUPER, 2 + 2 + 4 + 128, _decode_iq4_xs, _encode_iq4_xs),
}

SUPPORTED_TYPES: frozenset[QT] = frozenset(_FORMATS)


def _format(qtype: QT) -> _Format:
    try:
        return _FORMATS[QT(qtype)]
    except (KeyError, ValueError):
        name = qtype.name if isinstance(qtype, QT) else repr(qtype)
        supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
        raise UnsupportedTensorType(
            f"GGML tensor type {name} is not supported (supported: {supported})") from None


def row_nbytes(qtype: QT, n_cols: int) -> int:
    """Bytes of one row of `n_cols` values stored as `qtype`."""
    fmt = _format(qtype)
    if n_cols < 0 or n_cols % fmt.block_size:
        raise ValueError(f"a {QT(qtype).name} row needs a multiple of {fmt.block_size} values, "
                         f"got {n_cols}")
    return n_cols // fmt.block_size * fmt.type_size


def _chunks(n_blocks: int, block_size: int) -> Iterator[slice]:
    step = max(1, _CHUNK_VALUES // block_size)
    for start in range(0, n_blocks, step):
        yield slice(start, min(start + step, n_blocks))


def dequantize(raw: np.ndarray, qtype: QT, shape: tuple[int, ...]) -> np.ndarray:
    """Decode a tensor's bytes (any dtype; only the bytes count) into float32 of numpy `shape`.

    `shape` is the numpy order (reversed GGUF ne): its last dimension is the row length.
    """
    fmt = _format(qtype)
    shape = tuple(int(dim) for dim in shape)
    if not shape or min(shape) < 0:
        raise ValueError(f"dequantize needs a shape of one or more sizes >= 0, got {shape}")
    expected = prod(shape[:-1]) * row_nbytes(qtype, shape[-1])
    data = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if data.size != expected:
        raise ValueError(f"{QT(qtype).name} tensor of shape {shape} needs {expected} bytes, "
                         f"got {data.size}")
    n_blocks = expected // fmt.type_size
    blocks = data.reshape(n_blocks, fmt.type_size)
    out = np.empty((n_blocks, fmt.block_size), dtype=np.float32)
    for part in _chunks(n_blocks, fmt.block_size):
        fmt.decode(blocks[part], out[part])
    return out.reshape(shape)


def quantize(x: np.ndarray, qtype: QT) -> np.ndarray:
    """Encode float values (last dim a multiple of the block size) for `gguf.GGUFWriter.add_tensor`.

    Returns float32 for F32, float16 for F16 and uint8 (*x.shape[:-1], row bytes) otherwise,
    which is what the writer expects with `raw_dtype=qtype`.
    """
    fmt = _format(qtype)
    if np.ndim(x) == 0:
        raise ValueError("quantize needs an array with at least one dimension")
    values = np.ascontiguousarray(x, dtype=np.float32)
    out_shape = (*values.shape[:-1], row_nbytes(qtype, values.shape[-1]))
    if fmt.block_size > 1 and not np.isfinite(values).all():
        raise ValueError(f"cannot quantize non-finite values (NaN or inf) to {QT(qtype).name}")
    n_blocks = values.size // fmt.block_size
    blocks = values.reshape(n_blocks, fmt.block_size)
    out = np.empty((n_blocks, fmt.type_size), dtype=np.uint8)
    for part in _chunks(n_blocks, fmt.block_size):
        out[part] = fmt.encode(blocks[part])
    out = out.reshape(out_shape)
    if QT(qtype) == QT.F32:
        return out.view(np.float32)
    if QT(qtype) == QT.F16:
        return out.view(np.float16)
    return out
