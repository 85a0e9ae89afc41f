"""Human-readable summary of a GGUF model without loading its weights."""

from __future__ import annotations

from collections import Counter
from math import prod
from pathlib import Path

from engine.gguf_loader import GGUFFile


def _mib(n: int) -> str:
    return f"{n:,} B ({n / 2**20:.2f} MiB)"


def describe(path: str | Path) -> str:
    f = GGUFFile(path)
    c = f.model_config()
    kinds = "".join("R" if r else "A" for r in c.recurrent_layers)
    infos = f.tensor_infos()
    lines = [
        f"file: {f.path} ({_mib(f.path.stat().st_size)})",
        f"architecture: {c.arch}  name: {f.get('general.name', '?')}",
        f"vocab: {c.n_vocab}  n_embd: {c.n_embd}  context: {c.context_length}  rms eps: {c.eps:g}",
        f"layers: {c.n_layer} trunk + {c.n_nextn} MTP  "
        f"({len(c.recurrent_layer_ids)} Gated DeltaNet, {len(c.attention_layer_ids)} full attention)",
        f"layer kinds (R = Gated DeltaNet, A = attention): {kinds}",
        f"attention: heads {c.n_head}, kv heads {c.n_kv_head}, head dim {c.head_dim}, "
        f"rope dims {c.rope_dims}, rope base {c.rope_base:g}",
        f"delta net: K heads {c.ssm_n_group}, V heads {c.ssm_dt_rank}, head dim {c.ssm_d_state}, "
        f"conv kernel {c.conv_kernel}",
        (
            f"moe: {c.n_expert} experts, top-{c.n_expert_used}, expert ff {c.n_ff_exp}, shared ff {c.n_ff_shexp}"
            if c.is_moe
            else f"ffn: {c.n_ff}"
        ),
        f"recurrent state per sequence: {_mib(c.recurrent_state_bytes)}",
        f"attention KV per token (f32): {c.kv_bytes_per_token:,} B",
        f"weight data: {_mib(sum(i.nbytes for i in infos))} as stored (memory mapped by the cpu backend), "
        f"{_mib(4 * sum(prod(i.ne) for i in infos))} as float32 (numpy backend)",
        "tensor types: " + ", ".join(f"{t} x{n}" for t, n in sorted(Counter(i.qtype for i in infos).items())),
        "",
        f"{'tensor':<40} {'type':<8} shape (ne)",
    ]
    lines += [f"{i.name:<40} {i.qtype:<8} {list(i.ne)}" for i in infos]
    return "\n".join(lines)
