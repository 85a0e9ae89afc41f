"""The agent-session traces replayed by scripts/bench_agent.py: format, OpenAI message validity,
append-only growth (except the intended rewrites), and the coding trace's size in real tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.chat_template import DEFAULT_TEMPLATE, ChatTemplate
from engine.tokenizer import Tokenizer
from engine.vocab import qwen35_vocab
from scripts.bench_agent import TRACE_DIR, Trace, TraceError, expand_turns, load_trace, sampled

TRACE_NAMES = ("coding_agent", "history_rewrite", "interleaved")
MAX_FILE_BYTES = 1_500_000


@pytest.fixture(scope="module")
def traces() -> dict[str, Trace]:
    return {name: load_trace(TRACE_DIR / f"{name}.json") for name in TRACE_NAMES}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(qwen35_vocab())


def test_trace_files_exist_and_stay_small():
    for name in TRACE_NAMES:
        path = TRACE_DIR / f"{name}.json"
        assert path.is_file(), path
        assert path.stat().st_size < MAX_FILE_BYTES, f"{path} is {path.stat().st_size} bytes"
        assert json.loads(path.read_text())["name"] == name


def check_tools(tools: list[dict]) -> set[str]:
    names = set()
    for tool in tools:
        assert tool["type"] == "function"
        fn = tool["function"]
        assert fn["name"] and fn["name"] not in names and fn["description"]
        assert fn["parameters"]["type"] == "object"
        assert set(fn["parameters"].get("required", [])) <= set(fn["parameters"]["properties"])
        names.add(fn["name"])
    return names


def check_conversation(messages: list[dict], tool_names: set[str]) -> None:
    """OpenAI chat rules: roles, content types, tool calls with JSON arguments answered by tool messages."""
    assert messages[0]["role"] == "system" and messages[1]["role"] == "user"
    open_calls: dict[str, str] = {}
    for i, m in enumerate(messages):
        role = m["role"]
        assert role in {"system", "user", "assistant", "tool"}, (i, role)
        if role == "system":
            assert i == 0 and isinstance(m["content"], str)
        elif role == "user":
            assert isinstance(m["content"], str) and m["content"]
            assert not open_calls, f"message {i}: user message while tool calls {sorted(open_calls)} are unanswered"
        elif role == "assistant":
            assert not open_calls, f"message {i}: assistant message while tool calls are unanswered"
            assert isinstance(m.get("content"), (str, type(None)))
            assert m.get("content") or m.get("tool_calls"), f"message {i}: empty assistant message"
            assert isinstance(m.get("reasoning_content", ""), str)
            for call in m.get("tool_calls", []):
                assert call["type"] == "function" and call["id"].startswith("call_")
                assert call["id"] not in open_calls
                assert call["function"]["name"] in tool_names
                assert isinstance(json.loads(call["function"]["arguments"]), dict)
                open_calls[call["id"]] = call["function"]["name"]
        else:
            assert m["tool_call_id"] in open_calls, f"message {i}: answers unknown call {m['tool_call_id']}"
            assert isinstance(m["content"], str) and m["content"]
            del open_calls[m["tool_call_id"]]
    assert not open_calls, f"unanswered tool calls at the end: {sorted(open_calls)}"
    assert messages[-1]["role"] in {"user", "tool"}, "a request must end with the client's message"


def test_every_request_is_a_valid_openai_conversation(traces):
    for trace in traces.values():
        tool_names = check_tools(trace.tools)
        for turn in trace.turns:
            check_conversation(turn.messages, tool_names)
            assert 1 <= turn.max_tokens <= 64


def test_coding_agent_is_a_long_append_only_session(traces):
    trace = traces["coding_agent"]
    assert len(trace.turns) >= 20 and {t.session for t in trace.turns} == {"main"}
    calls = [c["function"]["name"] for t in trace.turns for m in t.messages[-3:] for c in m.get("tool_calls", [])]
    assert {"read_file", "edit_file", "write_file", "grep", "run_tests", "list_dir"} <= set(calls)
    assert trace.check_targets


def assert_grows_append_only(turns) -> None:
    last: dict[str, list[dict]] = {}
    for turn in turns:
        before = last.get(turn.session, [])
        assert turn.messages[: len(before)] == before, f"{turn.session} #{turn.number} rewrites history"
        assert len(turn.messages) > len(before)
        last[turn.session] = turn.messages


def test_append_only_traces_extend_the_previous_request(traces):
    assert_grows_append_only(traces["coding_agent"].turns)
    assert_grows_append_only(traces["interleaved"].turns)


def test_interleaved_alternates_two_growing_sessions(traces):
    turns = traces["interleaved"].turns
    assert [t.session for t in turns] == ["A", "B"] * (len(turns) // 2)
    first_a, first_b = turns[0].messages, turns[1].messages
    assert first_a[0] == first_b[0], "same client: same system prompt"
    assert first_a[1] != first_b[1], "different tasks"


def differences(old: dict, new: dict) -> set[str]:
    return {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}


def test_history_rewrite_changes_only_what_its_notes_say(traces):
    """Between consecutive requests, earlier messages change only as the turn's note announces:
    reasoning_content dropped from assistant messages, or the system prompt's time line."""
    trace = traces["history_rewrite"]
    assert not trace.check_targets
    kinds = set()
    for before, turn in zip(trace.turns, trace.turns[1:]):
        changed = [i for i, m in enumerate(before.messages) if turn.messages[i] != m]
        assert len(turn.messages) > len(before.messages)
        for i in changed:
            old, new = before.messages[i], turn.messages[i]
            if "reasoning_content" in turn.note:
                assert old["role"] == "assistant" and differences(old, new) == {"reasoning_content"}
                assert "reasoning_content" not in new
            elif "time line" in turn.note:
                assert i == 0 and old["content"].split("Current time:")[0] == new["content"].split("Current time:")[0]
            else:
                pytest.fail(f"turn {turn.number} ({turn.note!r}) changes message {i}")
        if changed:
            kinds.add(turn.note)
        if "new user message" in turn.note:
            assert turn.messages[-1]["role"] == "user" and not changed
            kinds.add(turn.note)
    assert len(kinds) == 3, kinds


def test_coding_trace_last_request_exceeds_30k_tokens(traces, tokenizer):
    trace = traces["coding_agent"]
    prompt = ChatTemplate(DEFAULT_TEMPLATE).render(trace.turns[-1].messages, tools=trace.tools)
    assert len(tokenizer.encode(prompt)) > 30_000


def test_expand_turns_applies_replace_then_append():
    sys_a, sys_b = {"role": "system", "content": "a"}, {"role": "system", "content": "b"}
    user = {"role": "user", "content": "hi"}
    turns = expand_turns([
        {"append": [sys_a, user], "max_tokens": 4},
        {"session": "other", "append": [sys_a], "max_tokens": 4},
        {"replace": {"0": sys_b}, "append": [user], "max_tokens": 4},
    ])
    assert [t.messages for t in turns] == [[sys_a, user], [sys_a], [sys_b, user, user]]
    assert [(t.session, t.number) for t in turns] == [("main", 1), ("other", 1), ("main", 2)]


@pytest.mark.parametrize("turn, message", [
    ({"append": [], "max_tokens": 4}, "'append' must be a non-empty list"),
    ({"append": [{"role": "user", "content": "x"}]}, "'max_tokens' must be a positive integer"),
    ({"append": [{"role": "user", "content": "x"}], "max_tokens": 4, "replace": {"3": {}}}, "index '3'"),
    ({"append": [{"role": "user", "content": "x"}], "max_tokens": 4, "extra": 1}, "unknown fields"),
])
def test_expand_turns_names_the_problem(turn, message):
    with pytest.raises(TraceError, match=message):
        expand_turns([turn])


def test_load_trace_rejects_a_file_without_turns(tmp_path: Path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"name": "t", "description": "", "tools": [], "turns": []}))
    with pytest.raises(TraceError, match="no turns"):
        load_trace(path)


def test_off_mode_sample_keeps_what_the_verdict_compares(traces):
    turns = traces["interleaved"].turns
    keep = sampled(turns, 5)
    for session in {t.session for t in turns}:
        mine = [i for i, t in enumerate(turns) if t.session == session]
        assert {mine[0], mine[1], mine[-1]} <= keep
    assert set(range(0, len(turns), 5)) <= keep and len(keep) < len(turns)
    assert sampled(turns, 1) == set(range(len(turns)))
