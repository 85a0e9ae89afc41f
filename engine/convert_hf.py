"""Convert an in-memory Hugging Face Qwen3.5 / Qwen3.5-MoE model to GGUF the way llama.cpp does.

Applies exactly the transforms of llama.cpp's converter (conversion/qwen.py: Qwen3_5TextModel,
Qwen3_5MoeTextModel), so a converted tiny model is an oracle for the engine against transformers:
- V heads reordered from grouped (HF: V head h reads K head h div r) to tiled (GGUF: h mod Hk)
  in every linear-attention tensor that has a V-head axis, when Hk != Hv;
- A_log -> ssm_a = -exp(A_log); dt_bias -> ssm_dt.bias; conv1d [C, 1, K] -> [C, K];
- +1 on every *norm.weight except linear_attn.norm.weight (HF RMSNorm multiplies by 1 + w);
- experts.gate_up_proj [E, 2I, H] split into ffn_gate_exps (first half) and ffn_up_exps;
- lm_head dropped when the embeddings are tied. All of it in float32.
Deviations: rope.dimension_sections, when the config has no mrope_section, is [11, 11, 10, 0]
scaled to rope_dims/2 (identical for real models); in-memory models carry no MTP weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from engine.gguf_writer import ArchConfig, LazyTensor, choose_qtype, write_model
from engine.vocab import Vocab

SUPPORTED_MODEL_TYPES = {"qwen3_5_text": False, "qwen3_5_moe_text": True}  # model_type -> is MoE

_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_BLOCK_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "linear_attn.in_proj_qkv.weight": "attn_qkv.weight",
    "linear_attn.in_proj_z.weight": "attn_gate.weight",
    "linear_attn.in_proj_b.weight": "ssm_beta.weight",
    "linear_attn.in_proj_a.weight": "ssm_alpha.weight",
    "linear_attn.conv1d.weight": "ssm_conv1d.weight",
    "linear_attn.dt_bias": "ssm_dt.bias",
    "linear_attn.A_log": "ssm_a",
    "linear_attn.norm.weight": "ssm_norm.weight",
    "linear_attn.out_proj.weight": "ssm_out.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.experts.down_proj": "ffn_down_exps.weight",
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
}
_GATE_UP = "mlp.experts.gate_up_proj"

Transform = Callable[[torch.Tensor], torch.Tensor]


def convert_hf_model(
    hf_model: torch.nn.Module,
    out_path: str | os.PathLike[str],
    vocab: Vocab,
    chat_template: str,
    qtype_mix: str = "f32",
    progress: bool = False,
) -> Path:
    """Write `hf_model` (Qwen3_5ForCausalLM or Qwen3_5MoeForCausalLM) as a GGUF file; returns its path."""
    cfg = arch_config_from_hf(hf_model.config)
    tensors = [
        (name, lazy, choose_qtype(name, lazy.shape, qtype_mix, has_output=not cfg.tied_embeddings))
        for name, lazy in gguf_tensors(hf_model, cfg)
    ]
    return write_model(out_path, cfg, tensors, vocab, chat_template, progress=progress)


def arch_config_from_hf(config: Any) -> ArchConfig:
    """GGUF hyper-parameters from a Qwen3_5TextConfig / Qwen3_5MoeTextConfig."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"cannot convert model_type {model_type!r}: expected one of "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)} (a Qwen3_5ForCausalLM / Qwen3_5MoeForCausalLM)")
    moe = SUPPORTED_MODEL_TYPES[model_type]
    if config.linear_key_head_dim != config.linear_value_head_dim:
        raise ValueError(f"linear_key_head_dim {config.linear_key_head_dim} != linear_value_head_dim "
                         f"{config.linear_value_head_dim}: GGUF stores one ssm.state_size for both")
    if getattr(config, "attention_bias", False):
        raise ValueError("attention_bias=True has no place in the qwen35 GGUF layout")
    if config.hidden_act != "silu":
        raise ValueError(f"hidden_act {config.hidden_act!r} is not supported (qwen35 uses silu)")
    rope = dict(config.rope_parameters or {})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {rope['rope_type']!r} is not supported (only 'default')")
    partial = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 0.25))
    sections = rope.get("mrope_section")
    experts = dict(
        moe=True, n_expert=config.num_experts, n_expert_used=config.num_experts_per_tok,
        n_ff_exp=config.moe_intermediate_size, n_ff_shexp=config.shared_expert_intermediate_size,
    ) if moe else dict(n_ff=config.intermediate_size)
    return ArchConfig(
        name=getattr(config, "name_or_path", "") or "Qwen3.5",
        vocab_size=config.vocab_size,
        context_length=config.max_position_embeddings,
        n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_kv_head=config.num_key_value_heads,
        head_dim=config.head_dim,
        rope_dims=int(config.head_dim * partial),
        rope_base=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
        rope_sections=tuple((list(sections) + [0, 0, 0, 0])[:4]) if sections else None,
        eps=config.rms_norm_eps,
        conv_kernel=config.linear_conv_kernel_dim,
        ssm_d_state=config.linear_key_head_dim,
        ssm_n_group=config.linear_num_key_heads,
        ssm_dt_rank=config.linear_num_value_heads,
        full_attention_interval=_full_attention_interval(config.layer_types),
        tied_embeddings=bool(config.tie_word_embeddings),
        **experts,
    )


def _full_attention_interval(layer_types: list[str]) -> int:
    """GGUF stores the layer pattern as one interval: full attention at (i+1) % interval == 0."""
    if "full_attention" not in layer_types:
        raise ValueError("layer_types has no full_attention layer; qwen35 GGUF cannot express that")
    interval = layer_types.index("full_attention") + 1
    expected = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(len(layer_types))]
    if list(layer_types) != expected:
        raise ValueError(f"layer_types {layer_types} do not follow a full_attention_interval pattern")
    return interval


def gguf_tensors(hf_model: torch.nn.Module, cfg: ArchConfig) -> Iterator[tuple[str, LazyTensor]]:
    """(GGUF name, lazily transformed float32 data) for every weight, in the model's order."""
    for hf_name, param in hf_model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tied_embeddings:
            continue
        for gguf_name, transform in _plan(hf_name, cfg):
            shape = tuple(transform(param.detach().to("meta", torch.float32)).shape)
            yield gguf_name, LazyTensor(shape, _producer(param, transform))


def _producer(param: torch.Tensor, transform: Transform) -> Callable[[], Any]:
    def produce() -> Any:
        return transform(param.detach().to(torch.float32)).contiguous().numpy()

    return produce


def _plan(hf_name: str, cfg: ArchConfig) -> list[tuple[str, Transform]]:
    """GGUF tensors made from one HF tensor, each with its transform."""
    if hf_name in _GLOBAL_NAMES:
        return [(_GLOBAL_NAMES[hf_name], _norm_offset if hf_name.endswith("norm.weight") else _identity)]
    parts = hf_name.split(".", 3)
    if len(parts) < 4 or parts[:2] != ["model", "layers"] or not parts[2].isdecimal():
        raise ValueError(f"cannot map HF tensor {hf_name!r} to a GGUF name")
    block, suffix = int(parts[2]), parts[3]
    prefix = f"blk.{block}."
    if suffix == _GATE_UP:
        return [(prefix + "ffn_gate_exps.weight", _first_half), (prefix + "ffn_up_exps.weight", _second_half)]
    if suffix not in _BLOCK_NAMES:
        raise ValueError(f"cannot map HF tensor {hf_name!r} to a GGUF name")
    return [(prefix + _BLOCK_NAMES[suffix], _block_transform(suffix, cfg))]


def _block_transform(suffix: str, cfg: ArchConfig) -> Transform:
    """llama.cpp order: V-head reorder first, then the value transforms of Qwen3NextModel."""
    reorder = _v_head_reorder(suffix, cfg) if cfg.ssm_n_group != cfg.ssm_dt_rank else _identity
    if suffix == "linear_attn.A_log":
        return lambda t: -torch.exp(reorder(t))
    if suffix == "linear_attn.conv1d.weight":
        return lambda t: reorder(t.squeeze(1))
    if suffix.endswith("norm.weight") and suffix != "linear_attn.norm.weight":
        return _norm_offset
    return reorder


def _v_head_reorder(suffix: str, cfg: ArchConfig) -> Transform:
    """Grouped -> tiled V heads along the V axis of a linear-attention tensor (identity elsewhere)."""
    n_k, n_v, dv = cfg.ssm_n_group, cfg.ssm_dt_rank, cfg.ssm_d_state
    per_k = n_v // n_k
    qk_rows = 2 * cfg.key_dim

    def rows(head_dim: int) -> Transform:
        return lambda t: _grouped_to_tiled(t, 0, n_k, per_k, head_dim)

    def v_rows_after_qk(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[:qk_rows], _grouped_to_tiled(t[qk_rows:], 0, n_k, per_k, dv)], dim=0)

    return {
        "linear_attn.in_proj_qkv.weight": v_rows_after_qk,
        "linear_attn.conv1d.weight": v_rows_after_qk,
        "linear_attn.in_proj_z.weight": rows(dv),
        "linear_attn.in_proj_b.weight": rows(1),
        "linear_attn.in_proj_a.weight": rows(1),
        "linear_attn.A_log": rows(1),
        "linear_attn.dt_bias": rows(1),
        "linear_attn.out_proj.weight": lambda t: _grouped_to_tiled(t, 1, n_k, per_k, dv),
    }.get(suffix, _identity)


def _grouped_to_tiled(t: torch.Tensor, dim: int, n_k: int, per_k: int, head_dim: int) -> torch.Tensor:
    """Axis `dim` holds heads [k0v0..k0v(r-1), k1v0, ...]; return them as [k0v0, k1v0, ..., k0v1, ...]."""
    split = t.unflatten(dim, (n_k, per_k, head_dim))
    return split.transpose(dim, dim + 1).reshape(t.shape)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _norm_offset(t: torch.Tensor) -> torch.Tensor:
    return t + 1


def _first_half(t: torch.Tensor) -> torch.Tensor:
    return t[..., : t.shape[-2] // 2, :]


def _second_half(t: torch.Tensor) -> torch.Tensor:
    return t[..., t.shape[-2] // 2:, :]
