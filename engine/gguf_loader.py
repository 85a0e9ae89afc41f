"""GGUF reading: metadata, tensor lookup with shape checks, and all checkpoint surgery in one place.

The file is memory mapped by `gguf.GGUFReader`; F32 tensors are used in place, other types are
dequantized to float32 once at load time (the numpy backend multiplies in float32).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np

from engine.config import ModelConfig, ModelFormatError
from engine.vocab import Vocab
from kernels import quant

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    qtype: str
    ne: tuple[int, ...]  # GGUF order, fastest dimension first
    nbytes: int


class GGUFFile:
    """A validated, memory-mapped GGUF file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFormatError(f"{self.path}: no such model file")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ModelFormatError(f"{self.path}: not a GGUF file (magic {magic!r})")
        try:
            self.reader = gguf.GGUFReader(self.path, "r")
        except ValueError as e:
            # gguf raises ValueError for unknown tensor types, duplicated names and short reads
            raise ModelFormatError(f"{self.path}: cannot read GGUF: {e}") from e
        except (IndexError, OSError, OverflowError) as e:
            raise ModelFormatError(f"{self.path}: truncated or corrupt GGUF file ({e})") from e
        self.tensors = {t.name: t for t in self.reader.tensors}
        for t in self.reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size:
                raise ModelFormatError(
                    f"{self.path}: truncated file: tensor {t.name} ends at byte {end} but the file has {size}"
                )

    def get(self, key: str, default: Any = ModelFormatError) -> Any:
        field = self.reader.fields.get(key)
        if field is None:
            if default is ModelFormatError:
                raise ModelFormatError(f"{self.path}: missing metadata key {key}")
            return default
        value = field.contents()
        return value

    def tensor_infos(self) -> list[TensorInfo]:
        return [
            TensorInfo(t.name, t.tensor_type.name, tuple(int(x) for x in t.shape), int(t.n_bytes))
            for t in self.reader.tensors
        ]

    def has(self, name: str) -> bool:
        return name in self.tensors

    def load(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Tensor `name` as float32 in numpy order, checked against the expected numpy `shape`."""
        t = self.tensors.get(name)
        if t is None:
            raise ModelFormatError(f"{self.path}: missing tensor {name}")
        np_shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        if _squeeze(np_shape) != _squeeze(shape):
            ne = tuple(reversed(shape))
            raise ModelFormatError(
                f"{self.path}: tensor {name} has shape ne={tuple(int(x) for x in t.shape)}, expected ne={ne}"
            )
        if t.tensor_type not in quant.SUPPORTED_TYPES:
            raise ModelFormatError(f"{self.path}: tensor {name} has unsupported type {t.tensor_type.name}")
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            return np.asarray(t.data).reshape(shape)
        return quant.dequantize(t.data, t.tensor_type, np_shape).reshape(shape)

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
        for t in self.reader.tensors:
            h.update(f"{t.name}:{t.tensor_type.name}:{t.shape.tolist()}".encode())
            raw = np.asarray(t.data).reshape(-1).view(np.uint8)
            step = max(1, raw.size // 16)
            h.update(raw[: 4096].tobytes())
            h.update(raw[::step][:4096].tobytes())
            h.update(raw[-4096:].tobytes())
        return h.hexdigest()


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def metadata_getter(f: GGUFFile) -> Callable[[str, Any], Any]:
    def get(key: str, default: Any = ModelFormatError) -> Any:
        return f.get(key, default)

    return get
