"""Synthetic GGUF models: layout against the spec's tensor table, metadata, type mixes, determinism.

Expected names and ne shapes are written out here from docs/qwen35-architecture.md section 1, not
taken from engine.synthetic, and files are read back with gguf's own GGUFReader. GGUFReader needs
tens of seconds for the real 248k-token vocabulary, so the files it reads carry a 512-token
vocabulary (write_model with the presets' own tensors); the real-vocabulary path is checked apart.
"""

from __future__ import annotations

import dataclasses
import math

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from engine import gguf_writer, synthetic
from engine.chat_template import DEFAULT_TEMPLATE
from engine.gguf_writer import ArchConfig, LazyTensor, choose_qtype, write_model
from engine.vocab import Vocab

N_VOCAB = 512
TINY = dict(n_embd=128, n_layer=8, n_head=4, n_kv=2, hd=64, dk=32, hk=2, hv=4, n_ff=256, K=4, V=N_VOCAB)
SMALL_VOCAB = Vocab(tokens=[f"t{i}" for i in range(N_VOCAB)], token_types=[1] * N_VOCAB, merges=["t 0"],
                    pre="qwen35", eos_id=N_VOCAB - 1, pad_id=N_VOCAB - 1, bos_id=None)


def write_preset(path, preset: str, qtype_mix: str, seed: int = 0, with_mtp: bool = False):
    """A preset's synthetic tensors with a 512-token vocabulary (cheap for GGUFReader)."""
    cfg = dataclasses.replace(synthetic.preset_config(preset, with_mtp=with_mtp), vocab_size=N_VOCAB)
    return write_model(path, cfg, synthetic.model_tensors(cfg, seed, qtype_mix), SMALL_VOCAB, DEFAULT_TEMPLATE)


def expected_ne(c: dict, moe: bool, tied: bool, mtp: bool) -> dict[str, tuple[int, ...]]:
    """name -> ne (fastest first) per the spec's tensor table."""
    n, V = c["n_embd"], c["V"]
    kd, vd = c["hk"] * c["dk"], c["hv"] * c["dk"]
    conv = 2 * kd + vd
    out = {"token_embd.weight": (n, V), "output_norm.weight": (n,)}
    if not tied:
        out["output.weight"] = (n, V)
    for i in range(c["n_layer"] + mtp):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = (n,)
        out[p + "post_attention_norm.weight"] = (n,)
        if (i + 1) % 4 == 0 or i >= c["n_layer"]:
            qd, kvd = c["n_head"] * c["hd"], c["n_kv"] * c["hd"]
            out |= {p + "attn_q.weight": (n, 2 * qd), p + "attn_k.weight": (n, kvd), p + "attn_v.weight": (n, kvd),
                    p + "attn_output.weight": (qd, n), p + "attn_q_norm.weight": (c["hd"],),
                    p + "attn_k_norm.weight": (c["hd"],)}
        else:
            out |= {p + "attn_qkv.weight": (n, conv), p + "attn_gate.weight": (n, vd),
                    p + "ssm_beta.weight": (n, c["hv"]), p + "ssm_alpha.weight": (n, c["hv"]),
                    p + "ssm_conv1d.weight": (c["K"], conv), p + "ssm_dt.bias": (c["hv"],), p + "ssm_a": (c["hv"],),
                    p + "ssm_norm.weight": (c["dk"],), p + "ssm_out.weight": (vd, n)}
        if moe:
            e, ff, sh = c["n_expert"], c["n_ff_exp"], c["n_ff_shexp"]
            out |= {p + "ffn_gate_inp.weight": (n, e), p + "ffn_gate_exps.weight": (n, ff, e),
                    p + "ffn_up_exps.weight": (n, ff, e), p + "ffn_down_exps.weight": (ff, n, e),
                    p + "ffn_gate_inp_shexp.weight": (n,), p + "ffn_gate_shexp.weight": (n, sh),
                    p + "ffn_up_shexp.weight": (n, sh), p + "ffn_down_shexp.weight": (sh, n)}
        else:
            out |= {p + "ffn_gate.weight": (n, c["n_ff"]), p + "ffn_up.weight": (n, c["n_ff"]),
                    p + "ffn_down.weight": (c["n_ff"], n)}
        if i >= c["n_layer"]:
            out |= {p + "nextn.eh_proj.weight": (2 * n, n), p + "nextn.enorm.weight": (n,),
                    p + "nextn.hnorm.weight": (n,), p + "nextn.shared_head_norm.weight": (n,)}
    return out


def fields(reader: gguf.GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensors(reader: gguf.GGUFReader) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in reader.tensors}


def dequantized(t: gguf.ReaderTensor) -> np.ndarray:
    """Float data in numpy order via gguf's own dequantizer (independent of kernels.quant)."""
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_preset(tmp_path_factory.mktemp("tiny") / "tiny.gguf", "tiny", "q8_0")


@pytest.fixture(scope="module")
def tiny_moe_mtp(tmp_path_factory):
    return write_preset(tmp_path_factory.mktemp("moe") / "tiny-moe-mtp.gguf", "tiny-moe", "q4_k_m", seed=3,
                        with_mtp=True)


def test_tiny_q8_0_has_the_exact_layout_and_metadata(tiny):
    r = gguf.GGUFReader(tiny)
    meta, ts = fields(r), tensors(r)
    want = expected_ne(TINY, moe=False, tied=True, mtp=False)
    assert {name: tuple(int(d) for d in t.shape) for name, t in ts.items()} == want
    a = "qwen35."
    assert meta["general.architecture"] == "qwen35"
    assert meta[a + "block_count"] == 8 and a + "nextn_predict_layers" not in meta
    assert (meta[a + "embedding_length"], meta[a + "feed_forward_length"]) == (128, 256)
    assert (meta[a + "attention.head_count"], meta[a + "attention.head_count_kv"]) == (4, 2)
    assert meta[a + "attention.key_length"] == meta[a + "attention.value_length"] == 64
    assert meta[a + "rope.dimension_count"] == 16 and meta[a + "rope.freq_base"] == 1e7
    assert meta[a + "rope.dimension_sections"] == [3, 3, 2, 0]  # sums to rope dims / 2
    assert meta[a + "attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert (meta[a + "ssm.conv_kernel"], meta[a + "ssm.state_size"]) == (4, 32)
    assert (meta[a + "ssm.group_count"], meta[a + "ssm.time_step_rank"], meta[a + "ssm.inner_size"]) == (2, 4, 128)
    assert meta[a + "full_attention_interval"] == 4 and meta[a + "context_length"] > 0
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert not any(k.startswith(a + "expert") for k in meta)
    assert meta["tokenizer.ggml.tokens"] == SMALL_VOCAB.tokens
    assert meta["tokenizer.chat_template"] == DEFAULT_TEMPLATE
    for name, t in ts.items():
        want_type = QT.F32 if len(t.shape) == 1 or ".ssm_conv1d." in name else QT.Q8_0
        assert t.tensor_type == want_type, name


def test_make_model_writes_the_real_vocabulary_and_template(monkeypatch, tmp_path):
    from engine.vocab import qwen35_vocab

    calls = []
    monkeypatch.setattr(synthetic, "write_model", lambda *args, **kw: calls.append((args, kw)))
    synthetic.make_model(tmp_path / "m.gguf", "tiny-moe", seed=1, qtype_mix="bf16", tied=True, progress=True)
    (path, cfg, tensor_list, vocab, template), kw = calls[0]
    assert cfg == synthetic.preset_config("tiny-moe", tied=True) and cfg.tied_embeddings
    assert vocab is qwen35_vocab(248320) and template == DEFAULT_TEMPLATE and kw == {"progress": True}
    assert [name for name, _, _ in tensor_list] == [name for name, _, _ in synthetic.model_tensors(cfg, 1)]
    assert {qtype for _, _, qtype in tensor_list} == {QT.F32, QT.BF16}


def test_default_model_is_created_once_and_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTD_CACHE_DIR", str(tmp_path))
    path = synthetic.default_model_path()
    assert path.parent == tmp_path / "models"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(gguf_writer, "quantize", crash)
        with pytest.raises(KeyboardInterrupt):
            synthetic.ensure_default_model(progress=False)
    assert list(path.parent.iterdir()) == []  # neither a half file nor a stale temporary
    assert synthetic.ensure_default_model(progress=False) == path
    assert path.read_bytes()[:4] == b"GGUF" and 30e6 < path.stat().st_size < 60e6
    mtime = path.stat().st_mtime_ns
    assert synthetic.ensure_default_model(progress=False) == path
    assert path.stat().st_mtime_ns == mtime


def test_tiny_moe_with_mtp_layout_metadata_and_q4_k_m_types(tiny_moe_mtp):
    r = gguf.GGUFReader(tiny_moe_mtp)
    meta, ts = fields(r), tensors(r)
    config = dict(TINY, n_expert=8, n_ff_exp=128, n_ff_shexp=256)
    want = expected_ne(config, moe=True, tied=False, mtp=True)
    assert {name: tuple(int(d) for d in t.shape) for name, t in ts.items()} == want
    a = "qwen35moe."
    assert meta["general.architecture"] == "qwen35moe"
    assert (meta[a + "block_count"], meta[a + "nextn_predict_layers"]) == (9, 1)
    assert (meta[a + "expert_count"], meta[a + "expert_used_count"]) == (8, 2)
    assert (meta[a + "expert_feed_forward_length"], meta[a + "expert_shared_feed_forward_length"]) == (128, 256)
    assert a + "feed_forward_length" not in meta
    # Rows of 128 values cannot hold a 256-value K-quant block: Q8_0 (as llama-quantize falls back).
    for name, t in ts.items():
        row = int(t.shape[0])
        if len(t.shape) == 1 or any(s in name for s in (".ssm_conv1d.", ".ffn_gate_inp.")):
            want_type = QT.F32
        elif row % 256:
            want_type = QT.Q8_0
        elif ".ffn_down" in name:
            want_type = QT.Q6_K
        else:
            want_type = QT.Q4_K
        assert t.tensor_type == want_type, name
    assert ts["blk.3.attn_output.weight"].tensor_type == QT.Q4_K  # rows of n_head * head_dim = 256
    assert ts["blk.0.ffn_down_shexp.weight"].tensor_type == QT.Q6_K


def test_weights_are_scaled_for_o1_activations_and_logits_of_std_2(tiny_moe_mtp):
    ts = tensors(gguf.GGUFReader(tiny_moe_mtp))
    n = 128
    out = dequantized(ts["output.weight"])
    assert out.std() == pytest.approx(2 / math.sqrt(n), rel=0.02)
    rng = np.random.default_rng(0)
    h = rng.standard_normal((8, n)).astype(np.float32) * 3.0
    normed = h / np.sqrt((h**2).mean(-1, keepdims=True) + 1e-6) * dequantized(ts["output_norm.weight"])
    assert (normed @ out.T).std(-1).mean() == pytest.approx(2.0, rel=0.1)
    embd = dequantized(ts["token_embd.weight"])
    assert embd.std() == pytest.approx(1.0, rel=0.02)
    for i in (0, 1, 2, 4):
        ssm_a = dequantized(ts[f"blk.{i}.ssm_a"])
        dt = dequantized(ts[f"blk.{i}.ssm_dt.bias"])
        assert (ssm_a < 0).all()
        decay = np.exp(ssm_a * np.log1p(np.exp(dt)))  # alpha = 0
        assert ((decay > 0.2) & (decay < 0.9999)).all()
        qkv = dequantized(ts[f"blk.{i}.attn_qkv.weight"])
        assert qkv.std() == pytest.approx(1 / math.sqrt(n), rel=0.05)
    norms = np.concatenate([dequantized(t).ravel() for name, t in ts.items() if name.endswith("norm.weight")])
    assert abs(norms.mean() - 1) < 0.02 and 0.05 < norms.std() < 0.2


def test_same_seed_gives_identical_tensors_and_other_seeds_differ():
    cfg = synthetic.preset_config("tiny", with_mtp=True)
    a = dict((n, t) for n, t, _ in synthetic.model_tensors(cfg, seed=5))
    b = dict((n, t) for n, t, _ in synthetic.model_tensors(cfg, seed=5))
    c = dict((n, t) for n, t, _ in synthetic.model_tensors(cfg, seed=6))
    trunk = dict((n, t) for n, t, _ in synthetic.model_tensors(synthetic.preset_config("tiny"), seed=5))
    for name in ("blk.0.attn_qkv.weight", "blk.3.attn_q.weight", "blk.8.nextn.eh_proj.weight", "blk.2.ssm_a"):
        assert np.array_equal(a[name].produce(), b[name].produce())
        assert not np.array_equal(a[name].produce(), c[name].produce())
    # adding the MTP block leaves the trunk's weights unchanged
    assert np.array_equal(a["blk.7.ffn_down.weight"].produce(), trunk["blk.7.ffn_down.weight"].produce())


def test_same_seed_gives_byte_identical_files(tmp_path, tiny):
    again = write_preset(tmp_path / "again.gguf", "tiny", "q8_0", seed=0)
    assert again.read_bytes() == tiny.read_bytes()
    other = write_preset(tmp_path / "other.gguf", "tiny", "q8_0", seed=1)
    assert other.read_bytes() != tiny.read_bytes()


def test_tensors_are_drawn_and_written_in_row_blocks_with_the_same_bytes(tmp_path, monkeypatch):
    """The 27B preset's float32 embedding is 5 GB: the writer must ask for bounded row blocks and never
    draw a tensor whole, and the blocks must continue one random stream (same file as drawing whole)."""
    cfg = dataclasses.replace(synthetic.preset_config("tiny-moe", with_mtp=True), vocab_size=N_VOCAB)
    tensors_ = synthetic.model_tensors(cfg, seed=3, qtype_mix="q8_0")
    whole = write_model(tmp_path / "whole.gguf", cfg, [(n, dataclasses.replace(t, produce_rows=None), q)
                                                       for n, t, q in tensors_], SMALL_VOCAB, DEFAULT_TEMPLATE)
    monkeypatch.setattr(gguf_writer, "_CHUNK_VALUES", 3 * cfg.n_embd)  # 3 rows of 128 values per block
    block_sizes = []

    def streamed(t: LazyTensor) -> LazyTensor:
        def drawn_whole():
            raise AssertionError("a tensor was drawn whole")

        def rows(max_rows: int):
            for block in t.produce_rows(max_rows):
                block_sizes.append(block.size)
                yield block

        return dataclasses.replace(t, produce=drawn_whole, produce_rows=rows)

    blocks = write_model(tmp_path / "blocks.gguf", cfg, [(n, streamed(t), q) for n, t, q in tensors_],
                         SMALL_VOCAB, DEFAULT_TEMPLATE)
    assert blocks.read_bytes() == whole.read_bytes()
    assert max(block_sizes) <= 3 * cfg.n_embd and len(block_sizes) > 10 * len(tensors_)
    experts = dict((n, t) for n, t, _ in tensors_)["blk.0.ffn_gate_exps.weight"]  # 3-D: rows span experts
    assert np.array_equal(np.concatenate(list(experts.produce_rows(5))), experts.produce().reshape(-1, cfg.n_embd))


def test_real_presets_have_the_spec_shapes_without_writing_data():
    layout = {name: shape for name, shape, _ in synthetic.tensor_layout(synthetic.preset_config("27B"))}
    assert layout["blk.0.attn_qkv.weight"] == (10240, 5120)  # C = 2*16*128 + 48*128
    assert layout["blk.0.ssm_out.weight"] == (5120, 6144)
    assert layout["blk.3.attn_q.weight"] == (2 * 24 * 256, 5120)
    assert layout["blk.3.attn_k.weight"] == (4 * 256, 5120)
    assert layout["output.weight"] == (248320, 5120) and "blk.64.attn_norm.weight" not in layout
    assert sum(name.endswith("attn_q.weight") for name in layout) == 16
    small = synthetic.preset_config("small")
    n_params = sum(math.prod(shape) for _, shape, _ in synthetic.tensor_layout(small))
    assert 0.2e9 <= n_params <= 0.5e9 and small.head_dim == 256 and small.ssm_d_state == 128
    assert small.ssm_n_group != small.ssm_dt_rank
    tiny_08 = {name: shape for name, shape, _ in synthetic.tensor_layout(synthetic.preset_config("0.8B"))}
    assert "output.weight" not in tiny_08 and tiny_08["blk.0.attn_qkv.weight"] == (6144, 1024)


@pytest.mark.parametrize(
    ("name", "shape", "mix", "has_output", "want"),
    [
        ("blk.0.attn_qkv.weight", (6144, 1024), "q4_k_m", True, QT.Q4_K),
        ("blk.0.ssm_out.weight", (1024, 2048), "q4_k_m", True, QT.Q6_K),
        ("blk.0.ssm_alpha.weight", (16, 1024), "q4_k_m", True, QT.Q8_0),
        ("blk.0.ssm_beta.weight", (16, 1024), "q4_k_m", True, QT.Q8_0),
        ("blk.3.attn_v.weight", (512, 1024), "q4_k_m", True, QT.Q6_K),
        ("blk.0.ffn_down_exps.weight", (8, 1024, 512), "q4_k_m", True, QT.Q6_K),
        ("output.weight", (248320, 1024), "q4_k_m", True, QT.Q6_K),
        ("token_embd.weight", (248320, 1024), "q4_k_m", True, QT.Q4_K),
        ("token_embd.weight", (248320, 1024), "q4_k_m", False, QT.Q6_K),  # tied: it is the output
        ("blk.0.ffn_up.weight", (256, 96), "q4_k_m", True, QT.Q8_0),  # row 96: K-quant -> Q8_0
        ("blk.0.ffn_up.weight", (256, 40), "q4_k_m", True, QT.F16),  # row 40: -> F16
        ("blk.0.ffn_up.weight", (256, 40), "q8_0", True, QT.F16),
        ("blk.0.ssm_conv1d.weight", (6144, 4), "q8_0", True, QT.F32),
        ("blk.0.ffn_gate_inp.weight", (256, 1024), "bf16", True, QT.F32),
        ("blk.0.ffn_gate_inp_shexp.weight", (1, 1024), "f16", True, QT.F32),
        ("blk.0.attn_norm.weight", (1024,), "q8_0", True, QT.F32),
        ("blk.0.ssm_a", (16,), "q4_k_m", True, QT.F32),
        ("blk.0.attn_gate.weight", (2048, 1024), "bf16", True, QT.BF16),
        ("blk.0.attn_gate.weight", (2048, 1024), "f16", True, QT.F16),
        ("blk.0.attn_gate.weight", (2048, 1024), "f32", True, QT.F32),
    ],
)
def test_qtype_mix_rules(name, shape, mix, has_output, want):
    assert choose_qtype(name, shape, mix, has_output=has_output) == want


def test_bulk_metadata_packing_matches_gguf():
    plain, bulk = gguf.GGUFWriter(None, "qwen35"), gguf_writer._BulkArrayWriter(None, "qwen35")
    for value in (["a", "Ġb", "ü x", ""], [1, 2, 3, 248046], [0.5, 1.5], [True, False]):
        assert bulk._pack_val(value, gguf.GGUFValueType.ARRAY, True) == plain._pack_val(
            value, gguf.GGUFValueType.ARRAY, True)


def _tiny_cfg(**changes) -> ArchConfig:
    return dataclasses.replace(synthetic.preset_config("tiny"), **changes)


def test_bad_input_is_rejected_with_a_clear_message(tmp_path):
    vocab = SMALL_VOCAB
    cfg = _tiny_cfg(vocab_size=N_VOCAB)
    bad_shape = LazyTensor((4, 32), lambda: np.zeros((4, 64), np.float32))
    with pytest.raises(ValueError, match="produced shape"):
        write_model(tmp_path / "a.gguf", cfg, [("x.weight", bad_shape, QT.F32)], vocab, "")
    short_rows = LazyTensor((4, 32), bad_shape.produce, lambda max_rows: iter([np.zeros((3, 32), np.float32)]))
    with pytest.raises(ValueError, match="produced 3 rows"):
        write_model(tmp_path / "a.gguf", cfg, [("x.weight", short_rows, QT.F32)], vocab, "")
    with pytest.raises(ValueError, match="NaN"):
        write_model(tmp_path / "b.gguf", cfg, [("x.weight", np.full((2, 32), np.nan), QT.F16)], vocab, "")
    with pytest.raises(ValueError, match="block size"):
        write_model(tmp_path / "c.gguf", cfg, [("x.weight", np.zeros((2, 40)), QT.Q8_0)], vocab, "")
    with pytest.raises(ValueError, match="vocab_size"):
        write_model(tmp_path / "d.gguf", _tiny_cfg(vocab_size=1000), [], vocab, "")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="preset"):
        synthetic.make_model(tmp_path / "e.gguf", "huge")
    with pytest.raises(ValueError, match="qtype mix"):
        synthetic.make_model(tmp_path / "e.gguf", "tiny", qtype_mix="q3_k")
    with pytest.raises(ValueError, match="rope_sections"):
        _tiny_cfg(rope_sections=(11, 11, 10, 0))
    with pytest.raises(ValueError, match="multiple of ssm_n_group"):
        _tiny_cfg(ssm_dt_rank=5)
    with pytest.raises(ValueError, match="MoE"):
        _tiny_cfg(moe=True, n_ff=0)


def test_make_model_cli_maps_flags(monkeypatch, tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "make_model_cli", Path(__file__).resolve().parents[2] / "scripts" / "make_model.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    calls = []
    monkeypatch.setattr(cli, "make_model", lambda path, preset, **kw: calls.append((path, preset, kw)) or path)
    argv = ["--preset", "tiny", "--qtype", "q8_0", "--seed", "7", "--moe", "--mtp", str(tmp_path / "m.gguf")]
    assert cli.main(argv) == 0
    assert calls == [(tmp_path / "m.gguf", "tiny-moe",
                      dict(seed=7, qtype_mix="q8_0", with_mtp=True, tied=None, progress=True))]
    with pytest.raises(SystemExit):
        cli.main(["--preset", "small", "--moe", str(tmp_path / "x.gguf")])
