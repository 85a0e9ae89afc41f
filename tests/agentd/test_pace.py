"""agentd/pace.py: prompt chunks beside running streams keep a step within STALL_FACTOR of a decode step."""

from __future__ import annotations

from agentd.pace import FIRST_CHUNK, STALL_FACTOR, StepPace


def test_full_chunks_without_streams_and_a_small_first_one_beside_them():
    pace = StepPace()
    assert pace.chunk_budget(0, 256) == 256
    assert pace.chunk_budget(3, 256) == FIRST_CHUNK  # costs not measured yet


def test_chunk_beside_streams_fits_the_stall_bound():
    pace = StepPace()
    pace.record(0.1, num_decoding=4, num_prompt_tokens=0)  # decode-only step: 100 ms
    pace.record(0.1 + 16 * 0.01, num_decoding=4, num_prompt_tokens=16)  # 10 ms per prompt token
    chunk = pace.chunk_budget(4, 256)
    assert chunk == 15  # (2.5 - 1) * 100 ms / 10 ms
    assert 0.1 + chunk * 0.01 <= STALL_FACTOR * 0.1 + 1e-9
    assert pace.chunk_budget(4, 8) == 8  # never above the configured chunk
    pace.record(10.0, num_decoding=4, num_prompt_tokens=1)  # a very slow step: still one token per step
    assert pace.chunk_budget(4, 256) >= 1
