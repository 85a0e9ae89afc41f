"""The Anthropic Messages API end to end: a live daemon on loopback driven by the real `anthropic`
SDK (its stream parser is the conformance check) and by raw HTTP where headers or SSE framing
matter. The real tiny model (random weights, real Qwen3.5 vocabulary and template, loaded by the
production loader) checks the wire contract; a scripted fake model checks exact block contents."""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import anthropic
import pytest

from agentd.config import ServeConfig
from agentd.loader import load
from tests.agentd.conftest import FORECAST_SCHEMA, LiveServer, check_forecast_arguments
from tests.agentd.fakes import FakeModel, chat_reply

KEY = "test-key"
USER = [{"role": "user", "content": "Hello! What is the weather like?"}]
FORECAST = {"name": "forecast", "description": "Weather forecast for a city", "input_schema": FORECAST_SCHEMA}
EPHEMERAL = {"type": "ephemeral"}
GREEDY = {"extra_body": {"temperature": 0}}  # the SDK no longer has sampling parameters; the API still does
STREAM_EVENTS = {"message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
                 "message_stop"}  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_path, tmp_path_factory) -> Iterator[LiveServer]:
    """The production loader on the tiny model file: its own context (32768), the session cache
    when enabled, and an API key."""
    cache_dir = str(tmp_path_factory.mktemp("anthropic-cache"))
    config = ServeConfig(port=0, api_key=KEY, model_path=str(tiny_path), model_name="agentd-tiny", cache_dir=cache_dir)
    live = LiveServer(config, lambda: load(config, progress=False))
    live.wait_ready()
    yield live
    live.close()


def client(server: LiveServer, **kw: Any) -> anthropic.Anthropic:
    kw.setdefault("api_key", KEY)
    return anthropic.Anthropic(base_url=server.base_url, max_retries=0, timeout=60, **kw)


def count_tokens(server: LiveServer, body: dict[str, Any]) -> int:
    status, _, reply = server.request("POST", "/v1/messages/count_tokens", body, {"x-api-key": KEY})
    assert status == 200, reply
    return reply["input_tokens"]


def check_sequence(events: list[Any]) -> None:
    """Anthropic's event grammar: message_start, blocks opened in index order, each receiving
    deltas only while open and closed once, then message_delta and message_stop."""
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"], types
    open_index, next_index = None, 0
    for event in events[1:-2]:
        if event.type == "content_block_start":
            assert open_index is None and event.index == next_index, types
            open_index, next_index = event.index, next_index + 1
        elif event.type == "content_block_delta":
            assert event.index == open_index, types
        else:
            assert event.type == "content_block_stop" and event.index == open_index, types
            open_index = None
    assert open_index is None, types


def sdk_stream(server: LiveServer, **request: Any) -> tuple[list[Any], Any]:
    """The raw events of a streamed request (the SDK's derived events left out) and the message
    the SDK accumulated from them."""
    with client(server).messages.stream(**request) as stream:
        events = [e for e in stream if e.type in STREAM_EVENTS]
        return events, stream.get_final_message()


def raw_sse(response: Any) -> Iterator[tuple[str, dict]]:
    """(event name, data) pairs of an SSE response read off the socket."""
    name = None
    for line in response:
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:])
            name = None


# -- the wire contract, on the real tiny model --------------------------------------------------


def test_text_reply_names_the_requested_model(server):
    reply = client(server).messages.create(model="claude-sonnet-4-6", max_tokens=6, messages=USER, **GREEDY)
    assert reply.type == "message" and reply.role == "assistant" and reply.model == "claude-sonnet-4-6"
    assert reply.id.startswith("msg_") and reply.stop_reason in ("end_turn", "max_tokens")
    assert all(block.type == "text" for block in reply.content) and len(reply.content) <= 1
    assert 1 <= reply.usage.output_tokens <= 6 and reply.usage.input_tokens > 0


def test_streamed_text_matches_the_non_streamed_reply(server):
    request = {"model": "m", "max_tokens": 8, "messages": USER, **GREEDY}
    reply = client(server).messages.create(**request)
    events, final = sdk_stream(server, **request)
    check_sequence(events)
    assert [b.type for b in final.content] == [b.type for b in reply.content] == ["text"] * len(reply.content)
    assert [b.text for b in final.content] == [b.text for b in reply.content]
    assert final.stop_reason == reply.stop_reason and final.usage.output_tokens == reply.usage.output_tokens
    assert events[-2].usage.output_tokens == reply.usage.output_tokens


def test_forced_tool_use_streams_input_that_validates(server):
    events, final = sdk_stream(
        server, model="m", max_tokens=120, messages=USER, tools=[FORECAST], **GREEDY,
        tool_choice={"type": "tool", "name": "forecast", "disable_parallel_tool_use": True},
    )  # fmt: skip
    check_sequence(events)
    start = next(e for e in events if e.type == "content_block_start")
    assert start.content_block.type == "tool_use" and start.content_block.name == "forecast"
    assert start.content_block.id.startswith("toolu_") and start.content_block.input == {}
    fragments = [e.delta.partial_json for e in events if e.type == "content_block_delta"]
    assert fragments and all(e.delta.type == "input_json_delta" for e in events if e.type == "content_block_delta")
    value = json.loads("".join(fragments))
    check_forecast_arguments(value)
    assert events[-2].delta.stop_reason == "tool_use" and final.stop_reason == "tool_use"
    assert [(b.type, b.input) for b in final.content] == [("tool_use", value)]


def test_tool_result_round_trip(server):
    sdk = client(server)
    first = sdk.messages.create(
        model="m", max_tokens=120, messages=USER, tools=[FORECAST], tool_choice={"type": "any"}, **GREEDY
    )
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    assert calls and all(c.name == "forecast" for c in calls)
    for call in calls:
        check_forecast_arguments(call.input)

    def conversation(result: Any) -> list[dict[str, Any]]:
        results = [{"type": "tool_result", "tool_use_id": c.id, "content": result} for c in calls]
        return [*USER, {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                {"role": "user", "content": results}]  # fmt: skip

    second = sdk.messages.create(model="m", max_tokens=4, messages=conversation("Sunny, 21 C"), tools=[FORECAST])
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use") and second.usage.output_tokens >= 1
    counted = count_tokens(server, {"messages": conversation("Sunny, 21 C"), "tools": [FORECAST]})
    assert counted == second.usage.input_tokens + second.usage.cache_read_input_tokens
    as_blocks = [{"type": "text", "text": "Sunny, ", "cache_control": EPHEMERAL}, {"type": "text", "text": "21 C"}]
    assert count_tokens(server, {"messages": conversation(as_blocks), "tools": [FORECAST]}) == counted
    longer = count_tokens(server, {"messages": conversation("Sunny, 21 C, light wind"), "tools": [FORECAST]})
    assert longer > counted


def test_thinking_blocks_stream_with_a_signature_and_go_back_in_history(server):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    events, final = sdk_stream(server, model="m", max_tokens=6, messages=USER, thinking=thinking)
    check_sequence(events)
    assert events[1].content_block.type == "thinking"
    deltas = [e.delta for e in events if e.type == "content_block_delta" and e.index == 0]
    assert deltas[-1].type == "signature_delta" and {d.type for d in deltas[:-1]} == {"thinking_delta"}
    block = final.content[0]
    assert block.type == "thinking" and block.thinking and block.signature == deltas[-1].signature

    loop = [*USER, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": block.thinking, "signature": block.signature},
        {"type": "tool_use", "id": "toolu_1", "name": "forecast", "input": {"city": "Oslo", "days": 2}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Snow"}]}]  # fmt: skip
    second = client(server).messages.create(model="m", max_tokens=2, messages=loop, tools=[FORECAST], thinking=thinking)
    assert second.content[0].type == "thinking"
    without = [loop[0], {"role": "assistant", "content": loop[1]["content"][1:]}, loop[2]]
    # The template keeps the thinking of the running tool loop: it is in the prompt.
    assert count_tokens(server, {"messages": loop, "tools": [FORECAST], "thinking": thinking}) > count_tokens(
        server, {"messages": without, "tools": [FORECAST], "thinking": thinking}
    )


def test_count_tokens_equals_the_prompt_tokens_of_the_request(server):
    bodies = [
        {"system": [{"type": "text", "text": "Be brief.", "cache_control": EPHEMERAL}], "messages": USER,
         "tools": [FORECAST], "thinking": {"type": "adaptive"}},
        {"messages": USER, "tools": [FORECAST], "tool_choice": {"type": "any"}},  # forced: thinking is switched off
    ]  # fmt: skip
    for body in bodies:
        counted = count_tokens(server, body)
        reply = client(server).messages.create(model="m", max_tokens=1, **body)
        assert counted == reply.usage.input_tokens + reply.usage.cache_read_input_tokens
    assert count_tokens(server, bodies[0]) != count_tokens(server, bodies[1])


def test_a_prompt_over_the_context_gets_prompt_is_too_long(server):
    body = {"messages": [{"role": "user", "content": "word " * 33000}]}
    counted = count_tokens(server, body)
    with pytest.raises(anthropic.BadRequestError) as err:
        client(server).messages.create(model="m", max_tokens=10, **body)
    assert err.value.status_code == 400 and err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "invalid_request_error"
    match = re.fullmatch(r"prompt is too long: (\d+) tokens > (\d+) maximum", err.value.body["error"]["message"])
    assert match and int(match[1]) == counted and int(match[2]) == 32767  # the tiny model's own context
    assert client(server).messages.create(model="m", max_tokens=1, messages=USER).usage.output_tokens == 1


def test_api_key_in_x_api_key_or_bearer(server, monkeypatch):
    body = {"model": "m", "max_tokens": 1, "messages": USER}
    for headers in ({"x-api-key": KEY}, {"Authorization": f"Bearer {KEY}"}):
        status, _, reply = server.request("POST", "/v1/messages", body, headers)
        assert status == 200 and reply["usage"]["output_tokens"] == 1, reply
    for headers in ({}, {"x-api-key": "wrong"}, {"Authorization": "Bearer wrong"}):
        status, _, reply = server.request("POST", "/v1/messages", body, headers)
        assert status == 401 and reply["type"] == "error", reply
        assert reply["error"]["type"] == "authentication_error" and reply["error"]["message"]
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert client(server, api_key=None, auth_token=KEY).messages.create(**body).usage.output_tokens == 1
    with pytest.raises(anthropic.AuthenticationError):
        client(server, api_key="wrong").messages.create(**body)


def test_unknown_fields_and_betas_are_accepted(server):
    reply = client(server).messages.create(
        model="m", max_tokens=2, stop_sequences=["\n\n\n"],
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": EPHEMERAL,
                                                "citations": None}]}],
        tools=[{**FORECAST, "cache_control": EPHEMERAL, "defer_loading": False}],
        metadata={"user_id": json.dumps({"device_id": "00" * 32, "session_id": "s"})},
        extra_headers={"anthropic-beta": "some-future-beta-2030-01-01,context-management-2025-06-27"},
        extra_body={"temperature": 0.7, "top_p": 0.9, "top_k": 40, "context_management": {"edits": []},
                    "output_config": {"effort": "low"}, "service_tier": "auto", "a_field_from_the_future": {"x": [1]}},
    )  # fmt: skip
    assert reply.type == "message" and reply.usage.output_tokens >= 1


def test_errors_use_anthropics_body(server):
    auth = {"x-api-key": KEY}
    cases = [
        (b'{"model": "m", "messages": [', 400, "invalid_request_error", "not valid JSON"),
        ({"model": "m", "messages": USER}, 400, "invalid_request_error", "max_tokens"),
        ({"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]}]},
         400, "invalid_request_error", "text only"),
        ({"model": "m", "max_tokens": 4, "messages": USER, "tool_choice": {"type": "tool", "name": "nope"},
          "tools": [FORECAST]}, 400, "invalid_request_error", "nope"),
    ]  # fmt: skip
    for body, status, kind, words in cases:
        got, _, reply = server.request("POST", "/v1/messages?beta=true", body, auth)
        assert (got, reply["type"], reply["error"]["type"]) == (status, "error", kind), reply
        assert words in reply["error"]["message"]
    got, _, reply = server.request("POST", "/v1/messages/batches", {"requests": []}, auth)
    assert got == 404 and reply["type"] == "error" and set(reply) == {"type", "error"}
    assert reply["error"]["type"] == "not_found_error" and "/v1/messages/batches" in reply["error"]["message"]
    got, _, reply = server.request("POST", "/v1/chat/completions", b"{", auth | {"Authorization": f"Bearer {KEY}"})
    assert got == 400 and reply["error"]["type"] == "invalid_request_error" and "type" not in reply  # OpenAI's shape


CLAUDE_CODE_HEADERS = {
    "Accept": "application/json",
    "Authorization": f"Bearer {KEY}",
    "User-Agent": "claude-cli/2.1.330 (external, sdk-cli)",
    "X-Claude-Code-Session-Id": "0b7c6f5e-2f47-4c1e-9d7a-1c2b3d4e5f60",
    "X-Stainless-Lang": "js",
    "X-Stainless-Package-Version": "0.128.0",
    "X-Stainless-Retry-Count": "0",
    "X-Stainless-Timeout": "600",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
    "mid-conversation-tool-changes-2026-07-01,thinking-token-count-2026-05-13,advanced-tool-use-2025-11-20,"
    "effort-2025-11-24,thinking-display-updates-2026-08-18",
    "anthropic-dangerous-direct-browser-access": "true",
    "anthropic-version": "2023-06-01",
    "x-app": "cli",
}


def claude_code_requests() -> tuple[dict[str, Any], dict[str, Any]]:
    """The two requests of a one-tool-call Claude Code session (claude-code.md), texts shortened."""
    user = {"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>\nAttribution for git commits: none.\n</system-reminder>\n"},
        {"type": "text", "text": "list the files here"}]}  # fmt: skip
    env = "# Environment\nYou have been invoked in /tmp/project.\nYou are powered by the model agentd."
    glob = {"name": "Glob", "description": "Fast file pattern matching.", "input_schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "properties": {"pattern": {"type": "string", "description": "The glob pattern"}}, "required": ["pattern"],
        "additionalProperties": False}}  # fmt: skip
    placeholder = {"name": "DeferredToolPlaceholder", "description": "Placeholder for deferred tools.",
                   "input_schema": {"type": "object"}, "defer_loading": True}  # fmt: skip
    first = {
        "model": "agentd",
        "messages": [user, {"role": "system", "content": [{"type": "text", "text": env, "cache_control": EPHEMERAL}]}],
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.330.aad; cc_entrypoint=sdk-cli;"},
            {"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
             "cache_control": EPHEMERAL},
            {"type": "text", "text": "\nYou are an agent working with the user.", "cache_control": EPHEMERAL},
        ],
        "tools": [glob, placeholder],
        "metadata": {"user_id": json.dumps({"device_id": "ab" * 32, "account_uuid": "", "session_id": "s-1"})},
        "max_tokens": 32000,
        "thinking": {"type": "adaptive", "display": "updates"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "stream": True,
    }  # fmt: skip
    second = {**first, "messages": [
        user,
        {"role": "system", "content": env},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01", "name": "Glob", "input": {"pattern": "*"}}]},
        {"role": "user", "content": [{"tool_use_id": "toolu_01", "type": "tool_result",
                                      "content": "main.py\nREADME.md\nnotes.txt", "cache_control": EPHEMERAL}]},
    ]}  # fmt: skip
    return first, second


def test_claude_code_requests_are_accepted(server):
    """Each request streams until its first delta; then the client leaves (max_tokens is 32000)."""
    for body in claude_code_requests():
        conn = server.connect()
        conn.request("POST", "/v1/messages?beta=true", json.dumps(body), {"Content-Type": "application/json",
                                                                          **CLAUDE_CODE_HEADERS})  # fmt: skip
        response = conn.getresponse()
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        seen = []
        for name, data in raw_sse(response):
            assert name == data["type"]
            seen.append(name)
            if name == "message_start":
                usage = data["message"]["usage"]
                assert data["message"]["model"] == "agentd"
                counted = count_tokens(server, {k: v for k, v in body.items() if k not in ("max_tokens", "stream")})
                assert usage["input_tokens"] + usage["cache_read_input_tokens"] == counted
            if name == "content_block_delta":
                assert data["delta"]["type"] == "thinking_delta"  # adaptive thinking: the model thinks first
                break
        conn.close()
        assert [n for n in seen if n != "ping"] == ["message_start", "content_block_start", "content_block_delta"]
        server.wait_idle()


def test_second_turn_reads_the_first_from_the_session_cache(server):
    system = "You are a careful assistant who answers questions about the weather. " * 12
    sdk = client(server)
    first = sdk.messages.create(model="m", max_tokens=3, system=system, messages=USER)
    turn = [*USER, {"role": "assistant", "content": [b.model_dump() for b in first.content] or "ok"},
            {"role": "user", "content": "And tomorrow?"}]  # fmt: skip
    second = sdk.messages.create(model="m", max_tokens=3, system=system, messages=turn)
    assert second.usage.cache_read_input_tokens > 0
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens == count_tokens(
        server, {"system": system, "messages": turn}
    )


# -- exact contents, with a scripted model ------------------------------------------------------

THOUGHT_AND_CALL = (
    "Check the forecast first.\n</think>\n\nLet me look that up.\n\n<tool_call>\n<function=forecast>\n"
    "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
)


def test_blocks_follow_the_output_streamed_and_not(serve_fake):
    server = serve_fake(FakeModel(chat_reply(THOUGHT_AND_CALL)))
    request = {"model": "claude-opus-4-1", "max_tokens": 200, "messages": USER, "tools": [FORECAST],
               "thinking": {"type": "enabled", "budget_tokens": 1024}}  # fmt: skip
    events, final = sdk_stream(server, **request)
    check_sequence(events)
    reply = client(server).messages.create(**request)
    for message in (final, reply):
        assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
        thinking, text, call = message.content
        assert thinking.thinking == "Check the forecast first." and thinking.signature
        assert text.text == "Let me look that up."
        assert (call.name, call.input) == ("forecast", {"city": "Paris", "days": 3}) and call.id.startswith("toolu_")
        assert message.stop_reason == "tool_use" and message.model == "claude-opus-4-1"
    assert reply.usage.output_tokens == final.usage.output_tokens == events[-2].usage.output_tokens > 0


def test_stop_sequence_is_named(serve_fake):
    server = serve_fake(FakeModel(chat_reply("The answer is 42. DONE and more text")))
    for stream in (False, True):
        request = {"model": "m", "max_tokens": 100, "messages": USER, "stop_sequences": ["zzz", "DONE", "42. D"]}
        if stream:
            events, reply = sdk_stream(server, **request)
            assert events[-2].delta.stop_reason == "stop_sequence" and events[-2].delta.stop_sequence == "42. D"
        else:
            reply = client(server).messages.create(**request)
        assert [b.text for b in reply.content] == ["The answer is"]
        assert (reply.stop_reason, reply.stop_sequence) == ("stop_sequence", "42. D")
    reply = client(server).messages.create(model="m", max_tokens=100, messages=USER, stop_sequences=["zzz"])
    assert (reply.stop_reason, reply.stop_sequence) == ("end_turn", None)
    reply = client(server).messages.create(model="m", max_tokens=3, messages=USER)
    assert (reply.stop_reason, reply.usage.output_tokens) == ("max_tokens", 3)


def test_pings_keep_the_stream_alive_while_the_prompt_is_processed(serve_fake):
    model = FakeModel(chat_reply("ok"), step_seconds=0.15)
    server = serve_fake(model, keepalive_seconds=0.05, prefill_chunk=64)
    body = {"model": "m", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "x" * 200}]}
    conn = server.connect()
    conn.request("POST", "/v1/messages", json.dumps(body), {"Content-Type": "application/json"})
    names = [name for name, _ in raw_sse(conn.getresponse())]
    conn.close()
    first_start = names.index("message_start")
    assert first_start >= 2 and set(names[:first_start]) == {"ping"}, names
    assert [n for n in names if n != "ping"][-2:] == ["message_delta", "message_stop"]


def test_a_failure_mid_stream_is_an_error_event(serve_fake):
    server = serve_fake(FakeModel(chat_reply("a long reply " * 20), step_seconds=0.05))

    async def fail() -> None:
        server.runner.fail_all("the model went away")

    deltas = 0
    with pytest.raises(anthropic.APIStatusError) as err:
        with client(server).messages.stream(model="m", max_tokens=200, messages=USER) as stream:
            for event in stream:
                deltas += event.type == "content_block_delta"
                if deltas == 1 and event.type == "content_block_delta":
                    server.run(fail())
    assert deltas >= 1 and "the model went away" in str(err.value)
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "api_error"
