"""Anthropic requests -> chat-template messages, checked against an independent reference: the
same conversation written as an OpenAI request, converted by openai_wire and rendered by the same
real Qwen3.5 template, must give the same prompt text."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from agentd.api import anthropic_wire, openai_wire
from agentd.plan import ChatInput, PlanError, ToolChoice, render_chat
from engine.chat_template import DEFAULT_TEMPLATE, ChatTemplate
from tests.agentd.fakes import FakeTokenizer

LOADED = SimpleNamespace(model=SimpleNamespace(chat_template=ChatTemplate(DEFAULT_TEMPLATE), tokenizer=FakeTokenizer()))
EPHEMERAL = {"type": "ephemeral"}
SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
READ_TOOL = {"name": "Read", "description": "Read a file", "input_schema": SCHEMA}
NO_THINKING = {"enable_thinking": False}  # Anthropic's default; the OpenAI side must ask for it
BILLING = {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.330.aad; cc_entrypoint=sdk-cli;"}


def anthropic_prompt(body: dict[str, Any]) -> str:
    req = anthropic_wire.decode_messages(json.dumps({"model": "m", "max_tokens": 8, **body}).encode())
    return render_chat(LOADED, anthropic_wire.chat_input(req)).text


def openai_prompt(body: dict[str, Any]) -> str:
    req = openai_wire.decode_chat(json.dumps({"model": "m", **body}).encode())
    return render_chat(LOADED, openai_wire.chat_input(req)).text


def text(value: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": value, **extra}


def test_a_tool_loop_renders_like_its_openai_equivalent():
    anthropic = {
        "system": [text("You are terse.", cache_control=EPHEMERAL), text("\nAnswer in English.")],
        "tools": [READ_TOOL],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [
            {"role": "user", "content": "Show me a.py and b.py"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Read both files.", "signature": "sig"},
                text("Reading them."),
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.py"}},
                {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"path": "b.py"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "print(1)"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                 "content": [text("No such file", cache_control=EPHEMERAL)]},
            ]},
        ],
    }  # fmt: skip
    openai = {
        "tools": [{"type": "function", "function": {"name": "Read", "description": "Read a file", "parameters": SCHEMA}}],
        "messages": [
            {"role": "system", "content": "You are terse.\nAnswer in English."},
            {"role": "user", "content": "Show me a.py and b.py"},
            {"role": "assistant", "content": "Reading them.", "reasoning_content": "Read both files.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": '{"path": "a.py"}'}},
                {"id": "toolu_2", "type": "function", "function": {"name": "Read", "arguments": '{"path": "b.py"}'}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "print(1)"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: No such file"},
        ],
    }  # fmt: skip
    prompt = anthropic_prompt(anthropic)
    assert prompt == openai_prompt(openai)
    assert "<think>\nRead both files.\n</think>" in prompt  # the thinking of the current tool loop is kept
    assert "<parameter=path>\nb.py\n</parameter>" in prompt and prompt.endswith("<think>\n")


def test_text_after_tool_results_follows_them_as_a_user_turn():
    loop = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "x"}}]},
        {"role": "user", "content": [text("<system-reminder>tidy up</system-reminder>"),
                                     {"type": "tool_result", "tool_use_id": "t1", "content": "data"}]},
    ]  # fmt: skip
    openai = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "Read", "arguments": '{"path": "x"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "data"},
        {"role": "user", "content": "<system-reminder>tidy up</system-reminder>"},
    ]  # fmt: skip
    tools = [{"type": "function", "function": {"name": "Read", "description": "Read a file", "parameters": SCHEMA}}]
    assert anthropic_prompt({"messages": loop, "tools": [READ_TOOL]}) == openai_prompt(
        {"messages": openai, "tools": tools, "chat_template_kwargs": NO_THINKING}
    )


def test_content_shape_and_cache_control_do_not_change_the_prompt():
    def conversation(user: Any, result: Any, system: Any) -> dict[str, Any]:
        return {"system": system, "tools": [READ_TOOL], "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Read", "input": {"path": "p"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": result}]},
        ]}  # fmt: skip

    strings = anthropic_prompt(conversation("Hello there", "line 1\nline 2", "Be brief."))
    blocks = anthropic_prompt(conversation(
        [text("Hello "), text("there", cache_control=EPHEMERAL)],
        [text("line 1\n", cache_control=EPHEMERAL), text("line 2")],
        [text("Be brief.", cache_control=EPHEMERAL)],
    ))  # fmt: skip
    assert strings == blocks
    assert anthropic_prompt(conversation("Hello there!", "line 1\nline 2", "Be brief.")) != strings


def test_the_billing_header_block_is_dropped():
    messages = [{"role": "user", "content": "hi"}]
    with_header = anthropic_prompt({"system": [BILLING, text("Be brief.")], "messages": messages})
    other_session = {**BILLING, "text": BILLING["text"].replace(".aad", ".f8c")}
    assert with_header == anthropic_prompt({"system": [other_session, text("Be brief.")], "messages": messages})
    assert with_header == anthropic_prompt({"system": "Be brief.", "messages": messages})
    assert "billing" not in with_header


def test_system_role_messages_join_the_system_prompt():
    messages = [
        {"role": "user", "content": [text("<system-reminder>x</system-reminder>\n"), text("list the files here")]},
        {"role": "system", "content": [text("# Environment\ncwd: /src", cache_control=EPHEMERAL)]},
    ]
    prompt = anthropic_prompt({"system": "You are an agent.", "messages": messages})
    expected = openai_prompt({"chat_template_kwargs": NO_THINKING, "messages": [
        {"role": "system", "content": "You are an agent.\n\n# Environment\ncwd: /src"},
        {"role": "user", "content": "<system-reminder>x</system-reminder>\nlist the files here"},
    ]})  # fmt: skip
    assert prompt == expected


def test_claude_codes_second_request_extends_the_first():
    """claude-code.md: request 2 turns the system message's blocks into a string and moves
    cache_control, yet request 1's prompt must be a prefix of request 2's."""
    glob = {"name": "Glob", "description": "Find files", "input_schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "properties": {"pattern": {"type": "string"}}, "required": ["pattern"], "additionalProperties": False}}  # fmt: skip
    placeholder = {"name": "DeferredToolPlaceholder", "description": "deferred", "defer_loading": True,
                   "input_schema": {"type": "object"}}  # fmt: skip
    user = {"role": "user", "content": [text("<system-reminder>\nAttribution\n</system-reminder>\n"), text("list")]}
    env = "# Environment\nYou are powered by the model agentd."
    common = {
        "system": [BILLING, text("You are a Claude agent.", cache_control=EPHEMERAL), text("\nBe helpful.")],
        "tools": [glob, placeholder],
        "metadata": {"user_id": json.dumps({"device_id": "ab" * 32, "account_uuid": "", "session_id": "s"})},
        "thinking": {"type": "adaptive", "display": "updates"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "max_tokens": 32000,
    }
    system_message = {"role": "system", "content": [text(env, cache_control=EPHEMERAL)]}
    first = anthropic_prompt({**common, "messages": [user, system_message]})
    second = anthropic_prompt({**common, "messages": [
        user,
        {"role": "system", "content": env},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_9", "name": "Glob", "input": {"pattern": "*"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "main.py\nREADME.md",
                                      "cache_control": EPHEMERAL}]},
    ]})  # fmt: skip
    assert second.startswith(first) and len(second) > len(first)
    assert '"$schema"' in first and "DeferredToolPlaceholder" in first and first.endswith("<think>\n")


@pytest.mark.parametrize(
    ("thinking", "enabled"),
    [({"type": "enabled", "budget_tokens": 1024}, True), ({"type": "adaptive"}, True), ({"type": "disabled"}, False),
     (None, False)],
)
def test_thinking_switches_the_templates_thinking(thinking, enabled):
    body = {"messages": [{"role": "user", "content": "hi"}]}
    if thinking is not None:
        body["thinking"] = thinking
    req = anthropic_wire.decode_messages(json.dumps({"max_tokens": 8, **body}).encode())
    assert anthropic_wire.chat_input(req).template_kwargs == {"enable_thinking": enabled}
    assert anthropic_prompt(body).endswith("<think>\n" if enabled else "<think>\n\n</think>\n\n")


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, ToolChoice("auto")),
        ({"type": "auto"}, ToolChoice("auto")),
        ({"type": "any", "disable_parallel_tool_use": True}, ToolChoice("required", parallel=False)),
        ({"type": "tool", "name": "Read"}, ToolChoice("named", "Read")),
        ({"type": "none"}, ToolChoice("none")),
    ],
)
def test_tool_choice(choice, expected):
    body: dict[str, Any] = {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "tools": [READ_TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    chat = anthropic_wire.chat_input(anthropic_wire.decode_messages(json.dumps(body).encode()))
    assert chat.tool_choice == expected


def test_generation_fields():
    body = {"max_tokens": 32000, "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "top_p": 0.9,
            "top_k": 20, "stop_sequences": ["END"], "metadata": {"user_id": "u"}}  # fmt: skip
    chat = anthropic_wire.chat_input(anthropic_wire.decode_messages(json.dumps(body).encode()))
    assert isinstance(chat, ChatInput) and chat.tools is None and chat.tool_choice == ToolChoice("none")
    assert chat.sampling == {"temperature": 0.5, "top_p": 0.9, "top_k": 20}
    assert chat.max_tokens == 32000 and chat.stops == ["END"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"messages": []}, "messages", "must not be empty"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]},
         "messages[0].content", "text only"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "image", "source": {}}]}]}]}, "messages[0].content", "text only"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [
            {"type": "tool_result", "tool_use_id": "t"}]}]}, "messages[1].content", "assistant"),
        ({"messages": [{"role": "system", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]},
         "messages[0].content", "text only"),
        ({"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
         "tools[0].type", "custom tools only"),
        ({"messages": [{"role": "user", "content": "a"}], "tools": [{"name": "Read"}]}, "tools[0].input_schema", "input_schema"),
        ({"messages": [{"role": "user", "content": "a"}], "stop_sequences": [str(i) for i in range(17)]},
         "stop_sequences", "at most 16"),
    ],
)  # fmt: skip
def test_bad_requests_name_the_problem(body, param, words):
    req = anthropic_wire.decode_messages(json.dumps({"max_tokens": 8, **body}).encode())
    with pytest.raises(PlanError) as err:
        anthropic_wire.chat_input(req)
    assert err.value.param == param and words in str(err.value)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"messages": [{"role": "user", "content": "a"}]}, "max_tokens"),
        ({"max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "video", "x": 1}]}]}, "messages[0].content[0]"),
        ({"max_tokens": 8, "messages": [{"role": "user", "content": "a"}], "thinking": {"type": "enabled"}}, "budget_tokens"),
        ({"max_tokens": 8, "messages": [{"role": "tool", "content": "a"}]}, "role"),
    ],
)
def test_malformed_requests_are_refused_when_decoded(body, words):
    with pytest.raises(msgspec.ValidationError, match=r"(?s).*" + words.replace("[", r"\[").replace("]", r"\]")):
        anthropic_wire.decode_messages(json.dumps(body).encode())


def test_count_tokens_body_needs_no_max_tokens():
    req = anthropic_wire.decode_count_tokens(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
    assert anthropic_wire.prompt_input(req).messages == [{"role": "user", "content": "hi"}]


def test_stream_events_encode_with_their_type_tags():
    event = anthropic_wire.ContentBlockDelta(2, anthropic_wire.InputJsonDeltaOut('{"a'))
    assert anthropic_wire.event_name(event) == "content_block_delta"
    assert json.loads(anthropic_wire.encode(event)) == {
        "type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"a'}
    }  # fmt: skip
