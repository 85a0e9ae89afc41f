"""Shared fixtures: synthetic model files written once per test session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
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


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """Factory: read_only(directory) makes the directory and its files unwritable, for root too
    (chattr +i); undone after the test. Skips where the file system does not allow it."""
    made: list[Path] = []

    def make(directory: Path) -> None:
        paths = [directory, *directory.iterdir()]
        made.extend(paths)
        for path in paths:
            path.chmod(path.stat().st_mode & ~0o222)
        if os.geteuid() == 0 and subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode:
            pytest.skip("chattr +i is not available to make a directory read-only for root")
        try:
            (directory / "probe").touch()
        except OSError:
            return
        pytest.skip("cannot make a directory read-only here")

    yield make
    if made and os.geteuid() == 0:
        subprocess.run(["chattr", "-i", *map(str, made)], capture_output=True)
    for path in made:
        path.chmod(path.stat().st_mode | 0o200)
