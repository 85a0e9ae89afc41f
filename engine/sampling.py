"""Next-token sampling: a pure function of logits, parameters and a seeded numpy Generator.

The chain follows llama.cpp/vLLM: penalties, grammar mask, then greedy (temperature 0) or
temperature, top-k, top-p, min-p and a draw. Everything avoids sorting the whole vocabulary
(248k entries for Qwen3.5): top-k uses argpartition, top-p sorts only a growing head of the
distribution, min-p is a threshold against the maximum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# OpenAI documents presence/frequency penalties in [-2, 2].
_PENALTY_LIMIT = 2.0
# Sanity bounds: far beyond any useful setting, and they keep every penalised or scaled logit
# finite in float32 (model logits are at most a few hundred in magnitude).
MAX_TEMPERATURE = 100.0
REPETITION_PENALTY_RANGE = (0.01, 100.0)
# The smallest positive float32: a temperature below it still divides, instead of 0/0 = NaN.
_TINIEST_TEMPERATURE = np.finfo(np.float32).smallest_subnormal
_REAL_FIELDS = (
    "temperature",
    "top_p",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)
# Block size of the two-level CDF inversion in _draw.
_DRAW_BLOCK = 1024
# Heads of the distribution tried in turn for top-p; real models' top-p sets fit the first.
_TOP_P_HEADS = (1024, 16384)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 => greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range field."""
        for name in _REAL_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be in [0, {MAX_TEMPERATURE:g}] (0 = greedy), got {self.temperature}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            if abs(getattr(self, name)) > _PENALTY_LIMIT:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        low, high = REPETITION_PENALTY_RANGE
        if not low <= self.repetition_penalty <= high:
            raise ValueError(f"repetition_penalty must be in [{low:g}, {high:g}] (1 = off), got {self.repetition_penalty}")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {self.seed!r}")


@dataclass(frozen=True)
class TokenLogprob:
    """OpenAI-style logprob of a chosen token plus the `top_n` most likely alternatives."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


class Sampler:
    """Draws tokens for one request; owns the Generator so a fixed seed replays the same tokens."""

    def __init__(self, params: SamplingParams) -> None:
        params.validate()
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray, history: Sequence[int] = (), mask: np.ndarray | None = None) -> int:
        """Pick the next token. `history` is what the penalties count (the generated tokens);
        `mask` (bool [vocab]) marks the allowed tokens."""
        scores = apply_penalties(_as_logits(logits), history, self.params)
        allowed = None
        if mask is not None:
            # Sampling among the allowed tokens only is faster than -inf'ing the rest: grammar
            # masks are often small, and argpartition is slow on many equal values.
            allowed = allowed_ids(mask, len(scores))
            scores = scores[allowed]
        pick = self._pick(scores)
        return pick if allowed is None else int(allowed[pick])

    def _pick(self, scores: np.ndarray) -> int:
        if self.params.temperature == 0:
            best = int(np.argmax(scores))
            _require_finite_max(scores[best])
            return best
        ids, weights = _kept_weights(scores, self.params)
        pick = _draw(weights, self._rng.random())
        return pick if ids is None else int(ids[pick])

    @staticmethod
    def logprobs(logits: np.ndarray, token_id: int, top_n: int = 0) -> TokenLogprob:
        """Log-softmax of the raw model logits (before penalties, mask and temperature).

        This is what vLLM reports by default: the model's own distribution, independent of the
        sampling settings, so clients can compare logprobs across requests.
        """
        values = _as_logits(logits).astype(np.float64)
        if not 0 <= token_id < len(values):
            raise ValueError(f"token id {token_id} is outside the vocabulary of {len(values)}")
        if not _is_int(top_n) or not 0 <= top_n <= len(values):
            raise ValueError(f"top_n must be an integer in [0, {len(values)}], got {top_n!r}")
        peak = values.max()
        _require_finite_max(peak)
        log_z = peak + math.log(float(np.exp(values - peak).sum()))
        top = ()
        if top_n:
            head = np.argpartition(values, -top_n)[-top_n:]
            head = head[np.argsort(-values[head], kind="stable")]
            top = tuple((int(i), float(values[i] - log_z)) for i in head)
        return TokenLogprob(int(token_id), float(values[token_id] - log_z), top)


def apply_penalties(logits: np.ndarray, history: Sequence[int], params: SamplingParams) -> np.ndarray:
    """Repetition penalty as HF/llama.cpp (divide positive, multiply negative logits), then
    OpenAI presence/frequency: logit -= count * frequency + (count > 0) * presence.

    Returns `logits` itself when nothing applies, otherwise a penalised copy.
    """
    neutral = (
        params.repetition_penalty == 1 and params.presence_penalty == 0 and params.frequency_penalty == 0
    )
    if neutral or len(history) == 0:
        return logits
    ids, counts = np.unique(np.asarray(history, dtype=np.int64), return_counts=True)
    if ids[0] < 0 or ids[-1] >= len(logits):
        raise ValueError(f"history holds token ids outside the vocabulary of {len(logits)}")
    penalised = logits.copy()
    values = penalised[ids]
    if params.repetition_penalty != 1:
        values = np.where(values > 0, values / params.repetition_penalty, values * params.repetition_penalty)
    values = values - counts * params.frequency_penalty - params.presence_penalty
    penalised[ids] = values
    return penalised


def allowed_ids(mask: np.ndarray, vocab_size: int) -> np.ndarray:
    """Ids of the tokens a bool mask allows; ValueError for a malformed or all-False mask."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != (vocab_size,):
        raise ValueError(f"mask must be a bool array of shape ({vocab_size},), got {mask.dtype} {mask.shape}")
    ids = np.flatnonzero(mask)
    if len(ids) == 0:
        raise ValueError("mask allows no token")
    return ids


def truncated_distribution(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and their probabilities (float64, summing to 1) after temperature, top-k, top-p
    and min-p. top-p keeps the smallest most-likely set whose mass within the top-k set reaches
    top_p; min-p keeps tokens with p >= min_p * p_max. Masked tokens (-inf) are never kept.
    """
    ids, weights = _kept_weights(logits, params)
    if ids is None:
        ids = np.arange(len(weights))
    positive = weights > 0
    ids, probs = ids[positive], weights[positive].astype(np.float64)
    return ids, probs / probs.sum()


def _kept_weights(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray | None, np.ndarray]:
    """Kept token ids (None: every token) and their float32 weights, the best token's being 1.
    Masked tokens may be listed, with weight 0."""
    if params.temperature <= 0:
        raise ValueError("sampling a distribution needs temperature > 0 (0 means greedy)")
    # float32 keeps the passes over the whole vocabulary fast (float64 exp is ~20x slower); a
    # token whose weight underflows is over 87 nats below the best one and could not be drawn.
    # The peak is subtracted before scaling, so the scaled values are <= 0 and the best one is
    # exactly 0: a tiny temperature overflows the others to -inf (weight 0), never the peak to
    # +inf, and tends to greedy as it should.
    peak = logits.max()
    _require_finite_max(float(peak))
    weights = logits - peak
    with np.errstate(over="ignore"):
        np.divide(weights, max(np.float32(params.temperature), _TINIEST_TEMPERATURE), out=weights)
    np.exp(weights, out=weights)
    ids = None
    if 0 < params.top_k < len(weights):
        ids = np.argpartition(weights, -params.top_k)[-params.top_k :]
    kept = weights if ids is None else weights[ids]
    target_mass = params.top_p * float(kept.sum(dtype=np.float64))
    # min-p's set is a prefix of the descending order, as is top-p's, so their intersection (the
    # shorter prefix) does not depend on which is cut first; cutting min-p first is cheaper.
    if params.min_p > 0:
        ids, kept = _subset(ids, kept, np.flatnonzero(kept >= params.min_p))
    if params.top_p < 1:
        ids, kept = _subset(ids, kept, _top_p_keep(kept, target_mass))
    return ids, kept


def _draw(weights: np.ndarray, uniform: float) -> int:
    """Index i with probability weights[i] / sum, for `uniform` in [0, 1). Inverts the CDF in two
    levels (block sums, then one block) so no vocabulary-sized float64 cumsum is allocated."""
    full = len(weights) - len(weights) % _DRAW_BLOCK
    block_sums = weights[:full].reshape(-1, _DRAW_BLOCK).sum(axis=1, dtype=np.float64)
    block_sums = np.append(block_sums, weights[full:].sum(dtype=np.float64))
    block, offset = _invert_cdf(np.cumsum(block_sums), uniform)
    start = block * _DRAW_BLOCK
    inner, _ = _invert_cdf(np.cumsum(weights[start : start + _DRAW_BLOCK].astype(np.float64)), offset)
    return start + inner


def _invert_cdf(cumulative: np.ndarray, fraction: float) -> tuple[int, float]:
    """The index whose interval holds fraction * total, and that point's offset into the interval
    relative to the interval's width (in [0, 1)). The point stays strictly below the total, so
    zero-width entries (weight 0) are never returned."""
    total = cumulative[-1]
    point = min(fraction * total, np.nextafter(total, 0))
    index = int(np.searchsorted(cumulative, point, side="right"))
    low = cumulative[index - 1] if index else 0.0
    return index, (point - low) / (cumulative[index] - low)


def _subset(ids: np.ndarray | None, kept: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (keep if ids is None else ids[keep]), kept[keep]


def _top_p_keep(weights: np.ndarray, target_mass: float) -> np.ndarray:
    """Indices of the most likely `weights` up to and including the one where their sum reaches
    `target_mass`. Settled exactly on a sorted head of the distribution when the head holds that
    mass (always, for real models); a nearly flat distribution is cut on a sorted copy of the
    values, keeping every weight at or above the crossing one."""
    for size in _TOP_P_HEADS:
        if size >= len(weights):
            return _descending_prefix(np.arange(len(weights)), weights, target_mass)
        head = np.argpartition(weights, -size)[-size:]
        if weights[head].sum(dtype=np.float64) >= target_mass:
            return _descending_prefix(head, weights, target_mass)
    descending = np.sort(weights)[::-1].astype(np.float64)
    crossing = min(int(np.searchsorted(np.cumsum(descending), target_mass)), len(descending) - 1)
    return np.flatnonzero(weights >= descending[crossing])


def _descending_prefix(candidates: np.ndarray, weights: np.ndarray, target_mass: float) -> np.ndarray:
    candidate_weights = weights[candidates].astype(np.float64)
    order = np.argsort(-candidate_weights, kind="stable")
    crossing = int(np.searchsorted(np.cumsum(candidate_weights[order]), target_mass))
    return candidates[order[: crossing + 1]]


def _as_logits(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 1 or len(logits) == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {logits.shape}")
    return logits


def _require_finite_max(value: float) -> None:
    """Check the maximum logit: NaN anywhere propagates to it, and -inf means nothing is allowed."""
    if math.isnan(value):
        raise ValueError("logits contain NaN")
    if value == -math.inf:
        raise ValueError("every allowed token has logit -inf")
    if value == math.inf:
        raise ValueError("logits contain +inf")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
