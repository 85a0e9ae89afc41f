"""How many prompt tokens a step may add beside running streams without stalling them.

A step that carries a prompt chunk as well as decode rows takes longer than a decode-only step;
every running stream waits for it. The runner sizes the chunk from online estimates of a
decode-only step and of the extra time per prompt token, so such a step takes at most
`STALL_FACTOR` times a decode-only step: a stream's inter-token time stays within that factor of
its usual one while a long prompt is processed beside it.
"""

from __future__ import annotations

STALL_FACTOR = 2.5  # worst step with a prompt chunk / decode-only step, while streams run
FIRST_CHUNK = 16  # prompt tokens beside streams before the step costs are known
SMOOTHING = 0.3  # weight of the newest measurement in the running estimates


class StepPace:
    def __init__(self) -> None:
        self.decode_seconds: float | None = None  # a decode-only step
        self.prompt_token_seconds: float | None = None  # what one prompt token adds to a step

    def record(self, seconds: float, num_decoding: int, num_prompt_tokens: int) -> None:
        if num_prompt_tokens == 0:
            self.decode_seconds = _smoothed(self.decode_seconds, seconds)
            return
        # a prompt-only step charges the weight read to its tokens too: an overestimate, on the safe side
        base = (self.decode_seconds or 0.0) if num_decoding else 0.0
        self.prompt_token_seconds = _smoothed(self.prompt_token_seconds, max(seconds - base, 0.0) / num_prompt_tokens)

    def chunk_budget(self, num_decoding: int, limit: int) -> int:
        """Prompt tokens for the next step (at least one, so every prompt progresses)."""
        if num_decoding == 0:
            return limit
        if self.decode_seconds is None or not self.prompt_token_seconds:
            return min(limit, FIRST_CHUNK)
        tokens = int((STALL_FACTOR - 1.0) * self.decode_seconds / self.prompt_token_seconds)
        return max(1, min(limit, tokens))


def _smoothed(old: float | None, new: float) -> float:
    """Costs rise at once and fall slowly: one slow step must not be followed by an oversized chunk."""
    return new if old is None or new > old else old + SMOOTHING * (new - old)
