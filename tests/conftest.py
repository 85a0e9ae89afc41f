"""Shared fixtures: synthetic model files written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

# shared assertion helpers outside test_*.py files still get pytest's detailed failure output
pytest.register_assert_rewrite("tests.tools.streaming", "tests.engine.grammar_helpers")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def _model_file(model_dir: Path, preset: str, qtype: str = "f32", **kw) -> Path:
    from engine.synthetic import make_model

    suffix = "".join(f"-{k}{v}" for k, v in sorted(kw.items()))
    path = model_dir / f"{preset}-{qtype}{suffix}.gguf"
    if not path.exists():
        make_model(path, preset, seed=0, qtype_mix=qtype, **kw)
    return path


@pytest.fixture(scope="session")
def model_file(model_dir):
    """Factory: model_file(preset, qtype="f32", **make_model kwargs) -> path (cached per session)."""
    return lambda preset, qtype="f32", **kw: _model_file(model_dir, preset, qtype, **kw)


@pytest.fixture(scope="session")
def tiny_path(model_file) -> Path:
    return model_file("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    from engine import load_model

    return load_model(tiny_path)


@pytest.fixture(scope="session")
def tiny_moe_model(model_file):
    from engine import load_model

    return load_model(model_file("tiny-moe"))
