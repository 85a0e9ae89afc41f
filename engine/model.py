"""`Model`: the public engine object (weights + tokenizer + chat template + state factory)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from engine.chat_template import DEFAULT_TEMPLATE, ChatTemplate
from engine.config import ModelConfig
from engine.gguf_loader import GGUFFile
from engine.qwen35 import Qwen35, load_weights
from engine.state import Checkpoint, State
from engine.tokenizer import Tokenizer
from kernels import make_backend
from kernels.backend import Backend


class Model:
    def __init__(self, path: Path, config: ModelConfig, net: Qwen35, tokenizer: Tokenizer,
                 chat_template: ChatTemplate, fingerprint: str):
        self.path = path
        self.config = config
        self.net = net
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.fingerprint = fingerprint
        self.backend: Backend = net.be

    def new_state(self) -> State:
        return State(self.config, self.fingerprint, self.backend)

    def restore(self, checkpoint: Checkpoint) -> State:
        """A fresh mutable state continuing exactly where `checkpoint` was taken."""
        return State.from_checkpoint(self.config, self.fingerprint, self.backend, checkpoint)

    def forward(self, token_ids: Sequence[int], state: State, last_only: bool = False) -> np.ndarray:
        """Run `token_ids` after `state`; float32 logits (len, n_vocab) or (1, n_vocab) with last_only."""
        ids = self._checked_ids(token_ids, [state])
        return self.net.forward(ids, [state], [len(ids)], last_only=last_only)

    def forward_batch(self, token_ids: Sequence[int], states: Sequence[State]) -> np.ndarray:
        """One new token per sequence, each after its own state, in one pass over the weights;
        float32 logits [len(states), n_vocab]. With a batch-invariant backend (cpu) row i is
        bitwise identical to `forward([token_ids[i]], states[i], last_only=True)`."""
        return self.forward_segments([[t] for t in token_ids], states)

    def forward_segments(self, segments: Sequence[Sequence[int]], states: Sequence[State]) -> np.ndarray:
        """Several tokens per sequence (a prompt chunk beside decode steps) in one pass; float32
        logits of each segment's last token [len(states), n_vocab], same exactness as forward_batch."""
        if len(segments) != len(states) or not states:
            raise ValueError("forward_segments needs one non-empty token list per state")
        if len({id(s) for s in states}) != len(states):
            raise ValueError("a state appears twice in one batch")
        lengths = [len(seg) for seg in segments]
        if min(lengths) == 0:
            raise ValueError("forward needs at least one token per sequence")
        ids = self._checked_ids([t for seg in segments for t in seg], states)
        return self.net.forward(ids, states, lengths, last_only=True)

    def _checked_ids(self, token_ids: Sequence[int], states: Sequence[State]) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("forward needs at least one token")
        if ids.min() < 0 or ids.max() >= self.config.n_vocab:
            raise ValueError(f"token id out of range [0, {self.config.n_vocab})")
        if any(state.fingerprint != self.fingerprint for state in states):
            raise ValueError("state belongs to a different model")
        return ids


def load_model(path: str | Path, progress: bool = False, backend: Backend | str = "auto",
               threads: int | None = None) -> Model:
    """Load a qwen35 / qwen35moe GGUF file on `backend` (a Backend, or "auto" / "cpu" / "numpy" with
    `threads`). Raises engine.config.ModelFormatError naming any problem."""
    f = GGUFFile(path)
    config = f.model_config()
    vocab = f.vocab()
    be = make_backend(backend, threads) if isinstance(backend, str) else backend
    bar = None
    if progress:
        from tqdm import tqdm

        # left in place once complete: its closing newline keeps the next log line off the bar
        bar = tqdm(total=config.n_layer, desc=f"loading {Path(path).name}", unit="layer")
    try:
        weights = load_weights(f, config, be, bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    template = f.get("tokenizer.chat_template", None) or DEFAULT_TEMPLATE
    return Model(Path(path), config, Qwen35(config, weights, be), Tokenizer(vocab),
                 ChatTemplate(template), f.fingerprint(config))
