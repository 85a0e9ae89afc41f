"""HF transformers Qwen3.5 -> GGUF conversion: names, metadata and llama.cpp's transforms, numerically.

References independent of engine.convert_hf: gguf's TensorNameMap (llama.cpp's own name table), the
spec's formulas (norm + 1, ssm_a = -exp(A_log), V head p = v*Hk + k holds HF head k*r + v) and the
HF linear-attention module itself, run against a numpy gated delta net reading the GGUF tensors.
The models carry a 512-token vocabulary: gguf's GGUFReader needs tens of seconds for the real one.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from engine.convert_hf import arch_config_from_hf, convert_hf_model  # noqa: E402
from engine.vocab import Vocab  # noqa: E402

N_VOCAB = 512
VOCAB = Vocab(tokens=[f"t{i}" for i in range(N_VOCAB)], token_types=[1] * N_VOCAB, merges=["t 0"],
              pre="qwen35", eos_id=N_VOCAB - 1, pad_id=N_VOCAB - 1, bos_id=None)

HK, HV, DK = 2, 4, 16  # GDN key heads != value heads: grouped vs tiled order matters
COMMON = dict(
    vocab_size=N_VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, linear_num_key_heads=HK, linear_num_value_heads=HV, linear_key_head_dim=DK,
    linear_value_head_dim=DK, linear_conv_kernel_dim=4, rms_norm_eps=1e-6, max_position_embeddings=4096,
)
ROPE = {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25}


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random non-zero norms, A_log, dt_bias; projections N(0, 1/fan_in) for O(1) activations."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(("A_log", "dt_bias")):
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    cfg = transformers.Qwen3_5TextConfig(
        intermediate_size=96, tie_word_embeddings=True, rope_parameters=dict(ROPE, mrope_section=[2, 1, 1]),
        **COMMON)
    hf = _randomized(transformers.Qwen3_5ForCausalLM(cfg), seed=1)
    path = convert_hf_model(hf, tmp_path_factory.mktemp("conv") / "dense.gguf", VOCAB, "{{ x }}")
    return hf, gguf.GGUFReader(path)


@pytest.fixture(scope="module")
def moe_config():
    return transformers.Qwen3_5MoeTextConfig(
        num_experts=8, num_experts_per_tok=2, moe_intermediate_size=48, shared_expert_intermediate_size=64,
        tie_word_embeddings=False, rope_parameters=dict(ROPE), **COMMON)


@pytest.fixture(scope="module")
def moe(tmp_path_factory, moe_config):
    hf = _randomized(transformers.Qwen3_5MoeForCausalLM(moe_config), seed=2)
    path = convert_hf_model(hf, tmp_path_factory.mktemp("conv") / "moe.gguf", VOCAB, "{{ x }}")
    return hf, gguf.GGUFReader(path)


def tensor(reader: gguf.GGUFReader, name: str) -> np.ndarray:
    """Float data in numpy order (reversed ne)."""
    t = next(t for t in reader.tensors if t.name == name)
    data = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    return data.reshape(tuple(reversed(t.shape.tolist())))


def hf_params(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {n: p.detach().float().numpy() for n, p in model.state_dict().items()}


def fields(reader: gguf.GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def llama_cpp_names(hf_name: str, arch: gguf.MODEL_ARCH, n_blocks: int) -> list[str]:
    """GGUF names per gguf's TensorNameMap, after llama.cpp's renames (dt_bias, fused experts)."""
    names = {
        ".linear_attn.dt_bias": [".linear_attn.dt_proj.bias"],
        ".mlp.experts.gate_up_proj": [".mlp.experts.gate_proj.weight", ".mlp.experts.up_proj.weight"],
        ".mlp.experts.down_proj": [".mlp.experts.down_proj.weight"],
    }
    suffix = next((s for s in names if hf_name.endswith(s)), None)
    sources = [hf_name.removesuffix(suffix) + r for r in names[suffix]] if suffix else [hf_name]
    table = gguf.get_tensor_name_map(arch, n_blocks)
    return [table.get_name(s, try_suffixes=(".weight", ".bias")) for s in sources]


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_tensor_names_match_llama_cpps_table(kind, request):
    hf, reader = request.getfixturevalue(kind)
    arch = gguf.MODEL_ARCH.QWEN35 if kind == "dense" else gguf.MODEL_ARCH.QWEN35MOE
    tied = hf.config.tie_word_embeddings
    want = [name for hf_name in hf.state_dict() if not (tied and hf_name == "lm_head.weight")
            for name in llama_cpp_names(hf_name, arch, 4)]
    assert None not in want
    assert [t.name for t in reader.tensors] == want
    assert ("output.weight" in want) == (not tied)


def test_dense_metadata_from_the_hf_config(dense):
    _, reader = dense
    meta, a = fields(reader), "qwen35."
    assert meta["general.architecture"] == "qwen35"
    assert meta["general.file_type"] == gguf.LlamaFileType.ALL_F32
    assert (meta[a + "block_count"], meta[a + "context_length"], meta[a + "embedding_length"]) == (4, 4096, 64)
    assert meta[a + "feed_forward_length"] == 96
    assert (meta[a + "attention.head_count"], meta[a + "attention.head_count_kv"]) == (4, 2)
    assert meta[a + "attention.key_length"] == meta[a + "attention.value_length"] == 32
    assert (meta[a + "rope.dimension_count"], meta[a + "rope.freq_base"]) == (8, 1e7)
    assert meta[a + "rope.dimension_sections"] == [2, 1, 1, 0]
    assert meta[a + "attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert [meta[a + "ssm." + k] for k in ("conv_kernel", "state_size", "group_count", "time_step_rank",
                                           "inner_size")] == [4, DK, HK, HV, HV * DK]
    assert meta[a + "full_attention_interval"] == 4
    assert meta["tokenizer.chat_template"] == "{{ x }}"
    assert meta["tokenizer.ggml.tokens"] == VOCAB.tokens


def test_moe_metadata_from_the_hf_config(moe):
    _, reader = moe
    meta, a = fields(reader), "qwen35moe."
    assert meta["general.architecture"] == "qwen35moe"
    assert (meta[a + "expert_count"], meta[a + "expert_used_count"]) == (8, 2)
    assert (meta[a + "expert_feed_forward_length"], meta[a + "expert_shared_feed_forward_length"]) == (48, 64)
    assert a + "feed_forward_length" not in meta
    assert meta[a + "rope.dimension_sections"] == [1, 1, 2, 0]  # no mrope_section: default scaled to 8 dims


def test_value_transforms(dense):
    hf, reader = dense
    p = hf_params(hf)
    r = HV // HK
    tiled_to_hf = [(pos % HK) * r + pos // HK for pos in range(HV)]  # GGUF head v*Hk+k = HF head k*r+v
    for i in (0, 1, 2):
        hf_pre, pre = f"model.layers.{i}.linear_attn.", f"blk.{i}."
        np.testing.assert_allclose(tensor(reader, pre + "ssm_a"), -np.exp(p[hf_pre + "A_log"][tiled_to_hf]),
                                   rtol=1e-6)
        assert (tensor(reader, pre + "ssm_a") < 0).all()
        assert np.array_equal(tensor(reader, pre + "ssm_dt.bias"), p[hf_pre + "dt_bias"][tiled_to_hf])
        assert np.array_equal(tensor(reader, pre + "ssm_norm.weight"), p[hf_pre + "norm.weight"])  # no +1
        assert np.array_equal(tensor(reader, pre + "ssm_conv1d.weight")[: 2 * HK * DK],
                              p[hf_pre + "conv1d.weight"][: 2 * HK * DK, 0, :])
        assert np.array_equal(tensor(reader, pre + "ssm_alpha.weight"), p[hf_pre + "in_proj_a.weight"][tiled_to_hf])
        input_norm = p[f"model.layers.{i}.input_layernorm.weight"]
        assert np.array_equal(tensor(reader, pre + "attn_norm.weight"), input_norm + 1)
    assert np.array_equal(tensor(reader, "blk.3.post_attention_norm.weight"),
                          p["model.layers.3.post_attention_layernorm.weight"] + 1)
    for ours, theirs in (("attn_q_norm", "q_norm"), ("attn_k_norm", "k_norm")):
        hf_norm = p[f"model.layers.3.self_attn.{theirs}.weight"]
        assert np.array_equal(tensor(reader, f"blk.3.{ours}.weight"), hf_norm + 1)
    for ours, theirs in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")):
        assert np.array_equal(tensor(reader, f"blk.3.{ours}.weight"), p[f"model.layers.3.self_attn.{theirs}.weight"])
    assert np.array_equal(tensor(reader, "output_norm.weight"), p["model.norm.weight"] + 1)
    assert np.array_equal(tensor(reader, "token_embd.weight"), p["model.embed_tokens.weight"])
    assert np.array_equal(tensor(reader, "blk.0.ffn_down.weight"), p["model.layers.0.mlp.down_proj.weight"])


def gated_delta_net(reader: gguf.GGUFReader, layer: int, x: np.ndarray, key_head_of) -> np.ndarray:
    """Spec section 2 in float64 (recurrent form) from GGUF tensors; V head h reads K head key_head_of(h)."""
    def w(name: str) -> np.ndarray:
        return tensor(reader, f"blk.{layer}.{name}").astype(np.float64)

    steps, kd = x.shape[0], HK * DK
    u = x @ w("attn_qkv.weight").T
    kernel = w("ssm_conv1d.weight")  # (C, K)
    padded = np.concatenate([np.zeros((kernel.shape[1] - 1, u.shape[1])), u])
    conv = sum(kernel[:, i] * padded[i:i + steps] for i in range(kernel.shape[1]))
    c = conv / (1 + np.exp(-conv))
    q, k = c[:, :kd].reshape(steps, HK, DK), c[:, kd:2 * kd].reshape(steps, HK, DK)
    v = c[:, 2 * kd:].reshape(steps, HV, DK)
    q = q / np.sqrt((q**2).sum(-1, keepdims=True) + 1e-6) / np.sqrt(DK)
    k = k / np.sqrt((k**2).sum(-1, keepdims=True) + 1e-6)
    beta = 1 / (1 + np.exp(-(x @ w("ssm_beta.weight").T)))
    g = w("ssm_a") * np.logaddexp(0, x @ w("ssm_alpha.weight").T + w("ssm_dt.bias"))
    state, out = np.zeros((HV, DK, DK)), np.zeros((steps, HV, DK))
    for t in range(steps):
        for h in range(HV):
            kh = key_head_of(h)
            state[h] *= np.exp(g[t, h])
            delta = beta[t, h] * (v[t, h] - state[h].T @ k[t, kh])
            state[h] += np.outer(k[t, kh], delta)
            out[t, h] = state[h].T @ q[t, kh]
    z = (x @ w("attn_gate.weight").T).reshape(steps, HV, DK)
    y = out / np.sqrt((out**2).mean(-1, keepdims=True) + 1e-6) * w("ssm_norm.weight") * z / (1 + np.exp(-z))
    return y.reshape(steps, HV * DK) @ w("ssm_out.weight").T


def test_tiled_v_heads_reproduce_hf_linear_attention(dense):
    hf, reader = dense
    x = np.random.default_rng(0).standard_normal((7, 64))
    with torch.no_grad():
        want = hf.model.layers[1].linear_attn(torch.tensor(x, dtype=torch.float32)[None])[0].double().numpy()
    assert np.abs(want).mean() > 0.1
    tiled = gated_delta_net(reader, 1, x, lambda h: h % HK)
    assert np.abs(tiled - want).max() < 1e-4
    grouped = gated_delta_net(reader, 1, x, lambda h: h // (HV // HK))  # HF's rule on GGUF order: wrong
    assert np.abs(grouped - want).max() > 1e-2


def test_moe_experts_split_and_router_tensors(moe):
    hf, reader = moe
    p = hf_params(hf)
    pre, hf_pre = "blk.2.", "model.layers.2.mlp."
    gate_up = p[hf_pre + "experts.gate_up_proj"]  # (E, 2I, H), gate rows first
    assert np.array_equal(tensor(reader, pre + "ffn_gate_exps.weight"), gate_up[:, :48])
    assert np.array_equal(tensor(reader, pre + "ffn_up_exps.weight"), gate_up[:, 48:])
    assert np.array_equal(tensor(reader, pre + "ffn_down_exps.weight"), p[hf_pre + "experts.down_proj"])
    assert np.array_equal(tensor(reader, pre + "ffn_gate_inp.weight"), p[hf_pre + "gate.weight"])
    assert np.array_equal(tensor(reader, pre + "ffn_gate_inp_shexp.weight"), p[hf_pre + "shared_expert_gate.weight"])
    assert np.array_equal(tensor(reader, pre + "ffn_up_shexp.weight"), p[hf_pre + "shared_expert.up_proj.weight"])
    assert np.array_equal(tensor(reader, "output.weight"), p["lm_head.weight"])
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert shapes[pre + "ffn_gate_exps.weight"] == (64, 48, 8)
    assert shapes[pre + "ffn_down_exps.weight"] == (48, 64, 8)
    assert shapes[pre + "ffn_gate_inp.weight"] == (64, 8)


def test_q8_0_mix_types(moe, tmp_path):
    hf, _ = moe
    path = convert_hf_model(hf, tmp_path / "q8.gguf", VOCAB, "", qtype_mix="q8_0")
    reader = gguf.GGUFReader(path)
    assert fields(reader)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    for t in reader.tensors:
        if len(t.shape) == 1 or any(s in t.name for s in ("_norm.", ".ssm_conv1d.", ".ffn_gate_inp")):
            want = gguf.GGMLQuantizationType.F32
        elif int(t.shape[0]) % 32:
            want = gguf.GGMLQuantizationType.F16  # llama.cpp's fallback when Q8_0 blocks do not fit
        else:
            want = gguf.GGMLQuantizationType.Q8_0
        assert t.tensor_type == want, t.name
    assert next(t for t in reader.tensors if t.name == "blk.0.ffn_down_exps.weight").tensor_type == \
        gguf.GGMLQuantizationType.F16


def test_unconvertible_models_are_rejected(moe_config):
    irregular = transformers.Qwen3_5TextConfig(
        intermediate_size=96, layer_types=["linear_attention", "full_attention", "linear_attention",
                                           "linear_attention"], **COMMON)
    with pytest.raises(ValueError, match="full_attention_interval"):
        arch_config_from_hf(irregular)
    with pytest.raises(ValueError, match="model_type"):
        arch_config_from_hf(transformers.LlamaConfig())
    odd = transformers.Qwen3_5TextConfig(intermediate_size=96, **dict(COMMON, linear_value_head_dim=32))
    with pytest.raises(ValueError, match="linear_value_head_dim"):
        arch_config_from_hf(odd)
    cfg = arch_config_from_hf(moe_config)
    assert cfg.moe and cfg.n_ff == 0 and cfg.arch == "qwen35moe" and not cfg.tied_embeddings
