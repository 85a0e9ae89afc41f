"""The model touches its arrays only through backend ops: a backend whose arrays are opaque handles
(any conversion to numpy raises, as it would for device memory) runs the tiny dense and MoE models
end to end, snapshots and restores, and gives the numpy backend's logits exactly."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from engine import load_model
from kernels.numpy_backend import NumpyBackend

IDS = [248045, 846, 198, 9419, 11, 1879, 0, 35, 17, 5, 400, 12, 77, 1000, 2, 3, 4, 8, 9, 10]


class Handle:
    """Device-like array: shape, slicing, transposes and element writes, but no host conversion."""

    __slots__ = ("_a",)
    __array_ufunc__ = None  # numpy ufuncs refuse it

    def __init__(self, a: np.ndarray):
        self._a = a

    def __array__(self, *args, **kwargs):
        raise AssertionError("a backend array was converted to numpy outside the backend")

    def __array_function__(self, *args, **kwargs):
        raise AssertionError("a numpy function was called on a backend array outside the backend")

    @property
    def shape(self) -> tuple[int, ...]:
        return self._a.shape

    @property
    def nbytes(self) -> int:
        return self._a.nbytes

    def __len__(self) -> int:
        return len(self._a)

    def __getitem__(self, index) -> "Handle":
        return Handle(self._a[index])

    def __setitem__(self, index, value) -> None:
        self._a[index] = value._a if isinstance(value, Handle) else np.asarray(value)  # host -> device upload

    def transpose(self, *axes: int) -> "Handle":
        return Handle(self._a.transpose(*axes))


def _unwrap(x):
    if isinstance(x, Handle):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    return x


def _wrap(x):
    if isinstance(x, np.ndarray):
        return Handle(x)
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    return x


class OpaqueBackend:
    """Runs NumpyBackend's math, but everything it hands out is a Handle."""

    name = "opaque"

    def __init__(self):
        self._ref = NumpyBackend()
        self.supported_types = self._ref.supported_types

    def __getattr__(self, op):
        method = getattr(self._ref, op)
        if not callable(method):
            return method

        def run(*args):
            args = [self._callback(a) if callable(a) and not isinstance(a, Handle) else _unwrap(a) for a in args]
            return _wrap(method(*args))

        return run

    @staticmethod
    def _callback(fn):
        """The KV-buffer callback hands out the state's handles; the reference math needs their arrays."""
        return lambda *a: _unwrap(fn(*(_wrap(x) for x in a)))

    def to_host(self, a: Handle) -> np.ndarray:
        return np.array(a._a, copy=True)  # a device -> host copy

    def from_host(self, a: np.ndarray) -> Handle:
        return Handle(np.array(a, np.float32))


def test_backend_protocol_ops_are_all_used_through_the_wrapper():
    """Every op the model calls exists on the reference backend (so the wrapper really wraps it)."""
    from kernels.backend import Backend

    ops = [n for n, _ in inspect.getmembers(Backend, inspect.isfunction) if not n.startswith("_")]
    assert {"gated_delta_net", "gated_attention", "moe", "linear", "embed"} <= set(ops)
    for op in ops:
        assert callable(getattr(NumpyBackend(), op))


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_opaque_backend_matches_numpy(model_file, preset):
    path = model_file(preset)
    ref, opaque = load_model(path, backend="numpy"), load_model(path, backend=OpaqueBackend())
    with pytest.raises(AssertionError):
        np.asarray(opaque.new_state().conv[0])  # the handles really are opaque

    ref_state, state = ref.new_state(), opaque.new_state()
    np.testing.assert_array_equal(opaque.forward(IDS[:12], state), ref.forward(IDS[:12], ref_state))
    ckpt = state.snapshot()  # recurrent state and KV cross to the host through the backend
    np.testing.assert_array_equal(opaque.forward(IDS[12:], state), ref.forward(IDS[12:], ref_state))

    restored = opaque.restore(ckpt)
    replay = ref.restore(ckpt)
    for t in IDS[12:]:  # decode steps after a restore
        np.testing.assert_array_equal(
            opaque.forward([t], restored, last_only=True), ref.forward([t], replay, last_only=True)
        )
