"""Loading: layouts real files use (MTP blocks, tied output, quantized mixes) and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from engine import ModelFormatError, load_model
from engine.gguf_loader import GGUFFile

IDS = np.random.default_rng(11).integers(0, 248044, 70)


def _rewrite(src: Path, dst: Path, arch: str | None = None, drop: str | None = None,
             replace: tuple[str, np.ndarray, gguf.GGMLQuantizationType] | None = None,
             dequantize_all: bool = False) -> Path:
    """Copy a GGUF file key by key and tensor by tensor (with gguf's writer), with one edit."""
    src_file = GGUFFile(src)
    w = gguf.GGUFWriter(dst, arch or src_file.get("general.architecture"))
    for key, value in src_file.metadata.items():
        if key == "general.architecture":
            continue
        vtype, sub = src_file.metadata_types[key]
        w.add_key_value(key, value, vtype, sub_type=sub)
    for name, t in src_file.tensors.items():
        if name == drop:
            continue
        raw = src_file._raw(t)
        shape = tuple(reversed(t.ne))
        if replace and name == replace[0]:
            w.add_tensor(name, replace[1], raw_dtype=replace[2])
        elif dequantize_all:  # the independent twin: gguf's own dequantizer, written as F32
            w.add_tensor(name, gguf.quants.dequantize(raw, t.qtype).astype(np.float32).reshape(shape))
        else:
            w.add_tensor(name, raw.reshape(shape[:-1] + (-1,)), raw_dtype=t.qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.mark.parametrize("qtype", ["bf16", "q8_0", "q4_k_m"])
def test_quantized_model_matches_its_f32_dequantized_twin(model_file, tmp_path, qtype):
    path = model_file("tiny", qtype)
    twin = _rewrite(path, tmp_path / "twin.gguf", dequantize_all=True)
    a, b = load_model(path, backend="numpy"), load_model(twin, backend="numpy")  # the loader's decoding, exactly
    np.testing.assert_allclose(a.forward(IDS, a.new_state()), b.forward(IDS, b.new_state()), atol=1e-4)


def test_mtp_blocks_are_not_run(model_file):
    plain = load_model(model_file("tiny"))
    with_mtp = load_model(model_file("tiny", with_mtp=True))
    assert with_mtp.config.n_nextn == 1 and with_mtp.config.n_layer == plain.config.n_layer
    np.testing.assert_array_equal(
        plain.forward(IDS, plain.new_state()), with_mtp.forward(IDS, with_mtp.new_state())
    )


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_tied_output_uses_the_embedding(model_file, backend):
    if backend == "cpu":
        pytest.importorskip("kernels._cpu", reason="the compiled CPU extension is not built")
    m = load_model(model_file("tiny", tied=True), backend=backend)
    if backend == "numpy":
        assert m.net.w.output is m.net.w.embedding  # decoded once
    else:
        assert m.net.w.output.parts[0].data is m.net.w.embedding.data  # the same mapped bytes
    assert m.forward(IDS[:8], m.new_state()).std() > 1.0


def test_wrong_architecture(tiny_path, tmp_path):
    bad = _rewrite(tiny_path, tmp_path / "llama.gguf", arch="llama")
    with pytest.raises(ModelFormatError, match="unsupported architecture 'llama'"):
        load_model(bad)


def test_missing_tensor(tiny_path, tmp_path):
    bad = _rewrite(tiny_path, tmp_path / "missing.gguf", drop="blk.1.ssm_out.weight")
    with pytest.raises(ModelFormatError, match="missing tensor blk.1.ssm_out.weight"):
        load_model(bad)


def test_misshaped_tensor(tiny_path, tmp_path):
    bad = _rewrite(tiny_path, tmp_path / "shape.gguf",
                   replace=("blk.0.ssm_a", np.zeros(3, np.float32), gguf.GGMLQuantizationType.F32))
    with pytest.raises(ModelFormatError, match="tensor blk.0.ssm_a has shape"):
        load_model(bad)


def test_unsupported_tensor_type(tiny_path, tmp_path):
    from kernels.quant import SUPPORTED_TYPES

    name = "blk.0.attn_gate.weight"
    t = GGUFFile(tiny_path).tensors[name]
    qt = next(q for q in gguf.GGMLQuantizationType
              if q not in SUPPORTED_TYPES and gguf.GGML_QUANT_SIZES[q][0] > 1 and t.ne[0] % gguf.GGML_QUANT_SIZES[q][0] == 0)
    block, size = gguf.GGML_QUANT_SIZES[qt]
    raw = np.zeros((t.ne[1], t.ne[0] // block * size), np.uint8)
    bad = _rewrite(tiny_path, tmp_path / "type.gguf", replace=(name, raw, qt))
    with pytest.raises(ModelFormatError, match=f"tensor {name} has unsupported type {qt.name}"):
        load_model(bad)


def test_truncated_file(tiny_path, tmp_path):
    bad = tmp_path / "short.gguf"
    shutil.copy(tiny_path, bad)
    with open(bad, "r+b") as f:
        f.truncate(bad.stat().st_size - 4096)
    with pytest.raises(ModelFormatError, match="truncated"):
        load_model(bad)


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"hello world")
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        load_model(bad)
    with pytest.raises(ModelFormatError, match="no such model file"):
        load_model(tmp_path / "absent.gguf")
