"""The session cache end to end: reuse is reported, and outputs equal those computed from scratch
(RAM hit, SQLite hit after a restart, after evictions, mid-message divergence, corrupt or foreign
entries)."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agentd.loader import prepare
from agentd.prefix_cache import PrefixCache
from cache.session import DB_FILENAME
from tests.agentd.conftest import LiveServer

SYSTEM = "You are a careful coding agent. " * 20
LONG_FILE = "\n".join(f"def function_{i}(x):\n    return x * {i} + {i * 7 % 13}" for i in range(60))


def conversation(turns: int, edit_at: int | None = None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for t in range(turns):
        body = f"Turn {t}: please review this file.\n{LONG_FILE}"
        if edit_at is not None and t == turns - 1:
            body = body[:edit_at] + "CHANGED" + body[edit_at:]
        messages.append({"role": "user", "content": body})
        if t < turns - 1:
            messages.append({"role": "assistant", "content": f"Reviewed part {t}. Looks fine."})
    return messages


def ask(server: LiveServer, messages: list[dict[str, Any]]) -> tuple[list[str], np.ndarray, int, int]:
    """Greedy reply tokens, their logprobs, prompt tokens and cached tokens."""
    r = server.openai().chat.completions.create(
        model="whatever", messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    content = r.choices[0].logprobs.content
    tokens = [c.token for c in content]
    logprobs = np.array([[t.logprob for t in c.top_logprobs] for c in content])
    return tokens, logprobs, r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens


@pytest.fixture
def servers(serve_loader) -> Any:
    """Factory: servers(model, cache_dir=None (no cache), ram_mb, disk_mb, interval) -> LiveServer."""

    def start(model: Any, cache_dir: Path | None = None, ram_mb: int = 256, disk_mb: int = 256,
              interval: int = 2048) -> LiveServer:
        def load():
            loaded = prepare(model, name="agentd-tiny", n_ctx=8192)
            if cache_dir is None:
                return loaded
            cache = PrefixCache.open(model, ram_mb, str(cache_dir), disk_mb, interval)
            return dataclasses.replace(loaded, cache=cache)

        return serve_loader(load)

    return start


@pytest.fixture(params=["dense", "moe"])
def model(request, tiny_model, tiny_moe_model):
    return tiny_model if request.param == "dense" else tiny_moe_model


def assert_same_reply(a, b) -> None:
    assert a[0] == b[0], "greedy tokens differ from the scratch computation"
    np.testing.assert_allclose(a[1], b[1], atol=1e-4)


def test_second_turn_reuses_and_matches_scratch(servers, model, tmp_path):
    scratch = servers(model)
    cached = servers(model, tmp_path / "c")
    first = ask(cached, conversation(1))
    assert first[3] == 0
    assert_same_reply(first, ask(scratch, conversation(1)))
    second = ask(cached, conversation(2))
    assert second[3] >= first[2] - 8, "turn 2 should resume within a few tokens of the end of turn 1's prompt"
    assert_same_reply(second, ask(scratch, conversation(2)))
    again = ask(cached, conversation(2))  # identical prompt: the checkpoint near its end
    assert again[3] >= second[2] - 8
    assert_same_reply(again, second)
    info = cached.request("GET", "/v1/cache")[2]
    assert info["enabled"] and info["hits_ram"] >= 2 and info["entries"]


def test_restart_resumes_from_sqlite(servers, tiny_model, tmp_path):
    cache_dir = tmp_path / "c"
    first = servers(tiny_model, cache_dir)
    ask(first, conversation(1))
    first.close()  # flushes the background writer
    restarted = servers(tiny_model, cache_dir)
    reply = ask(restarted, conversation(2))
    assert reply[3] > 0
    assert restarted.request("GET", "/v1/cache")[2]["hits_disk"] == 1
    assert_same_reply(reply, ask(servers(tiny_model), conversation(2)))


def test_divergence_mid_message_resumes_from_the_checkpoint_before_it(servers, tiny_model, tmp_path):
    cached = servers(tiny_model, tmp_path / "c", interval=64)
    base = ask(cached, conversation(2))
    edit_at = 900
    edited = conversation(2, edit_at=edit_at)
    body = {"messages": edited, "chat_template_kwargs": {"enable_thinking": False}}
    prompt = cached.request("POST", "/apply-template", body)[2]  # asked before the edit is cached
    reply = ask(cached, edited)
    first_diff = prompt["cache"]["num_matched_tokens"]
    assert 0 < reply[3] <= first_diff < base[2]
    assert first_diff - reply[3] <= 64, "a checkpoint every 64 tokens should be close before the edit"
    assert prompt["cache"]["miss_reason"] and str(first_diff) in prompt["cache"]["miss_reason"]
    assert prompt["num_tokens"] == len(tiny_model.tokenizer.encode(prompt["prompt"])) == reply[2]
    assert_same_reply(reply, ask(servers(tiny_model), edited))


def test_tiny_ram_budget_evicts_but_stays_exact(servers, tiny_model, tmp_path):
    budget_mb = 1
    cached = servers(tiny_model, tmp_path, ram_mb=budget_mb, disk_mb=0)  # RAM tier only
    scratch = servers(tiny_model)
    for turns in (1, 2, 3, 2):
        assert_same_reply(ask(cached, conversation(turns)), ask(scratch, conversation(turns)))
        ram = cached.request("GET", "/v1/cache")[2]["ram"]
        assert ram["bytes"] <= budget_mb << 20


def _corrupt_blobs(db: Path) -> int:
    con = sqlite3.connect(db)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    changed = 0
    for table in tables:
        cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})") if r[2].upper() == "BLOB"]
        for col in cols:
            rows = con.execute(f"SELECT rowid, {col} FROM {table}").fetchall()
            for rowid, blob in rows:
                if blob and len(blob) > 64:
                    b = bytearray(blob)
                    b[len(b) // 2] ^= 0xFF
                    con.execute(f"UPDATE {table} SET {col} = ? WHERE rowid = ?", (bytes(b), rowid))
                    changed += 1
    con.commit()
    con.close()
    return changed


def test_corrupt_or_foreign_entries_are_misses(servers, tiny_model, tiny_moe_model, tmp_path):
    cache_dir = tmp_path / "c"
    first = servers(tiny_model, cache_dir)
    ask(first, conversation(1))
    first.close()
    assert _corrupt_blobs(cache_dir / DB_FILENAME) > 0
    restarted = servers(tiny_model, cache_dir)
    reply = ask(restarted, conversation(2))
    assert reply[3] == 0
    assert_same_reply(reply, ask(servers(tiny_model), conversation(2)))
    restarted.close()
    other = servers(tiny_moe_model, cache_dir)  # a different model file on the same cache
    reply = ask(other, conversation(2))
    assert reply[3] == 0
    assert_same_reply(reply, ask(servers(tiny_moe_model), conversation(2)))
