"""Backend choice: "auto" falls back to numpy with one clear warning when the compiled part is
missing; asking for "cpu" then is an error that says how to fix it."""

from __future__ import annotations

import logging
import sys

import pytest

from kernels import make_backend


@pytest.fixture
def no_compiled_kernels(monkeypatch):
    monkeypatch.setitem(sys.modules, "kernels.cpu_backend", None)  # import raises ImportError


def test_auto_falls_back_to_numpy_with_one_warning(no_compiled_kernels, caplog):
    with caplog.at_level(logging.WARNING, logger="kernels"):
        backend = make_backend("auto")
    assert backend.name == "numpy"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "numpy backend" in warnings[0].getMessage()


def test_cpu_without_compiled_kernels_is_a_clear_error(no_compiled_kernels):
    with pytest.raises(ValueError, match="compiled CPU backend is not available.*--backend numpy"):
        make_backend("cpu")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        make_backend("gpu")


def test_auto_is_the_compiled_backend_when_built():
    pytest.importorskip("kernels._cpu", reason="the compiled CPU extension is not built")
    from kernels.cpu_backend import physical_cores

    backend = make_backend("auto")
    assert backend.name == "cpu" and backend.threads == physical_cores()
