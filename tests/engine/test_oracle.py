"""Engine logits against Hugging Face transformers (CPU, float32) on tiny random Qwen3.5 models.

The HF model is the independent oracle: we convert it to GGUF with llama.cpp's transforms
(norm +1, ssm_a = -exp(A_log), grouped->tiled V heads, ...) and require max |diff| <= 1e-4 over
260 tokens (five GDN chunks, so chunk boundaries and the carried state are exercised).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from engine import load_model  # noqa: E402
from engine.chat_template import DEFAULT_TEMPLATE  # noqa: E402
from engine.convert_hf import convert_hf_model  # noqa: E402
from engine.generate import prefill  # noqa: E402
from engine.vocab import qwen35_vocab  # noqa: E402

N_TOKENS = 260
TOLERANCE = 1e-4

COMMON = dict(
    vocab_size=248320,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    linear_num_key_heads=2,
    linear_num_value_heads=4,  # Hv > Hk: the head-order pitfall shows
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_conv_kernel_dim=4,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    max_position_embeddings=4096,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 10_000_000.0,
        "partial_rotary_factor": 0.25,
        "mrope_section": [2, 1, 1],
        "mrope_interleaved": True,
    },
)


def _randomize(model, seed: int) -> None:
    """Non-trivial weights: random norms (HF stores w for 1 + w), decays spread, logits std ~2."""
    g = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("linear_attn.norm.weight"):
                p.copy_(1.0 + 0.3 * (torch.rand(p.shape, generator=g) - 0.5))
            elif "norm" in name:
                p.copy_(0.4 * (torch.rand(p.shape, generator=g) - 0.5))
            elif name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=g) * 2.5 - 2.0)
            elif name.endswith("dt_bias"):
                p.copy_(torch.rand(p.shape, generator=g) * 2.0 - 1.0)
            elif "conv1d" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith("lm_head.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 2.0 / hidden**0.5)
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)


def _hf_model(kind: str):
    if kind == "dense":
        cfg = transformers.Qwen3_5TextConfig(intermediate_size=128, **COMMON)
        cls = transformers.Qwen3_5ForCausalLM
    else:
        cfg = transformers.Qwen3_5MoeTextConfig(
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            num_experts=8,
            num_experts_per_tok=2,
            **COMMON,
        )
        cls = transformers.Qwen3_5MoeForCausalLM
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(cfg).float().eval()
    _randomize(model, seed=1 if kind == "dense" else 2)
    return model


@pytest.fixture(scope="module", params=["dense", "moe"])
def pair(request, tmp_path_factory):
    hf = _hf_model(request.param)
    path = tmp_path_factory.mktemp("oracle") / f"{request.param}.gguf"
    convert_hf_model(hf, path, qwen35_vocab(), DEFAULT_TEMPLATE)
    ids = np.random.default_rng(3).integers(0, 248044, N_TOKENS)
    with torch.no_grad():
        ref = hf(torch.tensor(ids)[None]).logits[0].numpy()
    return load_model(path), ids, ref


def test_logits_match_transformers(pair):
    model, ids, ref = pair
    assert ref.std() > 1.0, "oracle logits too flat to prove anything"
    logits = model.forward(ids, model.new_state())
    assert logits.shape == (N_TOKENS, model.config.n_vocab)
    assert logits.dtype == np.float32
    assert np.abs(logits - ref).max() <= TOLERANCE


def test_token_by_token_decode_matches_transformers(pair):
    model, ids, ref = pair
    state = model.new_state()
    rows = [model.forward(ids[:200], state)]
    rows += [model.forward([t], state) for t in ids[200:]]
    assert np.abs(np.concatenate(rows) - ref).max() <= TOLERANCE


def test_last_only_and_chunked_prefill_agree(pair):
    model, ids, ref = pair
    last = model.forward(ids, model.new_state(), last_only=True)
    assert last.shape == (1, model.config.n_vocab)
    assert np.abs(last[0] - ref[-1]).max() <= TOLERANCE
    np.testing.assert_allclose(prefill(model, ids, model.new_state(), chunk=37), last[0], atol=5e-5)
