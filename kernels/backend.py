"""The compute interface the model code is written against.

The model (engine/qwen35.py) only calls these operations; a backend decides how weights are held
and how each op runs. `kernels.numpy_backend.NumpyBackend` is the readable reference every faster
backend (e.g. a CUDA one) is tested against.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str

    def weight(self, w: np.ndarray) -> object:
        """Take a float32 weight (numpy order, rows = outputs) into the backend's own form."""

    def linear(self, x: np.ndarray, w: object) -> np.ndarray:
        """x [T, in] -> x @ w.T [T, out]."""

    def rms_norm(self, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        """RMS-normalise over the last axis and scale by w (w broadcast over leading axes)."""

    def causal_conv(self, u: np.ndarray, state: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Depthwise causal conv + SiLU. u [T, C], state [K-1, C] (previous raw inputs), w [C, K].

        Returns (SiLU(conv) [T, C], new state = last K-1 raw inputs)."""

    def delta_rule(
        self, q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray, beta: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Gated delta rule. q, k [T, H, dk] (normalised, q scaled), v [T, H, dv], g (log decay) and
        beta [T, H], state S [H, dk, dv]. Returns (o [T, H, dv], new state)."""

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Causal GQA softmax attention for the last T positions. q [T, H, d]; k, v [L, Hkv, d] hold
        all L >= T positions so far (query t sits at position L - T + t). Returns [T, H, d]."""
