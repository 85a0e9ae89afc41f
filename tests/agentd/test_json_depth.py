"""agentd/json_depth.py: the nesting measured on the bytes equals the depth of the decoded value,
whatever quotes, backslashes and brackets the strings hold."""

from __future__ import annotations

import json
import random

from agentd import json_depth
from agentd.json_depth import nests_deeper_than

TRICKY = ["x", "\\", '"', "[[", "}", '\\"[', "\\\\", '\\\\"]', "{\"a\": [", "\u2028", ""]


def depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def random_value(rng: random.Random, levels: int) -> object:
    roll = rng.random()
    if levels and roll < 0.35:
        return [random_value(rng, levels - 1) for _ in range(rng.randrange(4))]
    if levels and roll < 0.7:
        return {rng.choice(TRICKY): random_value(rng, levels - 1) for _ in range(rng.randrange(4))}
    return rng.choice([*TRICKY, 1, None, 2.5])


def test_the_depth_of_random_json_is_measured_exactly():
    rng = random.Random(7)
    for _ in range(2000):
        value = [random_value(rng, rng.randrange(1, 12))]
        body = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        levels = depth(value)
        for limit in {0, levels - 1, levels, levels + 1} - {-1}:
            assert nests_deeper_than(body, limit) == (levels > limit), (body, limit)


def test_long_bodies_are_measured_across_chunks(monkeypatch):
    monkeypatch.setattr(json_depth, "_CHUNK", 7)  # strings and runs of brackets straddle the chunks
    body = json.dumps({"s": "[[[\\\"" * 50, "x": [[[[[[["a]]]"]]]]]]], "t": "{" * 99}).encode()
    assert nests_deeper_than(body, 7) and not nests_deeper_than(body, 8)
    deep = b"[" * 5000 + b"]" * 5000
    assert nests_deeper_than(deep, 4999) and not nests_deeper_than(deep, 5000)
