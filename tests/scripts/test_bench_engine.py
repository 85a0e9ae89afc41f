"""bench_engine times exactly the tokens it reports: `prompt_tokens` in the prompt pass and
`gen_tokens` single-token steps, also when the prompt is shorter than the generation run."""

from __future__ import annotations

import pytest

from scripts import bench_engine


@pytest.mark.parametrize(("prompt_tokens", "gen_tokens"), [(16, 8), (40, 32)])
def test_measure_times_the_requested_tokens(tiny_path, monkeypatch, prompt_tokens, gen_tokens):
    timed: dict[str, list[int]] = {}
    real_time = bench_engine._time

    def spy(fn, ids):
        timed[fn.__name__] = len(ids)
        return real_time(fn, ids)

    monkeypatch.setattr(bench_engine, "_time", spy)
    figures = bench_engine.measure("numpy", tiny_path, 1, prompt_tokens, gen_tokens)
    assert timed == {"prompt": prompt_tokens, "decode": gen_tokens}
    assert figures["gen_tps"] > 0 and figures["prompt_tps"] > 0
