"""Hyper-parameters of a Qwen3.5 hybrid model, read once from GGUF metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

SUPPORTED_ARCHS = ("qwen35", "qwen35moe")


class ModelFormatError(ValueError):
    """The file is not a model this engine can run; the message names the problem."""


class DeltaNetDims:
    """Gated DeltaNet sizes derived from head counts; shared by the reader's and writer's configs."""

    ssm_d_state: int  # dk == dv
    ssm_n_group: int  # Hk
    ssm_dt_rank: int  # Hv

    @property
    def key_dim(self) -> int:
        return self.ssm_n_group * self.ssm_d_state

    @property
    def value_dim(self) -> int:
        return self.ssm_dt_rank * self.ssm_d_state

    @property
    def conv_channels(self) -> int:
        return 2 * self.key_dim + self.value_dim


@dataclass(frozen=True)
class ModelConfig(DeltaNetDims):
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int  # trunk layers; MTP blocks appended after them are not run
    n_nextn: int
    context_length: int
    eps: float
    # full attention
    n_head: int
    n_kv_head: int
    head_dim: int
    rope_dims: int
    rope_base: float
    # gated delta net
    conv_kernel: int
    ssm_d_state: int  # dk == dv
    ssm_n_group: int  # Hk
    ssm_dt_rank: int  # Hv
    recurrent_layers: tuple[bool, ...]
    # feed-forward
    n_ff: int = 0
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    expert_weights_scale: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    @property
    def recurrent_layer_ids(self) -> list[int]:
        return [i for i, r in enumerate(self.recurrent_layers) if r]

    @property
    def attention_layer_ids(self) -> list[int]:
        return [i for i, r in enumerate(self.recurrent_layers) if not r]

    @property
    def recurrent_state_bytes(self) -> int:
        """F32 bytes of all conv + delta-rule states of one sequence (constant in position)."""
        per_layer = (self.conv_kernel - 1) * self.conv_channels + self.ssm_d_state * self.value_dim
        return 4 * per_layer * len(self.recurrent_layer_ids)

    @property
    def kv_bytes_per_token(self) -> int:
        """F32 bytes of attention K and V per token over all attention layers."""
        return 4 * 2 * self.n_kv_head * self.head_dim * len(self.attention_layer_ids)

    @classmethod
    def from_metadata(cls, get: Callable[[str, Any], Any], n_vocab_tokens: int) -> "ModelConfig":
        """Build from GGUF keys; `get(key, ModelFormatError)` raises ModelFormatError for a missing key."""
        arch = get("general.architecture", ModelFormatError)
        if arch not in SUPPORTED_ARCHS:
            raise ModelFormatError(
                f"unsupported architecture {arch!r}: this engine runs {', '.join(SUPPORTED_ARCHS)}"
            )

        def key(name: str, default: Any = ModelFormatError) -> Any:
            return get(f"{arch}.{name}", default)

        block_count = int(key("block_count"))
        n_nextn = int(key("nextn_predict_layers", 0) or 0)
        n_layer = block_count - n_nextn
        if n_layer <= 0:
            raise ModelFormatError(f"block_count {block_count} leaves no trunk layers after {n_nextn} MTP blocks")
        recurrent = key("attention.recurrent_layers", None)
        if recurrent is not None:
            layers = tuple(bool(x) for x in list(recurrent)[:n_layer])
        else:
            interval = int(key("full_attention_interval", 4))
            layers = tuple((i + 1) % interval != 0 for i in range(n_layer))
        head_kv = key("attention.head_count_kv")
        n_kv = _first_nonzero(head_kv)
        n_ff = key("feed_forward_length", 0)
        n_ff = _first_nonzero(n_ff) if n_ff is not None else 0
        head_dim = int(key("attention.key_length"))
        value_length = int(key("attention.value_length", head_dim))
        if value_length != head_dim:
            raise ModelFormatError(f"attention key_length {head_dim} != value_length {value_length}")
        n_vocab = int(key("vocab_size", n_vocab_tokens) or n_vocab_tokens)
        cfg = cls(
            arch=arch,
            n_vocab=n_vocab,
            n_embd=int(key("embedding_length")),
            n_layer=n_layer,
            n_nextn=n_nextn,
            context_length=int(key("context_length", 262144)),
            eps=float(key("attention.layer_norm_rms_epsilon", 1e-6)),
            n_head=_first_nonzero(key("attention.head_count")),
            n_kv_head=n_kv,
            head_dim=head_dim,
            rope_dims=int(key("rope.dimension_count", head_dim // 4)),
            rope_base=float(key("rope.freq_base", 10_000_000.0)),
            conv_kernel=int(key("ssm.conv_kernel")),
            ssm_d_state=int(key("ssm.state_size")),
            ssm_n_group=int(key("ssm.group_count")),
            ssm_dt_rank=int(key("ssm.time_step_rank")),
            recurrent_layers=layers,
            n_ff=int(n_ff),
            n_expert=int(key("expert_count", 0) or 0),
            n_expert_used=int(key("expert_used_count", 0) or 0),
            n_ff_exp=int(key("expert_feed_forward_length", 0) or 0),
            n_ff_shexp=int(key("expert_shared_feed_forward_length", 0) or 0),
            expert_weights_scale=float(key("expert_weights_scale", 0.0) or 0.0),
        )
        cfg._check()
        return cfg

    def _check(self) -> None:
        inner = self.ssm_dt_rank * self.ssm_d_state
        if self.ssm_dt_rank % self.ssm_n_group:
            raise ModelFormatError(
                f"ssm.time_step_rank {self.ssm_dt_rank} is not a multiple of ssm.group_count {self.ssm_n_group}"
            )
        if self.n_head % self.n_kv_head:
            raise ModelFormatError(f"head_count {self.n_head} is not a multiple of head_count_kv {self.n_kv_head}")
        if self.rope_dims > self.head_dim or self.rope_dims % 2:
            raise ModelFormatError(f"rope.dimension_count {self.rope_dims} invalid for head dim {self.head_dim}")
        if self.arch == "qwen35moe" and not (self.n_expert and self.n_expert_used):
            raise ModelFormatError("qwen35moe model without expert_count / expert_used_count")
        if self.arch == "qwen35" and not self.n_ff:
            raise ModelFormatError("qwen35 model without feed_forward_length")
        if inner <= 0:
            raise ModelFormatError("ssm dimensions must be positive")


def _first_nonzero(value: Any) -> int:
    """Per-layer arrays (head_count_kv, feed_forward_length) are uniform in Qwen3.5; take the value."""
    if isinstance(value, (list, tuple)):
        nonzero = [int(v) for v in value if int(v)]
        if not nonzero:
            raise ModelFormatError("per-layer hyper-parameter array has no non-zero entry")
        if len(set(nonzero)) > 1:
            raise ModelFormatError(f"non-uniform per-layer hyper-parameter {sorted(set(nonzero))} is not supported")
        return nonzero[0]
    return int(value)
