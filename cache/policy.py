"""Where to take checkpoints while a prompt is processed.

Recurrent state is only reusable at the exact position it was taken, so positions are chosen
where a later prompt of the same conversation is likely to diverge or to continue:
- before every message (`<|im_start|>`): end of system+tools, start of each user/tool turn,
  start of the assistant turn being generated;
- every `interval` tokens inside long messages (a divergence mid-message loses at most that);
- `tail` tokens before the prompt end (a client re-sending or editing its last message), unless
  a checkpoint lies within 2 * `tail` of the end already (usually the one before the generation
  prompt's `<|im_start|>`): each checkpoint splits prompt processing into one more model call.
The end of generation is checkpointed by the runner itself.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

DEFAULT_INTERVAL = 2048
DEFAULT_TAIL = 4


def checkpoint_positions(
    prompt_ids: Sequence[int],
    boundary_ids: Collection[int],
    interval: int = DEFAULT_INTERVAL,
    tail: int = DEFAULT_TAIL,
) -> list[int]:
    """Sorted positions p (0 < p < len) after which the state should be stored."""
    if interval < 1:
        raise ValueError("checkpoint interval must be positive")
    n = len(prompt_ids)
    boundaries = [i for i, t in enumerate(prompt_ids) if t in boundary_ids and i > 0]
    chosen = set(boundaries)
    edges = [0, *boundaries, n]
    for start, end in zip(edges, edges[1:]):
        chosen.update(range(start + interval, end, interval))
    if n - tail > 0 and not any(n - 2 * tail <= p < n for p in chosen):
        chosen.add(n - tail)
    return sorted(p for p in chosen if 0 < p < n)
