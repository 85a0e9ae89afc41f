"""GGUF reading: metadata, tensor lookup with shape checks, and all checkpoint surgery in one place.

The file is memory mapped; tensors are handed to a backend as stored (`StoredTensor`: type, shape and
the mapped block bytes), so quantized weights are never expanded unless a backend chooses to.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from engine.config import ModelConfig, ModelFormatError
from engine.vocab import Vocab
from kernels import quant
from kernels.backend import StoredTensor
from kernels.numpy_backend import decode

GGUF_MAGIC = b"GGUF"
_U64 = struct.Struct("<Q")
_SCALARS = {
    gguf.GGUFValueType.UINT8: "<B", gguf.GGUFValueType.INT8: "<b", gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h", gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f", gguf.GGUFValueType.BOOL: "<?", gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q", gguf.GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    qtype: str
    ne: tuple[int, ...]  # GGUF order, fastest dimension first
    nbytes: int


@dataclass(frozen=True)
class _Tensor:
    name: str
    qtype: gguf.GGMLQuantizationType
    ne: tuple[int, ...]
    offset: int  # absolute file offset of the data
    nbytes: int


class _Cursor:
    """Little-endian reads over the mapped header; running off the end means a truncated file."""

    def __init__(self, buf: mmap.mmap):
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.pos + n > len(self.buf):
            raise struct.error("string past end of file")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def _strings(self, count: int) -> list[str]:
        """Hot path: vocabularies hold ~500k strings (tokens + merges)."""
        buf, pos, end, length = self.buf, self.pos, len(self.buf), _U64.unpack_from
        out = []
        for _ in range(count):
            n = length(buf, pos)[0]
            pos += 8
            if pos + n > end:
                raise struct.error("string past end of file")
            out.append(buf[pos : pos + n].decode("utf-8", errors="replace"))
            pos += n
        self.pos = pos
        return out

    def value(self, vtype: int, sub: int | None = None) -> Any:
        if vtype == gguf.GGUFValueType.STRING:
            return self.string()
        if vtype == gguf.GGUFValueType.ARRAY:
            sub, count = sub if sub is not None else self.unpack("<I"), self.unpack("<Q")
            if sub == gguf.GGUFValueType.STRING:
                return self._strings(count)
            if sub in _SCALARS:
                dtype = np.dtype(_SCALARS[sub])
                arr = np.frombuffer(self.buf, dtype, count, self.pos)
                self.pos += dtype.itemsize * count
                return arr.tolist()
            return [self.value(sub) for _ in range(count)]
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        raise ValueError(f"unknown metadata value type {vtype}")


class GGUFFile:
    """A validated, memory-mapped GGUF file (little-endian, version 2 or 3).

    The header is parsed here rather than with gguf.GGUFReader, which builds a numpy view per
    string and needs over a minute for a 248k-token vocabulary; type tables come from gguf.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metadata_types: dict[str, tuple[gguf.GGUFValueType, gguf.GGUFValueType | None]] = {}
        if not self.path.is_file():
            raise ModelFormatError(f"{self.path}: no such model file")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            magic = f.read(4)
            if magic != GGUF_MAGIC:
                raise ModelFormatError(f"{self.path}: not a GGUF file (magic {magic!r})")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.metadata, self.tensors = self._parse(size)
        except (struct.error, ValueError, UnicodeDecodeError, OverflowError) as e:
            raise ModelFormatError(f"{self.path}: truncated or corrupt GGUF header ({e})") from e

    def _parse(self, size: int) -> tuple[dict[str, Any], dict[str, _Tensor]]:
        cur = _Cursor(self._map)
        cur.pos = 4
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise ModelFormatError(f"{self.path}: unsupported GGUF version {version} (big-endian files are not supported)")
        n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
        metadata = {}
        for _ in range(n_kv):
            key, vtype = cur.string(), gguf.GGUFValueType(cur.unpack("<I"))
            sub = gguf.GGUFValueType(cur.unpack("<I")) if vtype == gguf.GGUFValueType.ARRAY else None
            self.metadata_types[key] = (vtype, sub)
            metadata[key] = cur.value(vtype, sub)
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            ne = tuple(cur.unpack("<Q") for _ in range(cur.unpack("<I")))
            type_id, offset = cur.unpack("<I"), cur.unpack("<Q")
            try:
                qtype = gguf.GGMLQuantizationType(type_id)
            except ValueError:
                raise ModelFormatError(f"{self.path}: tensor {name} has unknown type id {type_id}") from None
            infos.append((name, ne, qtype, offset))
        alignment = int(metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT))
        data_start = -(-cur.pos // alignment) * alignment
        tensors = {}
        for name, ne, qtype, offset in infos:
            if name in tensors:
                raise ModelFormatError(f"{self.path}: duplicated tensor {name}")
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            n = prod(ne)
            if ne and ne[0] % block:
                raise ModelFormatError(f"{self.path}: tensor {name} row of {ne[0]} is not a multiple of {block}")
            t = _Tensor(name, qtype, ne, data_start + offset, n // block * type_size)
            if t.offset + t.nbytes > size:
                raise ModelFormatError(
                    f"{self.path}: truncated file: tensor {name} ends at byte {t.offset + t.nbytes} "
                    f"but the file has {size}"
                )
            tensors[name] = t
        return metadata, tensors

    def _raw(self, t: _Tensor) -> np.ndarray:
        return np.frombuffer(self._map, np.uint8, t.nbytes, t.offset)

    def get(self, key: str, default: Any = ModelFormatError) -> Any:
        if key not in self.metadata:
            if default is ModelFormatError:
                raise ModelFormatError(f"{self.path}: missing metadata key {key}")
            return default
        return self.metadata[key]

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_metadata(self.get, len(self.get("tokenizer.ggml.tokens", [])))

    def tensor_infos(self) -> list[TensorInfo]:
        return [TensorInfo(t.name, t.qtype.name, t.ne, t.nbytes) for t in self.tensors.values()]

    def has(self, name: str) -> bool:
        return name in self.tensors

    def tensor(self, name: str, shape: tuple[int, ...]) -> StoredTensor:
        """Tensor `name` exactly as stored (type, block bytes memory mapped), checked against the
        expected numpy `shape`; size-1 axes are dropped or added to match it."""
        t = self.tensors.get(name)
        if t is None:
            raise ModelFormatError(f"{self.path}: missing tensor {name}")
        np_shape = tuple(reversed(t.ne))
        if _squeeze(np_shape) != _squeeze(shape):
            raise ModelFormatError(
                f"{self.path}: tensor {name} has shape ne={t.ne}, expected ne={tuple(reversed(shape))}"
            )
        return StoredTensor(name, t.qtype, tuple(shape), self._raw(t))

    def load(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Tensor `name` as float32 in numpy order (for small parameters; F32 is used in place)."""
        t = self.tensor(name, shape)
        if t.qtype not in quant.SUPPORTED_TYPES:
            raise ModelFormatError(f"{self.path}: tensor {name} has unsupported type {t.qtype.name}")
        return decode(t)

    def vocab(self) -> Vocab:
        tokens = self.get("tokenizer.ggml.tokens")
        model = self.get("tokenizer.ggml.model", "gpt2")
        if model != "gpt2":
            raise ModelFormatError(f"{self.path}: tokenizer model {model!r} is not supported (need gpt2 byte-level BPE)")
        return Vocab(
            tokens=list(tokens),
            token_types=[int(x) for x in self.get("tokenizer.ggml.token_type")],
            merges=list(self.get("tokenizer.ggml.merges", [])),
            pre=str(self.get("tokenizer.ggml.pre", "qwen35")),
            eos_id=int(self.get("tokenizer.ggml.eos_token_id")),
            pad_id=int(self.get("tokenizer.ggml.padding_token_id", self.get("tokenizer.ggml.eos_token_id"))),
            bos_id=_opt_int(self.get("tokenizer.ggml.bos_token_id", None)),
        )

    def fingerprint(self, config: ModelConfig) -> str:
        """File identity: config, tensor table and sampled tensor bytes; cheap even for a 27B file."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(config).encode())
        h.update(str(os.path.getsize(self.path)).encode())
        for t in self.tensors.values():
            h.update(f"{t.name}:{t.qtype.name}:{t.ne}".encode())
            raw = self._raw(t)
            step = max(1, raw.size // 16)
            h.update(raw[: 4096].tobytes())
            h.update(raw[::step][:4096].tobytes())
            h.update(raw[-4096:].tobytes())
        return h.hexdigest()


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)
