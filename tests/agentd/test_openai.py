"""agentd/api/openai.py over real HTTP with a scripted model: the openai SDK parses every response."""

from __future__ import annotations

import json

import openai
import pytest

from tests.agentd.fakes import FakeModel, chat_reply, text_reply

USER = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather forecast",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
CALL_PARIS = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
CALL_OSLO = "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>"


def sse_data(raw: bytes) -> list:
    """The data payloads of an SSE body, JSON-decoded ([DONE] kept as the string)."""
    out = []
    for line in raw.decode().splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_chat_text_and_reasoning(serve_fake):
    server = serve_fake(FakeModel(chat_reply("Greet back.\n</think>\n\nHello!")))
    reply = server.openai().chat.completions.create(model="any-name", messages=USER)
    choice = reply.choices[0]
    assert choice.message.content == "Hello!"
    assert choice.message.reasoning_content == "Greet back."
    assert choice.finish_reason == "stop"
    assert reply.model == "any-name"  # the requested name is echoed
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.completion_tokens == len(server.runner.loaded.model.tokenizer.encode("Greet back.\n</think>\n\nHello!"))
    assert reply.usage.prompt_tokens_details.cached_tokens == 0


def test_chat_stream_chunks_and_usage(serve_fake):
    server = serve_fake(FakeModel(chat_reply("Think.\n</think>\n\nHello world")))
    chunks = list(
        server.openai().chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert (content, reasoning) == ("Hello world", "Think.")
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens


def test_stream_ends_with_done_and_no_usage_unless_asked(serve_fake):
    server = serve_fake(FakeModel(chat_reply("ok")))
    status, headers, raw = server.request("POST", "/v1/chat/completions", {"messages": USER, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_data(raw)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])


def test_streamed_tool_calls(serve_fake):
    script = "Need weather.\n</think>\n\n" + CALL_PARIS + "\n" + CALL_OSLO
    server = serve_fake(FakeModel(chat_reply(script)))
    chunks = list(server.openai().chat.completions.create(model="m", messages=USER, tools=[WEATHER], stream=True, max_tokens=300))
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    firsts = {}
    args: dict[int, str] = {}
    for d in deltas:
        assert d.index is not None  # index on every delta (Continue drops deltas without it)
        if d.index not in firsts:
            firsts[d.index] = d
            assert d.id and d.type == "function" and d.function.name == "get_weather"
        else:
            assert d.id is None and d.function.name is None
        args[d.index] = args.get(d.index, "") + (d.function.arguments or "")
    assert sorted(firsts) == [0, 1] and firsts[0].id != firsts[1].id
    assert json.loads(args[0]) == {"city": "Paris", "days": 3}
    assert json.loads(args[1]) == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""


def test_non_streamed_tool_calls(serve_fake):
    server = serve_fake(FakeModel(chat_reply("Checking.\n</think>\n\nLet me check." + "\n\n" + CALL_PARIS)))
    reply = server.openai().chat.completions.create(model="m", messages=USER, tools=[WEATHER], max_tokens=300)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content == "Let me check."
    assert [c.function.name for c in message.tool_calls] == ["get_weather"]
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris", "days": 3}


def test_parallel_tool_calls_false_keeps_one_call(serve_fake):
    server = serve_fake(FakeModel(chat_reply("x\n</think>\n\n" + CALL_PARIS + "\n" + CALL_OSLO)))
    reply = server.openai().chat.completions.create(model="m", messages=USER, tools=[WEATHER], parallel_tool_calls=False, max_tokens=300)
    assert len(reply.choices[0].message.tool_calls) == 1
    assert reply.choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_leaves_text_alone(serve_fake):
    server = serve_fake(FakeModel(chat_reply("x\n</think>\n\n" + CALL_OSLO)))
    reply = server.openai().chat.completions.create(model="m", messages=USER, tools=[WEATHER], tool_choice="none")
    assert reply.choices[0].message.tool_calls is None
    assert "<function=get_weather>" in reply.choices[0].message.content


def test_stop_sequences(serve_fake):
    server = serve_fake(FakeModel(chat_reply("x\n</think>\n\nalpha beta gamma")))
    client = server.openai()
    reply = client.chat.completions.create(model="m", messages=USER, stop=["gam", "zzz"])
    assert reply.choices[0].message.content == "alpha beta"
    assert reply.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="m", messages=USER, stop="beta", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "alpha"
    server.wait_idle()  # the stop string cancelled the generation in the runner


def test_max_tokens_and_max_completion_tokens(serve_fake):
    server = serve_fake(FakeModel(chat_reply("word " * 100)))
    client = server.openai()
    for kw in ({"max_tokens": 7}, {"max_completion_tokens": 7}):
        reply = client.chat.completions.create(
            model="m", messages=USER, extra_body={"chat_template_kwargs": {"enable_thinking": False}}, **kw
        )
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 7


def test_default_output_limit_is_bounded_by_the_context(serve_fake):
    server = serve_fake(FakeModel(chat_reply("y" * 10_000), context_length=200), default_max_tokens=10_000)
    reply = server.openai().chat.completions.create(model="m", messages=USER)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.total_tokens == 200


def test_logprobs(serve_fake):
    server = serve_fake(FakeModel(chat_reply("ab")))
    reply = server.openai().chat.completions.create(
        model="m", messages=USER, logprobs=True, top_logprobs=3,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )  # fmt: skip
    entries = reply.choices[0].logprobs.content
    assert [e.token for e in entries] == ["a", "b"]
    assert all(e.logprob == pytest.approx(0.0, abs=1e-6) and len(e.top_logprobs) == 3 for e in entries)
    assert entries[0].top_logprobs[0].token == "a" and entries[0].bytes == [ord("a")]


def test_aider_style_request(serve_fake):
    """No max_tokens, no stream key, temperature 0, strictly alternating string messages."""
    server = serve_fake(FakeModel(chat_reply("x\n</think>\n\nOk.")))
    messages = [
        {"role": "system", "content": "Act as an expert software developer."},
        {"role": "user", "content": "Change the greeting"},
        {"role": "assistant", "content": "Ok."},
        {"role": "user", "content": "add a docstring to f"},
    ]
    status, _, body = server.request(
        "POST", "/v1/chat/completions", {"messages": messages, "model": "agentd", "temperature": 0}
    )
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "Ok." and body["usage"]["completion_tokens"] > 0


def test_content_parts_developer_role_and_tool_messages(serve_fake):
    seen = []
    server = serve_fake(FakeModel(chat_reply(lambda prompt: seen.append(prompt) or "x\n</think>\n\ndone")))
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "weather "}, {"type": "text", "text": "in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    reply = server.openai().chat.completions.create(model="m", messages=messages, tools=[WEATHER], store=False)
    assert reply.choices[0].message.content == "done"
    prompt = seen[-1]
    assert "Be brief." in prompt and "weather in Paris?" in prompt
    assert "<parameter=city>\nParis\n</parameter>" in prompt and "<tool_response>\nsunny\n</tool_response>" in prompt


def test_completions_text_tokens_echo_and_stream(serve_fake):
    server = serve_fake(FakeModel(text_reply("Once upon", " a time")))
    client = server.openai()
    reply = client.completions.create(model="m", prompt="Once upon")
    assert reply.choices[0].text == " a time" and reply.choices[0].finish_reason == "stop"
    ids = server.runner.loaded.model.tokenizer.encode("Once upon")
    assert client.completions.create(model="m", prompt=ids).choices[0].text == " a time"
    assert client.completions.create(model="m", prompt="Once upon", echo=True).choices[0].text == "Once upon a time"
    chunks = list(client.completions.create(model="m", prompt="Once upon", stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " a time"
    assert chunks[-1].usage.completion_tokens == len(server.runner.loaded.model.tokenizer.encode(" a time"))
    logprobs = client.completions.create(model="m", prompt="Once upon", logprobs=2, max_tokens=3).choices[0].logprobs
    assert logprobs.tokens == [" ", "a", " "] and logprobs.text_offset == [0, 1, 2]


def test_context_overflow_is_checked_before_compute(serve_fake):
    model = FakeModel(chat_reply("x"), context_length=64)
    server = serve_fake(model)
    with pytest.raises(openai.BadRequestError) as err:
        server.openai().chat.completions.create(model="m", messages=[{"role": "user", "content": "long " * 50}])
    body = err.value.body
    assert body["code"] == "context_length_exceeded"
    assert "64" in body["message"] and str(len(model.tokenizer.encode("long " * 50))) < body["message"]
    assert model.forward_calls == 0


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"messages": USER, "n": 2}, "n"),
        ({"messages": USER, "temperature": -1}, "temperature"),
        ({"messages": USER, "top_p": 0}, "top_p"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "tool_choice": "required"}, "tool_choice"),
        ({"messages": USER, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content"),
        ({"messages": [{"role": "assistant", "content": "no user turn"}]}, "messages"),
        ({"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ],
)
def test_invalid_requests_are_400_with_the_param(serve_fake, body, param):
    server = serve_fake(FakeModel(chat_reply("x")))
    status, _, reply = server.request("POST", "/v1/chat/completions", body)
    assert status == 400, reply
    error = reply["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    assert server.openai().chat.completions.create(model="m", messages=USER).choices[0].message is not None


def test_unknown_fields_are_ignored(serve_fake):
    server = serve_fake(FakeModel(chat_reply("x\n</think>\n\nfine")))
    body = {"messages": USER, "store": True, "metadata": {"a": 1}, "user": "u", "cache_prompt": True, "x_new": [1]}
    status, _, reply = server.request("POST", "/v1/chat/completions", body)
    assert status == 200 and reply["choices"][0]["message"]["content"] == "fine"


def test_tools_are_rendered_as_sent_and_bad_tools_rejected(serve_fake):
    seen = []
    server = serve_fake(FakeModel(chat_reply(lambda prompt: seen.append(prompt) or "x\n</think>\n\nok")))
    server.openai().chat.completions.create(model="m", messages=USER, tools=[WEATHER], max_tokens=5)
    assert json.dumps(WEATHER, ensure_ascii=False) in seen[-1]  # verbatim, no null-filled defaults
    status, _, body = server.request(
        "POST", "/v1/chat/completions", {"messages": USER, "tools": [{"type": "function", "function": {"description": "no name"}}]}
    )
    assert status == 400 and body["error"]["param"] == "tools[0]"


@pytest.mark.parametrize("tool_choice", ["required", "auto"])
def test_a_tool_schema_that_cannot_be_enforced_is_a_400_naming_it(serve_fake, tool_choice):
    """The exact request: a root $ref to nothing, and a pattern llguidance cannot run. Before:
    compiled leniently, and arguments with any keys came back."""
    server = serve_fake(FakeModel(chat_reply("x")))
    missing = {"type": "function", "function": {"name": "lookup", "parameters": {"$ref": "#/$defs/Query"}}}
    lookahead = {"type": "function", "function": {"name": "grep", "parameters": {
        "type": "object", "properties": {"q": {"type": "string", "pattern": "^(?!-)"}}}}}  # fmt: skip
    for tool, words in ((missing, ["lookup", "#/$defs/Query"]), (lookahead, ["grep", "pattern", "look-around"])):
        body = {"model": "m", "messages": USER, "tools": [tool], "tool_choice": tool_choice}
        status, _, reply = server.request("POST", "/v1/chat/completions", body)
        assert status == 400 and reply["error"]["param"] == "tools"
        assert all(word in reply["error"]["message"] for word in words), reply
