"""Parallel tool calls cut off by the token limit: no markup in the content, the finished calls
kept, finish_reason "length" (stop_reason "max_tokens"), in both APIs, streamed and not."""

from __future__ import annotations

import json

import anthropic
import pytest

from tests.agentd.fakes import FakeModel, chat_reply
from tests.agentd.test_openai import CALL_OSLO, CALL_PARIS, USER, WEATHER

SCRIPT = "Two cities.\n</think>\n\nChecking both.\n\n" + CALL_PARIS + "\n" + CALL_OSLO
CUTS = {  # where the token limit falls, inside the second call
    "wrapper": SCRIPT.index(CALL_OSLO) + len("<tool_call>\n"),
    "function_name": SCRIPT.index(CALL_OSLO) + len("<tool_call>\n<function=get_wea"),
    "parameter_name": SCRIPT.index(CALL_OSLO) + len("<tool_call>\n<function=get_weather>\n<parameter=ci"),
}
PARIS = {"city": "Paris", "days": 3}
ANTHROPIC_WEATHER = {"name": "get_weather", "description": "x", "input_schema": WEATHER["function"]["parameters"]}


def serve_cut(serve_fake, cut: str) -> tuple[object, int]:
    server = serve_fake(FakeModel(chat_reply(SCRIPT)))
    return server, len(server.runner.loaded.model.tokenizer.encode(SCRIPT[: CUTS[cut]]))


@pytest.mark.parametrize("cut", CUTS)
def test_openai_non_streamed(serve_fake, cut):
    server, max_tokens = serve_cut(serve_fake, cut)
    reply = server.openai().chat.completions.create(model="m", messages=USER, tools=[WEATHER], max_tokens=max_tokens)
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content == "Checking both."
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert calls[0] == ("get_weather", PARIS) and len(calls) == (2 if cut == "parameter_name" else 1)


@pytest.mark.parametrize("cut", CUTS)
def test_openai_streamed(serve_fake, cut):
    server, max_tokens = serve_cut(serve_fake, cut)
    chunks = list(server.openai().chat.completions.create(
        model="m", messages=USER, tools=[WEATHER], max_tokens=max_tokens, stream=True
    ))  # fmt: skip
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Checking both."
    arguments: dict[int, str] = {}
    for chunk in chunks:
        for call in chunk.choices[0].delta.tool_calls or ():
            arguments[call.index] = arguments.get(call.index, "") + (call.function.arguments or "")
    assert json.loads(arguments[0]) == PARIS and all(json.loads(a) is not None for a in arguments.values())
    assert chunks[-1].choices[0].finish_reason == "length"


def anthropic_client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic(serve_fake, cut, stream):
    server, max_tokens = serve_cut(serve_fake, cut)
    body = dict(
        model="m", max_tokens=max_tokens, messages=USER, tools=[ANTHROPIC_WEATHER],
        thinking={"type": "enabled", "budget_tokens": 1024},
    )  # fmt: skip
    sdk = anthropic_client(server)
    if stream:
        with sdk.messages.stream(**body) as events:
            message = events.get_final_message()
    else:
        message = sdk.messages.create(**body)
    assert message.stop_reason == "max_tokens"
    texts = [b.text for b in message.content if b.type == "text"]
    uses = [b for b in message.content if b.type == "tool_use"]
    assert texts == ["Checking both."]
    assert uses[0].input == PARIS and len(uses) == (2 if cut == "parameter_name" else 1)
