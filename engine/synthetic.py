"""Synthetic Qwen3.5 models: seeded random weights in the exact tensor layout of real GGUF files.

They let every part of the engine run (and be tested for exactness) without downloading a model.
Weights are scaled so activations stay O(1) through the layers and the final logits have a
standard deviation near 2: far from flat, so greedy decoding and top-k comparisons mean something.
Each tensor draws from its own generator seeded by (seed, name), so a tensor's values do not
depend on which other tensors exist (adding the MTP block or untying the output changes nothing else).
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT

from engine.chat_template import DEFAULT_TEMPLATE
from engine.gguf_writer import QTYPE_MIXES, ArchConfig, LazyTensor, choose_qtype, write_model
from engine.vocab import qwen35_vocab

QWEN35_VOCAB = 248320
DEFAULT_PRESET = "tiny"
DEFAULT_QTYPE_MIX = "q8_0"
LAYOUT_VERSION = 1  # bump when generated weights change, so cached default models are remade

_COMMON = dict(vocab_size=QWEN35_VOCAB, rope_base=1e7, eps=1e-6, conv_kernel=4, full_attention_interval=4)
_TINY = dict(_COMMON, context_length=32768, n_embd=128, n_layer=8, n_head=4, n_kv_head=2, head_dim=64,
             rope_dims=16, ssm_d_state=32, ssm_n_group=2, ssm_dt_rank=4)
_REAL = dict(_COMMON, context_length=262144, head_dim=256, rope_dims=64, ssm_d_state=128)

PRESETS: dict[str, ArchConfig] = {
    "tiny": ArchConfig(name="agentd-tiny", n_ff=256, tied_embeddings=True, **_TINY),
    "tiny-moe": ArchConfig(name="agentd-tiny-moe", moe=True, n_expert=8, n_expert_used=2, n_ff_exp=128,
                           n_ff_shexp=256, **_TINY),
    "small": ArchConfig(name="agentd-small", n_embd=768, n_layer=12, n_head=4, n_kv_head=2, ssm_n_group=4,
                        ssm_dt_rank=8, n_ff=2048, tied_embeddings=True, **dict(_REAL, context_length=65536)),
    "0.8B": ArchConfig(name="Qwen3.5-0.8B-synthetic", n_embd=1024, n_layer=24, n_head=8, n_kv_head=2,
                       ssm_n_group=16, ssm_dt_rank=16, n_ff=3584, tied_embeddings=True, **_REAL),
    "27B": ArchConfig(name="Qwen3.5-27B-synthetic", n_embd=5120, n_layer=64, n_head=24, n_kv_head=4,
                      ssm_n_group=16, ssm_dt_rank=48, n_ff=17408, **_REAL),
    "35B-A3B": ArchConfig(name="Qwen3.5-35B-A3B-synthetic", n_embd=2048, n_layer=40, n_head=16, n_kv_head=2,
                          ssm_n_group=16, ssm_dt_rank=32, moe=True, n_expert=256, n_expert_used=8,
                          n_ff_exp=512, n_ff_shexp=512, **_REAL),
}

Init = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


def preset_config(preset: str, with_mtp: bool = False, tied: bool | None = None) -> ArchConfig:
    """The preset's hyper-parameters, with one MTP block appended and/or the output tying changed."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    tied = cfg.tied_embeddings if tied is None else tied
    return dataclasses.replace(cfg, n_nextn=1 if with_mtp else 0, tied_embeddings=tied)


def model_tensors(cfg: ArchConfig, seed: int = 0, qtype_mix: str = "f32") -> list[tuple[str, LazyTensor, QT]]:
    """Every tensor of the model as (GGUF name, lazily drawn float32 data, GGML type)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if qtype_mix not in QTYPE_MIXES:
        raise ValueError(f"unknown qtype mix {qtype_mix!r}; choose one of {', '.join(QTYPE_MIXES)}")
    return [
        (name, _lazy_tensor(name, shape, init, seed),
         choose_qtype(name, shape, qtype_mix, has_output=not cfg.tied_embeddings))
        for name, shape, init in tensor_layout(cfg)
    ]


def make_model(
    path: str | os.PathLike[str],
    preset: str,
    seed: int = 0,
    qtype_mix: str = "f32",
    with_mtp: bool = False,
    tied: bool | None = None,
    progress: bool = False,
) -> Path:
    """Write a synthetic model file of the given preset; returns its path."""
    cfg = preset_config(preset, with_mtp=with_mtp, tied=tied)
    tensors = model_tensors(cfg, seed, qtype_mix)
    return write_model(path, cfg, tensors, qwen35_vocab(cfg.vocab_size), DEFAULT_TEMPLATE, progress=progress)


def default_model_path() -> Path:
    """Where the embedded default model lives: $AGENTD_CACHE_DIR/models or ~/.cache/agentd/models."""
    cache = os.environ.get("AGENTD_CACHE_DIR")
    root = Path(cache) if cache else Path.home() / ".cache" / "agentd"
    return root / "models" / f"agentd-{DEFAULT_PRESET}-{DEFAULT_QTYPE_MIX}-v{LAYOUT_VERSION}.gguf"


def ensure_default_model(progress: bool = True, say: Callable[[str], None] = lambda line: None) -> Path:
    """The default model's path, creating the file on first use (atomically, so never half written).
    `say` gets a line before it is written, so a first run does not look like a model download."""
    path = default_model_path()
    if not path.is_file():
        say(f"first run: writing the embedded demo model to {path} (about 45 MB, once)")
        make_model(path, DEFAULT_PRESET, seed=0, qtype_mix=DEFAULT_QTYPE_MIX, progress=progress)
    return path


def demo_model_notice(path: Path, command: str) -> str:
    """What a user of the default model must know: it is not a real model."""
    return (
        f"using the embedded demo model {path}: a small model with random weights and the real Qwen3.5 "
        f"tokenizer, for trying agentd out; its output is gibberish. To use a real model: {command} --model "
        "PATH/TO/Qwen3.5.gguf"
    )


def tensor_layout(cfg: ArchConfig) -> Iterator[tuple[str, tuple[int, ...], Init]]:
    """(GGUF name, numpy shape = reversed ne, initializer) of every tensor, in file order."""
    n = cfg.n_embd
    # untied: O(1) residual stream; tied: the shared matrix must give logits of std ~2
    embd_std = 2 / math.sqrt(n) if cfg.tied_embeddings else 1.0
    yield "token_embd.weight", (cfg.vocab_size, n), _normal(embd_std)
    for i in range(cfg.block_count):
        p = f"blk.{i}."
        yield p + "attn_norm.weight", (n,), _norm_weight
        yield from (_attention(cfg, p) if cfg.is_full_attention(i) else _gated_delta_net(cfg, p))
        yield p + "post_attention_norm.weight", (n,), _norm_weight
        yield from (_moe_ffn(cfg, p) if cfg.moe else _dense_ffn(cfg, p))
        if i >= cfg.n_layer:
            yield p + "nextn.eh_proj.weight", (n, 2 * n), _normal(1 / math.sqrt(2 * n))
            for norm in ("enorm", "hnorm", "shared_head_norm"):
                yield p + f"nextn.{norm}.weight", (n,), _norm_weight
    yield "output_norm.weight", (n,), _norm_weight
    if not cfg.tied_embeddings:
        yield "output.weight", (cfg.vocab_size, n), _normal(2 / math.sqrt(n))


def _gated_delta_net(cfg: ArchConfig, p: str) -> Iterator[tuple[str, tuple[int, ...], Init]]:
    n, hv = cfg.n_embd, cfg.ssm_dt_rank
    yield p + "attn_qkv.weight", (cfg.conv_channels, n), _projection(n)
    yield p + "attn_gate.weight", (cfg.value_dim, n), _projection(n)
    yield p + "ssm_beta.weight", (hv, n), _projection(n)
    yield p + "ssm_alpha.weight", (hv, n), _projection(n)
    yield p + "ssm_conv1d.weight", (cfg.conv_channels, cfg.conv_kernel), _normal(1 / math.sqrt(cfg.conv_kernel))
    # decay exp(ssm_a * softplus(alpha + dt_bias)) spans ~0.3 (fast forgetting) to ~0.999 (long memory)
    yield p + "ssm_dt.bias", (hv,), _uniform(-4.0, 0.0)
    yield p + "ssm_a", (hv,), _negative_exp_uniform(-3.0, 0.0)  # -exp(A_log), A_log ~ U(-3, 0)
    yield p + "ssm_norm.weight", (cfg.ssm_d_state,), _norm_weight
    yield p + "ssm_out.weight", (n, cfg.value_dim), _residual_projection(cfg, cfg.value_dim)


def _attention(cfg: ArchConfig, p: str) -> Iterator[tuple[str, tuple[int, ...], Init]]:
    n, hd = cfg.n_embd, cfg.head_dim
    yield p + "attn_q.weight", (2 * cfg.n_head * hd, n), _projection(n)  # per head [query | gate]
    yield p + "attn_k.weight", (cfg.n_kv_head * hd, n), _projection(n)
    yield p + "attn_v.weight", (cfg.n_kv_head * hd, n), _projection(n)
    yield p + "attn_output.weight", (n, cfg.n_head * hd), _residual_projection(cfg, cfg.n_head * hd)
    yield p + "attn_q_norm.weight", (hd,), _norm_weight
    yield p + "attn_k_norm.weight", (hd,), _norm_weight


def _dense_ffn(cfg: ArchConfig, p: str) -> Iterator[tuple[str, tuple[int, ...], Init]]:
    n = cfg.n_embd
    yield p + "ffn_gate.weight", (cfg.n_ff, n), _projection(n)
    yield p + "ffn_up.weight", (cfg.n_ff, n), _projection(n)
    yield p + "ffn_down.weight", (n, cfg.n_ff), _residual_projection(cfg, cfg.n_ff)


def _moe_ffn(cfg: ArchConfig, p: str) -> Iterator[tuple[str, tuple[int, ...], Init]]:
    n, e, ff, sh = cfg.n_embd, cfg.n_expert, cfg.n_ff_exp, cfg.n_ff_shexp
    yield p + "ffn_gate_inp.weight", (e, n), _normal(2 / math.sqrt(n))  # router logits of std ~2
    yield p + "ffn_gate_exps.weight", (e, ff, n), _projection(n)
    yield p + "ffn_up_exps.weight", (e, ff, n), _projection(n)
    yield p + "ffn_down_exps.weight", (e, n, ff), _residual_projection(cfg, ff)
    yield p + "ffn_gate_inp_shexp.weight", (n,), _projection(n)
    yield p + "ffn_gate_shexp.weight", (sh, n), _projection(n)
    yield p + "ffn_up_shexp.weight", (sh, n), _projection(n)
    yield p + "ffn_down_shexp.weight", (n, sh), _residual_projection(cfg, sh)


def _lazy_tensor(name: str, shape: tuple[int, ...], init: Init, seed: int) -> LazyTensor:
    """The tensor drawn whole or in row blocks; the same values either way.

    Every initializer draws its values one by one from the generator, so drawing the rows block
    after block continues the same random stream as drawing them at once.
    """

    def rng() -> np.random.Generator:
        return np.random.default_rng([seed, zlib.crc32(name.encode())])

    def draw() -> np.ndarray:
        return init(rng(), shape)

    def draw_rows(max_rows: int) -> Iterator[np.ndarray]:
        gen, n_rows = rng(), math.prod(shape[:-1])
        for start in range(0, n_rows, max_rows):
            yield init(gen, (min(max_rows, n_rows - start), shape[-1]))

    return LazyTensor(shape, draw, draw_rows)


def _normal(std: float) -> Init:
    def init(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        values = rng.standard_normal(shape, dtype=np.float32)
        values *= np.float32(std)
        return values

    return init


def _projection(fan_in: int) -> Init:
    """N(0, 1/fan_in): unit-variance inputs give unit-variance outputs."""
    return _normal(1 / math.sqrt(fan_in))


def _residual_projection(cfg: ArchConfig, fan_in: int) -> Init:
    """Output of a residual branch, shrunk so the 2 * n_layer branches sum to an O(1) stream."""
    return _normal(1 / math.sqrt(fan_in * 2 * cfg.n_layer))


def _norm_weight(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """RMSNorm gains as GGUF stores them (already 1 + w): around 1 with a 0.1 spread."""
    return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)


def _uniform(low: float, high: float) -> Init:
    def init(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return rng.uniform(low, high, shape).astype(np.float32)

    return init


def _negative_exp_uniform(low: float, high: float) -> Init:
    def init(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return (-np.exp(rng.uniform(low, high, shape))).astype(np.float32)

    return init
