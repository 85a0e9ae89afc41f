"""/v1/responses with a scripted model: the exact items and event order of a turn that thinks,
answers and calls a tool, and `response.in_progress` while a long prompt is processed."""

from __future__ import annotations

import json

from tests.agentd.fakes import FakeModel, chat_reply
from tests.agentd.test_openai import CALL_PARIS

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]},
}  # fmt: skip
SCRIPT = "Need weather.\n</think>\n\nChecking." + CALL_PARIS


def test_a_sealed_turn_streams_its_items_in_order_and_ends_them_together(serve_fake, tmp_path):
    server = serve_fake(FakeModel(chat_reply(SCRIPT), step_seconds=0.01), cache_dir=str(tmp_path),
                        prefill_chunk=4, keepalive_seconds=0.02)  # fmt: skip
    events = list(server.openai().responses.create(
        model="m", input=[{"role": "user", "content": "p" * 100}], tools=[WEATHER], stream=True, store=False,
        include=["reasoning.encrypted_content"],
    ))  # fmt: skip
    types = [e.type for e in events]
    first_item = types.index("response.output_item.added")
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[2:first_item] and set(types[2:first_item]) == {"response.in_progress"}  # the prompt took a while
    final = events[-1].response
    assert types[-1] == "response.completed" and final.status == "completed"
    reasoning, message, call = final.output
    assert reasoning.content[0].text == reasoning.summary[0].text == "Need weather."
    assert reasoning.encrypted_content and message.content[0].text == "Checking."
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris", "days": 3})
    # Sealed: every item's output_item.done comes at the end, in order, the blob already in item 0.
    done = [e for e in events if e.type == "response.output_item.done"]
    assert types[-4:-1] == ["response.output_item.done"] * 3
    assert [e.output_index for e in done] == [0, 1, 2]
    assert done[0].item.encrypted_content == reasoning.encrypted_content
    assert [e.output_index for e in events if e.type == "response.output_item.added"] == [0, 1, 2]
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert arguments == call.arguments
    thinking = server.runner.loaded.model.tokenizer.encode("Need weather.\n</think>\n\n")  # all before the answer
    assert final.usage.output_tokens_details.reasoning_tokens == len(thinking)


def test_without_a_seal_each_item_ends_at_once_and_the_body_agrees(serve_fake, tmp_path):
    server = serve_fake(FakeModel(chat_reply(SCRIPT)), cache_dir=str(tmp_path))
    client = server.openai()
    events = list(client.responses.create(model="m", input="hi", tools=[WEATHER], stream=True))
    types = [e.type for e in events]
    reasoning_done = types.index("response.output_item.done")
    assert reasoning_done < types.index("response.output_text.delta")  # before the answer began
    assert events[reasoning_done].item.encrypted_content is None
    body = client.responses.create(model="m", input="hi", tools=[WEATHER])
    streamed = events[-1].response
    assert [i.model_dump(exclude={"id", "call_id"}) for i in body.output] == [
        i.model_dump(exclude={"id", "call_id"}) for i in streamed.output
    ]
    assert body.usage == streamed.usage and client.responses.retrieve(body.id).output_text == "Checking."
