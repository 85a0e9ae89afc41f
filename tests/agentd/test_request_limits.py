"""Requests that used to reach the sampler, the decoder or the tokenizer and end in a 500 or in
minutes of work (issue 10): sampling parameters at float limits, deep nesting, prompts whose
size proves them too long, and tool schemas the fuzz test (test_fuzz.py) found."""

from __future__ import annotations

import json
import re
import time
from typing import Iterator

import pytest

from agentd.json_depth import MAX_NESTING
from tests.agentd.conftest import LiveServer
from tests.agentd.scripted import (
    ANTHROPIC_PATH, CHAT, COMPLETION, MESSAGES, OPENAI_PATH, PROMPT, REPLY, anthropic_error, assert_serves, said,
    scripted_model, start_scripted,
)  # fmt: skip
from tests.agentd.test_app import assert_error
from tests.agentd.test_openai import sse_data


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    live = start_scripted()
    yield live
    live.close()


def with_value(body: dict, field: str, literal: str) -> bytes:
    """`body` with one more field whose value is the JSON text `literal` as written (1e400)."""
    return (json.dumps(body)[:-1] + f', "{field}": {literal}}}').encode()


# -- sampling parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-38, 1e-320])
def test_a_vanishing_temperature_answers_greedily_on_every_api(server, temperature):
    """Used to be 500 "logits contain +inf" (NaN at 1e-320)."""
    status, _, body = server.request("POST", OPENAI_PATH, {**CHAT, "temperature": temperature})
    assert status == 200 and body["choices"][0]["message"]["content"] == REPLY, body
    status, _, raw = server.request("POST", OPENAI_PATH, {**CHAT, "temperature": temperature, "stream": True})
    events = sse_data(raw)
    assert events[-1] == "[DONE]" and not [e for e in events if "error" in e], events
    completion = {"prompt": PROMPT, "max_tokens": 16, "temperature": temperature}
    status, _, body = server.request("POST", "/v1/completions", completion)
    assert status == 200 and body["choices"][0]["text"] == COMPLETION, body
    status, _, body = server.request("POST", ANTHROPIC_PATH, {**MESSAGES, "temperature": temperature})
    assert status == 200 and body["content"][-1]["text"].endswith(REPLY), body


@pytest.mark.parametrize(
    "field, literal",
    [("repetition_penalty", "1e-320"), ("repetition_penalty", "0"), ("repetition_penalty", "1e30"),
     ("temperature", "1e30"), ("temperature", "101"), ("temperature", "1e400"), ("temperature", "-1e-320"),
     ("top_p", "1e400"), ("presence_penalty", "-1e308"), ("min_p", "2")],
)  # fmt: skip
def test_sampling_parameters_out_of_range_are_400_naming_them(server, field, literal):
    error = assert_error(*server.request("POST", OPENAI_PATH, with_value(CHAT, field, literal))[::2], 400)
    assert error["param"] == field and field in error["message"]
    completion = with_value({"prompt": PROMPT, "max_tokens": 4}, field, literal)
    assert assert_error(*server.request("POST", "/v1/completions", completion)[::2], 400)["param"] == field
    assert_serves(server)


def test_anthropic_sampling_parameters_out_of_range_are_400(server):
    for field, value in (("temperature", 1e30), ("top_p", 0), ("top_k", -1)):
        status, _, reply = server.request("POST", ANTHROPIC_PATH, {**MESSAGES, field: value})
        assert field in anthropic_error(status, reply, 400, "invalid_request_error")
    status, _, body = server.request("POST", ANTHROPIC_PATH, {**MESSAGES, "top_k": 10**30})  # beyond the vocabulary: off
    assert status == 200, body


# -- nesting ---------------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


HI = '"messages":[{"role":"user","content":"hi"}]'
TOOL_USE = '{"type":"tool_use","id":"t","name":"f","input":{"x":%s}}'


@pytest.mark.parametrize(
    "path, body",
    [
        (OPENAI_PATH, '{' + HI + ',"max_tokens":2,"unknown":%s}'),
        (OPENAI_PATH, '{' + HI + ',"max_tokens":2,"chat_template_kwargs":{"x":%s}}'),
        (OPENAI_PATH, '{' + HI + ',"max_tokens":2,"tools":[{"type":"function","function":{"name":"f",'
                      '"parameters":{"type":"object","default":%s}}}]}'),
        ("/v1/completions", '{"prompt":"hi","max_tokens":2,"x":%s}'),
        (ANTHROPIC_PATH, '{' + HI + ',"max_tokens":2,"metadata":{"x":%s}}'),
        (ANTHROPIC_PATH, '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[' + TOOL_USE + ']},'
                         '{"role":"user","content":"ok"}],"max_tokens":2}'),
        ("/v1/messages/count_tokens", '{' + HI + ',"x":%s}'),
        ("/tokenize", '{"content":"hi","x":%s}'),
        ("/apply-template", '{' + HI + ',"x":%s}'),
    ],
)  # fmt: skip
def test_deep_nesting_is_400_not_a_recursion_error(server, path, body):
    """5000 levels in any of these places used to be 500 RecursionError from decode_body."""
    status, _, reply = server.request("POST", path, (body % nested(5000)).encode())
    message = reply["error"]["message"]
    assert status == 400 and "nesting too deep" in message and str(MAX_NESTING) in message, reply


def test_nesting_up_to_the_limit_is_served_and_brackets_in_strings_do_not_count(server):
    body = '{"messages":[{"role":"user","content":"%s"}],"max_tokens":16,"x":%s}'  # the outer object is level 1
    status, _, reply = server.request("POST", OPENAI_PATH, (body % ("[{" * 1000, nested(MAX_NESTING - 1))).encode())
    assert status == 200, reply
    status, _, reply = server.request("POST", OPENAI_PATH, (body % ("hi", nested(MAX_NESTING))).encode())
    assert status == 400 and "nesting too deep" in reply["error"]["message"]


# -- prompts too long to be worth tokenizing -------------------------------------------------------


def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(serve_fake):
    """One 30 MB word took 27 s to tokenize before its 400; its size alone proves it too long
    (the fake vocabulary's longest token is 16 bytes: 5 MB is over 300,000 tokens)."""
    model = scripted_model(context_length=4096)
    live = serve_fake(model)
    encoded: list[int] = []
    encode = model.tokenizer.encode
    model.tokenizer.encode = lambda text: encoded.append(len(text)) or encode(text)
    word = "w" * 5_000_000
    started = time.monotonic()
    error = assert_error(*live.request("POST", OPENAI_PATH, {**CHAT, "messages": said(word)})[::2], 400)
    assert error["code"] == "context_length_exceeded" and "at least" in error["message"] and "4096" in error["message"]
    error = assert_error(*live.request("POST", "/v1/completions", {"prompt": word, "max_tokens": 2})[::2], 400)
    assert error["code"] == "context_length_exceeded"
    assert_error(*live.request("POST", "/apply-template", {"messages": said(word)})[::2], 400)
    for path in (ANTHROPIC_PATH, "/v1/messages/count_tokens"):
        status, _, body = live.request("POST", path, {**MESSAGES, "messages": said(word)})
        message = anthropic_error(status, body, 400, "invalid_request_error")
        assert re.fullmatch(r"prompt is too long: \d+ tokens > 4095 maximum", message)
    assert max(encoded, default=0) < 100_000, "the huge prompt was tokenized"
    assert time.monotonic() - started < 20
    assert model.forward_calls == 0


def test_a_prompt_within_the_byte_bound_is_tokenized_and_checked_as_before(serve_fake):
    live = serve_fake(scripted_model(context_length=4096))
    text = "word " * 800  # 4000 bytes (and tokens): the bound (4096 tokens * 16 bytes) proves nothing
    status, _, body = live.request("POST", OPENAI_PATH, {**CHAT, "messages": said(text)})
    assert status == 200, body
    error = assert_error(*live.request("POST", OPENAI_PATH, {**CHAT, "messages": said(text * 3)})[::2], 400)
    assert error["code"] == "context_length_exceeded" and "at least" not in error["message"]


# -- tool schemas the fuzz test found --------------------------------------------------------------


@pytest.mark.parametrize("length", ["[1]", '{"a": 1}', '"5"', "1e400", "-1", "2.5", "true"])
def test_a_string_length_that_is_not_a_count_is_400(server, length):
    """maxLength [1] in a tool parameter was int([1]) in the grammar writer: 500."""
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": "LENGTH"}}}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    body = json.dumps({**CHAT, "tools": [tool], "tool_choice": "required"}).replace('"LENGTH"', length)
    assert assert_error(*server.request("POST", OPENAI_PATH, body.encode())[::2], 400)["param"].startswith("tools")
    anthropic_tool = {"name": "f", "input_schema": schema}
    body = json.dumps({**MESSAGES, "tools": [anthropic_tool], "tool_choice": {"type": "any"}}).replace('"LENGTH"', length)
    status, _, reply = server.request("POST", ANTHROPIC_PATH, body.encode())
    anthropic_error(status, reply, 400, "invalid_request_error")


@pytest.mark.parametrize("required", [[{"a": 1}], [["city"]], ["city", 3]])
def test_required_parameters_that_are_not_names_are_400(server, required):
    """An object in a tool's `required` list was looked up in its properties: unhashable, 500."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": required}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    for choice in ("auto", "required"):
        status, _, reply = server.request("POST", OPENAI_PATH, {**CHAT, "tools": [tool], "tool_choice": choice})
        error = assert_error(status, reply, 400)
        assert error["param"] == "tools" and "required" in error["message"]
    anthropic_tools = [{"name": "f", "input_schema": schema}]
    status, _, reply = server.request("POST", ANTHROPIC_PATH, {**MESSAGES, "tools": anthropic_tools})
    assert "required" in anthropic_error(status, reply, 400, "invalid_request_error")
