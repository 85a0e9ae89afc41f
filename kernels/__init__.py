"""Compute kernels behind the `kernels.backend.Backend` interface: the numpy reference and the
compiled CPU backend (C extension, quantized weights as stored)."""

from __future__ import annotations

import logging

from kernels.backend import Backend

log = logging.getLogger("kernels")
BACKENDS = ("auto", "cpu", "numpy")


def make_backend(name: str = "auto", threads: int | None = None) -> Backend:
    """The named backend; "auto" is the compiled CPU backend, or the numpy one (with one warning)
    when the compiled part could not be built or loaded."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name != "numpy":
        try:
            from kernels.cpu_backend import CpuBackend
        except ImportError as e:
            if name == "cpu":
                raise ValueError(f"the compiled CPU backend is not available ({e}); reinstall with "
                                 "`pip install -e .` (needs a C compiler) or use --backend numpy") from None
            log.warning("compiled CPU kernels unavailable (%s): running on the slow numpy backend", e)
        else:
            return CpuBackend(threads)
    from kernels.numpy_backend import NumpyBackend

    return NumpyBackend()
