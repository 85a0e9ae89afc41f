"""/v1/responses end to end: the tiny model (random weights, real Qwen3.5 vocabulary and template)
behind the daemon with a session cache, driven by the openai SDK (`client.responses`)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest

from agentd.config import ServeConfig
from agentd.loader import prepare
from agentd.prefix_cache import PrefixCache
from tests.agentd.conftest import FORECAST_SCHEMA, LiveServer, check_forecast_arguments

FORECAST = {"type": "function", "name": "forecast", "description": "Weather forecast", "parameters": FORECAST_SCHEMA}
FORCED = {"type": "function", "name": "forecast"}
QUESTION = "What is the weather in Paris?"
ENCRYPTED = ["reasoning.encrypted_content"]
YES_NO = {  # a format the model must finish: the response completes instead of hitting the limit
    "format": {
        "type": "json_schema",
        "name": "answer",
        "schema": {"type": "object", "properties": {"yes": {"type": "boolean"}}, "required": ["yes"],
                   "additionalProperties": False},
    }
}  # fmt: skip


def start_server(tiny_model, cache_dir: Path, disk: bool = False, **config: Any) -> LiveServer:
    """With a session cache of its own (RAM only unless `disk`), so no other test's checkpoints help."""

    def load():
        loaded = prepare(tiny_model, name="agentd-tiny", n_ctx=4096)
        cache = PrefixCache.open(tiny_model, 256, str(cache_dir) if disk else None, 256 if disk else 0, 2048)
        return dataclasses.replace(loaded, cache=cache)

    server = LiveServer(ServeConfig(port=0, cache_dir=str(cache_dir), **config), load)
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("responses")


@pytest.fixture(scope="module")
def server(tiny_model, cache_dir) -> Iterator[LiveServer]:
    live = start_server(tiny_model, cache_dir)
    yield live
    live.close()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server.openai()


def forced_call(client: openai.OpenAI, **request: Any) -> Any:
    return client.responses.create(
        model="m", input=QUESTION, tools=[FORECAST], tool_choice=FORCED, max_output_tokens=80, temperature=0, **request
    )


def answered(response: Any) -> list[dict[str, Any]]:
    """The response's output items as a client sends them back, with a result for each call."""
    items = [item.model_dump(exclude_none=True) for item in response.output]
    results = [{"type": "function_call_output", "call_id": item["call_id"], "output": "Sunny, 21 C"}
               for item in items if item["type"] == "function_call"]  # fmt: skip
    assert results, "the forced call is missing"
    return items + results


def turn_tokens(response: Any) -> int:
    """Tokens the turn consumed (prompt + output) that its end-of-generation checkpoint holds;
    a grammar-completed output's last token is sampled but never fed to the model."""
    return response.usage.input_tokens + response.usage.output_tokens - 1


# -- one turn -----------------------------------------------------------------------------------


def test_a_streamed_answer_is_a_well_formed_event_sequence(client):
    events = list(client.responses.create(model="m", input=QUESTION, text=YES_NO, temperature=0, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    final = events[-1].response
    assert final.status == "completed" and [item.type for item in final.output] == ["message"]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert json.loads(text)["yes"] in (True, False) and final.output[0].content[0].text == text
    added, done = types.index("response.output_item.added"), types.index("response.output_item.done")
    assert types[added:done + 1] == [
        "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * (done - added - 4),
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
    ]  # fmt: skip
    usage = final.usage
    assert usage.output_tokens > 0 and usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0  # a format turns thinking off


def test_reasoning_streams_as_its_own_item_and_counts(client):
    with client.responses.stream(model="m", input=QUESTION, max_output_tokens=12, temperature=0) as stream:
        events = list(stream)
    final = events[-1].response
    assert events[-1].type == "response.incomplete" and final.incomplete_details.reason == "max_output_tokens"
    reasoning = final.output[0]
    assert reasoning.type == "reasoning" and reasoning.content[0].type == "reasoning_text"
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert deltas and reasoning.content[0].text == deltas and reasoning.summary[0].text == deltas
    usage = final.usage
    assert usage.output_tokens == 12 and 0 < usage.output_tokens_details.reasoning_tokens <= 12
    assert reasoning.encrypted_content is None  # not asked for


def test_a_forced_call_streams_arguments_that_validate(client):
    events = list(forced_call(client, stream=True, store=False, parallel_tool_calls=False))
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    arguments = "".join(e.delta for e in deltas)
    check_forecast_arguments(json.loads(arguments))
    final = events[-1].response
    assert events[-1].type == "response.completed"
    call = final.output[-1]
    assert (call.type, call.name, call.arguments, call.status) == ("function_call", "forecast", arguments, "completed")
    assert call.call_id.startswith("call_") and all(e.item_id == call.id for e in deltas)
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == arguments


def test_greedy_output_equals_the_chat_endpoints(client):
    """The same conversation through both APIs renders the same prompt and so the same output."""
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Answer briefly."}]},
        {"role": "user", "content": QUESTION},
        {"type": "function_call", "call_id": "call_a", "name": "forecast", "arguments": '{"city": "Paris", "days": 1}'},
        {"type": "function_call_output", "call_id": "call_a", "output": "Sunny, 21 C"},
    ]
    response = client.responses.create(model="m", instructions="You are terse.", input=items, tools=[FORECAST],
                                       max_output_tokens=16, temperature=0)  # fmt: skip
    chat = client.chat.completions.create(
        model="m", max_tokens=16, temperature=0,
        tools=[{"type": "function", "function": {k: v for k, v in FORECAST.items() if k != "type"}}],
        messages=[
            {"role": "system", "content": "You are terse.\n\nAnswer briefly."},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "forecast", "arguments": items[2]["arguments"]}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": "Sunny, 21 C"},
        ],
    )  # fmt: skip
    message = chat.choices[0].message
    reasoning = next(item for item in response.output if item.type == "reasoning").content[0].text
    assert reasoning == message.reasoning_content
    assert response.output_text == (message.content or "")
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens


# -- conversations ------------------------------------------------------------------------------


def test_a_second_turn_with_the_call_output(client):
    first = forced_call(client, store=False)
    second = client.responses.create(model="m", input=[{"role": "user", "content": QUESTION}, *answered(first)],
                                     tools=[FORECAST], max_output_tokens=3, store=False)  # fmt: skip
    assert second.status == "incomplete" and second.usage.output_tokens == 3
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_previous_response_id_resumes_at_the_end_of_the_previous_turn(client):
    first = forced_call(client)
    results = [item for item in answered(first) if item["type"] == "function_call_output"]
    second = client.responses.create(model="m", previous_response_id=first.id, input=results, tools=[FORECAST],
                                     max_output_tokens=2)  # fmt: skip
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens_details.cached_tokens >= turn_tokens(first)
    # The chain goes on: the third turn resumes at the end of the second.
    third = client.responses.create(model="m", previous_response_id=second.id, input="Thanks. And tomorrow?",
                                    tools=[FORECAST], max_output_tokens=2)  # fmt: skip
    assert third.usage.input_tokens_details.cached_tokens >= second.usage.input_tokens + 1


def test_encrypted_reasoning_resumes_at_the_end_of_the_previous_turn(client):
    """Codex's way: store false, the whole conversation resent with the reasoning item's blob."""
    first = forced_call(client, store=False, include=ENCRYPTED)
    reasoning = first.output[0]
    assert reasoning.type == "reasoning" and reasoning.encrypted_content  # item 0 even with thinking off
    items = [{"role": "user", "content": QUESTION}, *answered(first)]
    second = client.responses.create(model="m", input=items, tools=[FORECAST], max_output_tokens=2, store=False,
                                     include=ENCRYPTED)  # fmt: skip
    assert second.usage.input_tokens_details.cached_tokens >= turn_tokens(first)
    # A reasoning item sent back with only its blob (other clients) works the same.
    items[1] = {"type": "reasoning", "encrypted_content": reasoning.encrypted_content}
    third = client.responses.create(model="m", input=items, tools=[FORECAST], max_output_tokens=2, store=False)
    assert third.usage.input_tokens == second.usage.input_tokens


def test_a_tampered_blob_is_ignored_and_the_turn_rendered_by_the_template(server, client):
    first = forced_call(client, store=False, include=ENCRYPTED)
    items = [{"role": "user", "content": QUESTION}, *answered(first)]
    blob = items[1]["encrypted_content"]
    items[1]["encrypted_content"] = blob[:10] + ("A" if blob[10] != "A" else "B") + blob[11:]
    second = client.responses.create(model="m", input=items, tools=[FORECAST], max_output_tokens=2, store=False)
    assert second.status == "incomplete"
    calls = [item for item in first.output if item.type == "function_call"]
    chat_messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "", "reasoning_content": "", "tool_calls": [
            {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls]},
        *[{"role": "tool", "tool_call_id": c.call_id, "content": "Sunny, 21 C"} for c in calls],
    ]  # fmt: skip
    chat_tools = [{"type": "function", "function": {k: v for k, v in FORECAST.items() if k != "type"}}]
    status, _, plain = server.request("POST", "/apply-template", {"messages": chat_messages, "tools": chat_tools})
    assert status == 200 and second.usage.input_tokens == plain["num_tokens"]
    assert second.usage.input_tokens_details.cached_tokens < turn_tokens(first)
    # The same blob from another model (or daemon key) is ignored the same way.
    items[1]["encrypted_content"] = blob
    items[0]["content"] = QUESTION + " "  # the turn's context changed: the blob is still the turn's own ids
    third = client.responses.create(model="m", input=items, tools=[FORECAST], max_output_tokens=2, store=False)
    assert third.status == "incomplete"


def test_an_edited_reply_does_not_take_the_blob(client):
    """Never a wrong prompt: the client changed the call, so the sealed ids are not its."""
    first = forced_call(client, store=False, include=ENCRYPTED)
    items = [{"role": "user", "content": QUESTION}, *answered(first)]
    intact = client.responses.create(model="m", input=items, tools=[FORECAST], max_output_tokens=1, store=False)
    items[2]["arguments"] = json.dumps({"city": "Oslo", "days": 2})
    edited = client.responses.create(model="m", input=items, tools=[FORECAST], max_output_tokens=1, store=False)
    assert intact.usage.input_tokens_details.cached_tokens >= turn_tokens(first)
    assert edited.usage.input_tokens_details.cached_tokens < turn_tokens(first)


def test_stored_responses_can_be_read_deleted_and_survive_a_restart(tiny_model, tmp_path):
    server = start_server(tiny_model, tmp_path, disk=True)
    client = server.openai()
    first = forced_call(client, metadata={"k": "v"})
    got = client.responses.retrieve(first.id)
    assert got.model_dump() == first.model_dump() and got.metadata == {"k": "v"}
    assert forced_call(client, store=False).id not in {r for r in _stored_ids(server)}
    server.close()
    server = start_server(tiny_model, tmp_path, disk=True)  # a restart: same cache directory, memo gone
    client = server.openai()
    assert client.responses.retrieve(first.id).id == first.id
    results = [item for item in answered(first) if item["type"] == "function_call_output"]
    second = client.responses.create(model="m", previous_response_id=first.id, input=results, tools=[FORECAST],
                                     max_output_tokens=2)  # fmt: skip
    assert second.usage.input_tokens_details.cached_tokens >= turn_tokens(first)  # the stored ids, the disk checkpoint
    deleted = client.responses.delete(first.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="m", previous_response_id=first.id, input="hi", max_output_tokens=1)
    assert err.value.body["code"] == "previous_response_not_found"
    server.close()


def _stored_ids(server: LiveServer) -> list[str]:
    from agentd.api.responses import RESPONSES

    store = server.run(server._app_runner.app[RESPONSES].store())
    return [row[0] for row in store._db.execute("SELECT id FROM responses")]


# -- tools --------------------------------------------------------------------------------------


def test_namespace_tools_are_offered_and_called_back_with_their_namespace(client):
    agents = {"type": "namespace", "name": "multi_agent_v1", "description": "Agents", "tools": [
        {"type": "function", "name": "close_agent", "parameters": {
            "type": "object", "properties": {"id": {"type": "string", "maxLength": 8}}, "required": ["id"],
            "additionalProperties": False}},
    ]}  # fmt: skip
    tools = [agents, {"type": "web_search", "external_web_access": False}, FORECAST]
    first = client.responses.create(model="m", input=QUESTION, tools=tools, max_output_tokens=60, temperature=0,
                                    tool_choice={"type": "function", "name": "close_agent"},
                                    include=ENCRYPTED, store=False)  # fmt: skip
    call = first.output[-1]
    assert (call.type, call.name, call.namespace) == ("function_call", "close_agent", "multi_agent_v1")
    assert set(json.loads(call.arguments)) == {"id"}
    items = [{"role": "user", "content": QUESTION}, *answered(first)]
    second = client.responses.create(model="m", input=items, tools=tools, max_output_tokens=1, store=False)
    assert second.usage.input_tokens_details.cached_tokens >= turn_tokens(first)


def test_a_custom_tool_call_carries_raw_input(client):
    patch = {"type": "custom", "name": "apply_patch", "description": "Edit files", "format": {"type": "text"}}
    first = client.responses.create(model="m", input=QUESTION, tools=[patch], max_output_tokens=40, temperature=0,
                                    tool_choice={"type": "custom", "name": "apply_patch"}, stream=True)  # fmt: skip
    events = list(first)
    final = events[-1].response
    call = next(item for item in final.output if item.type == "custom_tool_call")
    assert call.name == "apply_patch" and isinstance(call.input, str)
    done = next(e for e in events if e.type == "response.custom_tool_call_input.done")
    assert done.input == call.input
    items = [{"role": "user", "content": QUESTION}, call.model_dump(exclude_none=True),
             {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done"}]  # fmt: skip
    second = client.responses.create(model="m", input=items, tools=[patch], max_output_tokens=1)
    assert second.usage.input_tokens > final.usage.input_tokens


def test_a_custom_tools_grammar_constrains_its_input(client):
    lark = 'start: "*** Begin Patch\\n" change{1,3} "*** End Patch"\nchange: /[+-]/ /[a-z]{1,8}/ "\\n"\n'
    patch = {"type": "custom", "name": "apply_patch",
             "format": {"type": "grammar", "syntax": "lark", "definition": lark}}  # fmt: skip
    for seed in range(2):
        response = client.responses.create(
            model="m", input=QUESTION, tools=[patch], tool_choice={"type": "custom", "name": "apply_patch"},
            parallel_tool_calls=False, max_output_tokens=200, extra_body={"seed": seed},
        )
        call = response.output[-1]
        assert response.status == "completed" and call.type == "custom_tool_call"
        assert re.fullmatch(r"\*\*\* Begin Patch\n(?:[+-][a-z]{1,8}\n){1,3}\*\*\* End Patch", call.input), call.input
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="m", input=QUESTION, tools=[{**patch, "format": {"type": "grammar"}}])
    assert err.value.body["param"] == "tools[0]"


def test_reasoning_effort_none_turns_thinking_off(client):
    response = client.responses.create(model="m", input=QUESTION, reasoning={"effort": "none"}, max_output_tokens=4)
    assert [item.type for item in response.output] == ["message"]
    assert response.usage.output_tokens_details.reasoning_tokens == 0


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "frobnicate"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": "hi"},
                    {"type": "function_call_output", "call_id": "call_x", "output": "?"}]}, "input[1]"),
        ({"input": "hi", "previous_response_id": "resp_unknown"}, "previous_response_id"),
        ({"model": "m"}, None),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0]"),
        ({"input": "hi", "tool_choice": {"type": "web_search"}, "tools": [{"type": "web_search"}]}, "tool_choice"),
    ],
)  # fmt: skip
def test_bad_input_gets_a_400_and_serving_goes_on(server, body, param):
    status, _, reply = server.request("POST", "/v1/responses", {"model": "m", **body})
    assert status == 400, reply
    assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["message"]
    assert reply["error"]["param"] == param
    status, _, reply = server.request("POST", "/v1/responses", {"input": "hi", "max_output_tokens": 1})
    assert status == 200 and reply["usage"]["output_tokens"] == 1


def test_a_prompt_over_the_context_fails_the_way_codex_understands(client):
    too_long = "word " * 5000
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="m", input=too_long)
    assert err.value.body["code"] == "context_length_exceeded" and "4096" in err.value.body["message"]
    events = list(client.responses.create(model="m", input=too_long, stream=True))
    assert [e.type for e in events] == ["response.created", "response.in_progress", "response.failed"]
    assert events[-1].response.error.code == "context_length_exceeded"


def test_unknown_ids_get_404(server):
    for method in ("GET", "DELETE"):
        status, _, reply = server.request(method, "/v1/responses/resp_nothing")
        assert status == 404 and "resp_nothing" in reply["error"]["message"]
