"""Write Qwen3.5 (qwen35 / qwen35moe) GGUF files: metadata, vocabulary and streamed tensor data.

The header (metadata and the tensor table) needs every tensor's name, shape and type before any
data, so tensors may be given as `LazyTensor`s: the writer lays out the table from their shapes
and asks each one for its data only when it is written, in blocks of rows when the tensor can
produce them. A 27B model (whose float32 embedding alone is 5 GB) is then drawn and quantized a
few tens of MB at a time, never held in memory at once. The file appears under its
final name only when complete (temporary file + rename), so a crash never leaves a half file.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import IO, Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from engine.config import DeltaNetDims
from engine.vocab import Vocab, write_vocab
from kernels.quant import quantize, row_nbytes

QTYPE_MIXES = ("f32", "f16", "bf16", "q8_0", "q4_k_m")
_CHUNK_VALUES = 1 << 24  # float32 values quantized and written per step (64 MiB)


@dataclass(frozen=True)
class ArchConfig(DeltaNetDims):
    """Hyper-parameters of a Qwen3.5 model as stored in GGUF metadata (section 1 of the spec)."""

    name: str
    vocab_size: int
    context_length: int
    n_embd: int
    n_layer: int  # trunk layers; MTP blocks come on top (block_count = n_layer + n_nextn)
    n_head: int
    n_kv_head: int
    head_dim: int  # attention key_length == value_length
    rope_dims: int
    rope_base: float
    eps: float
    conv_kernel: int
    ssm_d_state: int  # dk == dv of the gated delta net
    ssm_n_group: int  # Hk, key heads
    ssm_dt_rank: int  # Hv, value heads
    full_attention_interval: int = 4
    n_nextn: int = 0
    n_ff: int = 0  # dense FFN width; 0 for MoE
    moe: bool = False
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    tied_embeddings: bool = False
    rope_sections: tuple[int, int, int, int] | None = None  # None: [11,11,10,0] scaled to rope_dims/2

    def __post_init__(self) -> None:
        positive = ("vocab_size", "context_length", "n_embd", "n_layer", "n_head", "n_kv_head", "head_dim",
                    "rope_dims", "conv_kernel", "ssm_d_state", "ssm_n_group", "ssm_dt_rank",
                    "full_attention_interval")
        for field_name in positive:
            if getattr(self, field_name) <= 0:
                raise ValueError(f"ArchConfig.{field_name} must be positive, got {getattr(self, field_name)}")
        if self.n_nextn < 0:
            raise ValueError(f"ArchConfig.n_nextn must be >= 0, got {self.n_nextn}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")
        if self.ssm_dt_rank % self.ssm_n_group:
            raise ValueError(f"ssm_dt_rank (Hv) {self.ssm_dt_rank} is not a multiple of ssm_n_group (Hk) "
                             f"{self.ssm_n_group}")
        if self.rope_dims % 2 or self.rope_dims > self.head_dim:
            raise ValueError(f"rope_dims {self.rope_dims} must be even and at most head_dim {self.head_dim}")
        sections = self.dimension_sections
        if len(sections) != 4 or sum(sections) != self.rope_dims // 2 or min(sections) < 0:
            raise ValueError(f"rope_sections {sections} must be 4 non-negative numbers summing to "
                             f"rope_dims/2 = {self.rope_dims // 2}")
        if self.moe:
            if not (self.n_expert > 0 and 0 < self.n_expert_used <= self.n_expert):
                raise ValueError(f"MoE needs 0 < n_expert_used ({self.n_expert_used}) <= n_expert "
                                 f"({self.n_expert})")
            if self.n_ff_exp <= 0 or self.n_ff_shexp <= 0:
                raise ValueError("MoE needs positive n_ff_exp and n_ff_shexp")
            if self.n_ff:
                raise ValueError("a MoE model has no dense n_ff; leave it 0")
        else:
            if self.n_expert or self.n_expert_used or self.n_ff_exp or self.n_ff_shexp:
                raise ValueError("expert fields are set but moe is False")
            if self.n_ff <= 0:
                raise ValueError("a dense model needs a positive n_ff")

    @property
    def arch(self) -> str:
        return "qwen35moe" if self.moe else "qwen35"

    @property
    def block_count(self) -> int:
        return self.n_layer + self.n_nextn

    @property
    def dimension_sections(self) -> tuple[int, ...]:
        """IMROPE sections; the real [11, 11, 10, 0] (for 64 rope dims) scaled to rope_dims/2."""
        if self.rope_sections is not None:
            return tuple(self.rope_sections)
        half = self.rope_dims // 2
        first = round(half * 11 / 32)
        return (first, first, half - 2 * first, 0)

    def is_full_attention(self, layer: int) -> bool:
        """Trunk layer i is full attention iff (i+1) % interval == 0; MTP blocks always are."""
        return layer >= self.n_layer or (layer + 1) % self.full_attention_interval == 0


@dataclass(frozen=True)
class LazyTensor:
    """A float tensor of known numpy `shape` whose data is made only when the writer needs it.

    `produce` gives the whole tensor. `produce_rows`, when set, gives the same values as consecutive
    blocks of at most `max_rows` rows (rows = the last axis), so the writer never holds the whole tensor.
    """

    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]
    produce_rows: Callable[[int], Iterable[np.ndarray]] | None = None


TensorData = np.ndarray | LazyTensor


def choose_qtype(name: str, shape: tuple[int, ...], qtype_mix: str, has_output: bool = True) -> QT:
    """The GGML type llama.cpp's converter (f32/f16/bf16/q8_0) or llama-quantize (q4_k_m) gives a tensor.

    `shape` is the numpy shape (last axis = row). F32 always for 1-D tensors, norms, ssm_a,
    ssm_conv1d and the routers; Q4_K_M keeps output (token_embd when tied), ssm_out, attn_v and
    ffn_down* at Q6_K and ssm_alpha/beta at Q8_0. Rows that do not fit the block size fall back
    to Q8_0 (K-quants) and then F16, as in llama.cpp.
    """
    if qtype_mix not in QTYPE_MIXES:
        raise ValueError(f"unknown qtype mix {qtype_mix!r}; choose one of {', '.join(QTYPE_MIXES)}")
    always_f32 = (
        len(shape) <= 1
        or not name.endswith(".weight")
        or name.endswith("norm.weight")
        or any(part in name for part in (".ssm_conv1d.", ".ffn_gate_inp.", ".ffn_gate_inp_shexp."))
    )
    if always_f32:
        return QT.F32
    qtype = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0}.get(qtype_mix)
    if qtype is None:
        qtype = _q4_k_m_type(name, has_output)
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block_size:
        q8_block = gguf.GGML_QUANT_SIZES[QT.Q8_0][0]
        qtype = QT.Q8_0 if block_size > q8_block and shape[-1] % q8_block == 0 else QT.F16
    return qtype


def _q4_k_m_type(name: str, has_output: bool) -> QT:
    high_precision = (".ssm_out.", ".attn_v.", ".ffn_down")
    if name == "output.weight" or (name == "token_embd.weight" and not has_output):
        return QT.Q6_K
    if any(part in name for part in high_precision):
        return QT.Q6_K
    if any(part in name for part in (".ssm_alpha.", ".ssm_beta.")):
        return QT.Q8_0
    return QT.Q4_K


def write_model(
    path: str | os.PathLike[str],
    arch_cfg: ArchConfig,
    tensors: Iterable[tuple[str, TensorData, QT]],
    vocab: Vocab,
    chat_template: str,
    progress: bool = False,
) -> Path:
    """Write a complete GGUF model file atomically and return its path.

    `tensors` yields (GGUF name, float data in numpy shape or LazyTensor, GGML type); data is
    converted to float32 and quantized to the given type on the way out.
    """
    path = Path(path)
    entries = [_checked_entry(name, data, QT(qtype)) for name, data, qtype in tensors]
    if len(vocab.tokens) != arch_cfg.vocab_size:
        raise ValueError(f"vocabulary has {len(vocab.tokens)} tokens but the model has vocab_size "
                         f"{arch_cfg.vocab_size}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    writer = _BulkArrayWriter(tmp_path, arch_cfg.arch)
    try:
        _add_metadata(writer, arch_cfg, entries)
        write_vocab(writer, vocab)
        writer.add_chat_template(chat_template)
        for name, shape, qtype, _ in entries:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(shape, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        fout = writer.fout[0]
        _write_tensor_data(fout, writer.data_alignment, entries, progress)
        fout.flush()
        os.fsync(fout.fileno())
        writer.close()
        os.replace(tmp_path, path)
    except BaseException:
        writer.close()
        tmp_path.unlink(missing_ok=True)
        raise
    return path


class _BulkArrayWriter(gguf.GGUFWriter):
    """GGUFWriter that packs homogeneous metadata arrays in one go instead of item by item.

    The vocabulary's 248k tokens and merges take seconds through gguf's per-item packing.
    """

    def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool,
                  sub_type: gguf.GGUFValueType | None = None) -> bytes:
        bulk = (
            vtype == gguf.GGUFValueType.ARRAY and self.endianess == gguf.GGUFEndian.LITTLE
            and isinstance(val, Sequence) and not isinstance(val, (str, bytes)) and len(val) > 0
            and len(set(map(type, val))) == 1
        )
        if not bulk:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        item_type = sub_type if sub_type is not None else gguf.GGUFValueType.get_type(val[0])
        if item_type == gguf.GGUFValueType.STRING:
            encoded = [item.encode("utf-8") if isinstance(item, str) else bytes(item) for item in val]
            body = b"".join(struct.pack("<Q", len(item)) + item for item in encoded)
        elif (fmt := self._simple_value_packing.get(item_type)) is not None:
            body = struct.pack(f"<{len(val)}{fmt}", *val)
        else:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        head = struct.pack("<I", vtype) if add_vtype else b""
        return head + struct.pack("<IQ", item_type, len(val)) + body


def _checked_entry(name: str, data: TensorData, qtype: QT) -> tuple[str, tuple[int, ...], QT, TensorData]:
    shape = tuple(int(d) for d in data.shape)
    if not shape or min(shape) <= 0:
        raise ValueError(f"tensor {name} has an empty shape {shape}")
    if isinstance(data, np.ndarray) and not np.issubdtype(data.dtype, np.floating):
        raise ValueError(f"tensor {name} must hold floats, got dtype {data.dtype}")
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block_size:
        raise ValueError(f"tensor {name}: row length {shape[-1]} is not a multiple of the {qtype.name} "
                         f"block size {block_size}")
    return name, shape, qtype, data


def _nbytes(shape: tuple[int, ...], qtype: QT) -> int:
    return prod(shape[:-1]) * row_nbytes(qtype, shape[-1])


def _add_metadata(writer: gguf.GGUFWriter, cfg: ArchConfig, entries: list) -> None:
    writer.add_name(cfg.name)
    writer.add_file_type(_file_type(entries))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(cfg.block_count)
    writer.add_context_length(cfg.context_length)
    writer.add_embedding_length(cfg.n_embd)
    if not cfg.moe:
        writer.add_feed_forward_length(cfg.n_ff)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_kv_head)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_base)
    writer.add_rope_dimension_count(cfg.rope_dims)
    writer.add_rope_dimension_sections(list(cfg.dimension_sections))
    writer.add_layer_norm_rms_eps(cfg.eps)
    writer.add_ssm_conv_kernel(cfg.conv_kernel)
    writer.add_ssm_state_size(cfg.ssm_d_state)
    writer.add_ssm_group_count(cfg.ssm_n_group)
    writer.add_ssm_time_step_rank(cfg.ssm_dt_rank)
    writer.add_ssm_inner_size(cfg.value_dim)
    writer.add_full_attention_interval(cfg.full_attention_interval)
    if cfg.n_nextn:
        writer.add_nextn_predict_layers(cfg.n_nextn)
    if cfg.moe:
        writer.add_expert_count(cfg.n_expert)
        writer.add_expert_used_count(cfg.n_expert_used)
        writer.add_expert_feed_forward_length(cfg.n_ff_exp)
        writer.add_expert_shared_feed_forward_length(cfg.n_ff_shexp)


def _file_type(entries: list) -> gguf.LlamaFileType:
    """general.file_type from the type holding most weights of the tensors with 2+ dimensions."""
    weights = Counter[QT]()
    for _, shape, qtype, _ in entries:
        if len(shape) >= 2:
            weights[qtype] += prod(shape)
    if not weights:
        return gguf.LlamaFileType.ALL_F32
    main = weights.most_common(1)[0][0]
    if main == QT.F32:
        return gguf.LlamaFileType.ALL_F32
    for candidate in (f"MOSTLY_{main.name}", f"MOSTLY_{main.name}_M"):
        if candidate in gguf.LlamaFileType.__members__:
            return gguf.LlamaFileType[candidate]
    return gguf.LlamaFileType.GUESSED


def _write_tensor_data(fout: IO[bytes], alignment: int, entries: list, progress: bool) -> None:
    total = sum(_nbytes(shape, qtype) for _, shape, qtype, _ in entries)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="Writing GGUF")
    try:
        for name, shape, qtype, data in entries:
            _pad(fout, alignment)
            for block in _row_blocks(name, shape, data, max(1, _CHUNK_VALUES // shape[-1])):
                chunk = np.ascontiguousarray(block, dtype=np.float32)
                if not np.isfinite(chunk).all():
                    raise ValueError(f"tensor {name} contains NaN or infinite values")
                encoded = quantize(chunk, qtype)
                fout.write(encoded.tobytes())
                if bar is not None:
                    bar.update(encoded.nbytes)
        _pad(fout, alignment)
    finally:
        if bar is not None:
            bar.close()


def _row_blocks(name: str, shape: tuple[int, ...], data: TensorData, max_rows: int) -> Iterator[np.ndarray]:
    """The tensor's rows in blocks of at most `max_rows`, checked against the declared shape."""
    if isinstance(data, LazyTensor) and data.produce_rows is not None:
        blocks = data.produce_rows(max_rows)
    else:
        values = data.produce() if isinstance(data, LazyTensor) else data
        if tuple(values.shape) != shape:
            raise ValueError(f"tensor {name}: produced shape {tuple(values.shape)}, declared {shape}")
        rows = values.reshape(-1, shape[-1])
        blocks = (rows[start:start + max_rows] for start in range(0, rows.shape[0], max_rows))
    n_rows = 0
    for block in blocks:
        if block.ndim != 2 or block.shape[1] != shape[-1] or not 0 < block.shape[0] <= max_rows:
            raise ValueError(f"tensor {name}: produced a block of shape {block.shape}, expected up to "
                             f"{max_rows} rows of {shape[-1]} values")
        if not np.issubdtype(block.dtype, np.floating):
            raise ValueError(f"tensor {name} must hold floats, got dtype {block.dtype}")
        n_rows += block.shape[0]
        yield block
    if n_rows != prod(shape[:-1]):
        raise ValueError(f"tensor {name}: produced {n_rows} rows, declared shape {shape} has {prod(shape[:-1])}")


def _pad(fout: IO[bytes], alignment: int) -> None:
    fout.write(b"\0" * (-fout.tell() % alignment))
