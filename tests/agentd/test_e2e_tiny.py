"""End to end with the real engine: the tiny synthetic model (random weights, the real Qwen3.5
vocabulary and chat template) served by the daemon, driven by the openai SDK and raw sockets."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from engine.generate import generate
from engine.sampling import SamplingParams
from tests.agentd.conftest import FORECAST_SCHEMA, check_forecast_arguments

USER = [{"role": "user", "content": "Hello! What is the weather like?"}]
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}
FORECAST = {
    "type": "function",
    "function": {"name": "forecast", "description": "Weather forecast for a city", "parameters": FORECAST_SCHEMA},
}
NOTE = {
    "type": "function",
    "function": {
        "name": "note",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    },
}


def test_greedy_completion_matches_the_engine_generation_loop(tiny_server, tiny_model):
    """The daemon's scheduler, chunked prefill and detokenizer reproduce engine.generate exactly."""
    client = tiny_server.openai()
    status, _, body = tiny_server.request("POST", "/apply-template", {"messages": USER})
    prompt = body["prompt"]
    ids = tiny_model.tokenizer.encode(prompt)
    expected = tiny_model.tokenizer.decode(list(generate(tiny_model, ids, SamplingParams(temperature=0), 12)))
    reply = client.completions.create(model="m", prompt=prompt, max_tokens=12, temperature=0)
    assert reply.choices[0].text == expected
    assert reply.usage.prompt_tokens == len(ids)


def test_chat_non_streaming_and_streaming_agree(tiny_server):
    client = tiny_server.openai()
    reply = client.chat.completions.create(model="qwen", messages=USER, max_tokens=10, temperature=0)
    message = reply.choices[0].message
    assert reply.model == "qwen" and reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage.completion_tokens <= 10
    chunks = list(client.chat.completions.create(
        model="qwen", messages=USER, max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True}
    ))  # fmt: skip
    streamed_content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    streamed_reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert streamed_content == (message.content or "")
    assert streamed_reasoning == (getattr(message, "reasoning_content", None) or "")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens


def test_forced_tool_call_streams_arguments_that_validate(tiny_server):
    chunks = list(tiny_server.openai().chat.completions.create(
        model="m", messages=USER, tools=[FORECAST], tool_choice={"type": "function", "function": {"name": "forecast"}},
        parallel_tool_calls=False, stream=True, max_tokens=120, seed=1,
    ))  # fmt: skip
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].index == 0 and deltas[0].id and deltas[0].type == "function"
    assert deltas[0].function.name == "forecast"
    assert all(d.index == 0 for d in deltas) and all(d.id is None for d in deltas[1:])
    check_forecast_arguments(json.loads("".join(d.function.arguments or "" for d in deltas)))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_required_tool_calls_with_parallel_calls(tiny_server):
    reply = tiny_server.openai().chat.completions.create(
        model="m", messages=USER, tools=[FORECAST, NOTE], tool_choice="required", max_tokens=200, seed=3
    )
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and calls
    assert len({c.id for c in calls}) == len(calls)
    for call in calls:
        args = json.loads(call.function.arguments)
        if call.function.name == "forecast":
            check_forecast_arguments(args)
        else:
            assert call.function.name == "note" and set(args) == {"n"} and type(args["n"]) is int


def test_json_schema_response_validates(tiny_server):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    reply = tiny_server.openai().chat.completions.create(
        model="m", messages=USER, max_tokens=300, seed=5,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert reply.choices[0].finish_reason == "stop"
    value = json.loads(reply.choices[0].message.content)
    assert set(value) <= {"name", "age", "tags"} and {"name", "age"} <= set(value)
    assert isinstance(value["name"], str) and len(value["name"]) <= 16
    assert type(value["age"]) is int and 0 <= value["age"] <= 150
    tags = value.get("tags", [])
    assert isinstance(tags, list) and len(tags) <= 3 and all(isinstance(t, str) and len(t) <= 8 for t in tags)


def test_json_object_response(tiny_server):
    reply = tiny_server.openai().chat.completions.create(
        model="m", messages=USER, max_tokens=40, seed=2, response_format={"type": "json_object"}
    )
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:  # a random model may still be inside the object; what it wrote is a JSON object's prefix
        assert reply.choices[0].message.content.lstrip().startswith("{")


def test_stop_sequence_cuts_the_greedy_output(tiny_server):
    client = tiny_server.openai()
    prompt = "The quick brown fox"
    full = client.completions.create(model="m", prompt=prompt, max_tokens=16, temperature=0).choices[0].text
    candidates = [full[k : k + 2] for k in range(1, len(full) - 1) if full[k : k + 2].strip()]
    assert candidates, f"greedy output too short to pick a stop string from: {full!r}"
    stop = candidates[len(candidates) // 2]
    cut = client.completions.create(model="m", prompt=prompt, max_tokens=16, temperature=0, stop=[stop]).choices[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_disconnect_frees_the_runner_at_once(tiny_server):
    host, port = tiny_server.base_url.removeprefix("http://").split(":")
    payload = json.dumps({"messages": USER, "stream": True, "max_tokens": 2000}).encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        )  # fmt: skip
        data = b""
        while data.count(b"data: ") < 3:  # the role chunk and two tokens: generation is running
            data += sock.recv(65536)
    tiny_server.wait_idle(5)
    started = time.monotonic()
    reply = tiny_server.openai().chat.completions.create(model="m", messages=USER, max_tokens=2)
    assert reply.usage.completion_tokens == 2
    assert time.monotonic() - started < 10


def test_eight_concurrent_clients_all_finish(tiny_server):
    client = tiny_server.openai()

    def ask(i: int) -> int:
        messages = [{"role": "user", "content": f"Count to {i}."}]
        if i % 2:
            chunks = client.chat.completions.create(
                model="m", messages=messages, max_tokens=5, stream=True, stream_options={"include_usage": True}
            )
            return [c for c in chunks][-1].usage.completion_tokens
        return client.chat.completions.create(model="m", messages=messages, max_tokens=5).usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(ask, range(8)))
    assert len(counts) == 8 and all(1 <= n <= 5 for n in counts)
    tiny_server.wait_idle()


def test_bad_requests_get_4xx_and_serving_continues(tiny_server):
    status, _, body = tiny_server.request("POST", "/v1/chat/completions", b'{"messages": [')
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as err:
        tiny_server.openai().chat.completions.create(model="m", messages=[{"role": "user", "content": "word " * 3000}])
    assert err.value.body["code"] == "context_length_exceeded" and "2048" in err.value.body["message"]
    assert tiny_server.openai().chat.completions.create(model="m", messages=USER, max_tokens=1).usage.completion_tokens == 1


def _metric(tiny_server, name: str) -> float:
    status, _, text = tiny_server.request("GET", "/metrics")
    assert status == 200
    text = text.decode() if isinstance(text, bytes) else text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_concurrent_greedy_streams_match_one_by_one(tiny_server):
    """Batched decoding is exact: 4 streams at once (prompts of different lengths, so different
    positions in one batch) give the text each gives alone."""
    client = tiny_server.openai()
    prompts = ["Count:", "The weather in Paris today is", "Hello! What is", "A long story about a cat who " * 3]

    def stream(prompt: str) -> str:
        chunks = client.completions.create(model="m", prompt=prompt, max_tokens=16, temperature=0, stream=True)
        return "".join(c.choices[0].text for c in chunks if c.choices)

    alone = [stream(p) for p in prompts]
    multi_before = _metric(tiny_server, "agentd_batch_size_count") - _metric(
        tiny_server, 'agentd_batch_size_bucket{le="1.0"}')
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(stream, prompts))
    assert together == alone
    multi_after = _metric(tiny_server, "agentd_batch_size_count") - _metric(
        tiny_server, 'agentd_batch_size_bucket{le="1.0"}')
    assert multi_after > multi_before  # the streams really shared forward passes
    assert _metric(tiny_server, "agentd_inter_token_seconds_count") > 0
    tiny_server.wait_idle()
