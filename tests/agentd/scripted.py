"""A scripted daemon for the hostile-request tests (issue 10): the fake model answers every chat
with REPLY and completes PROMPT with COMPLETION, so a test can tell a served request from a
refused one by the answer alone."""

from __future__ import annotations

from typing import Any

from agentd.config import ServeConfig
from tests.agentd.conftest import LiveServer, fake_loader
from tests.agentd.fakes import FakeModel, chat_reply, text_reply

REPLY = "fine"
PROMPT, COMPLETION = "Once upon", " a time"
USER = [{"role": "user", "content": "hi"}]
CHAT = {"messages": USER, "max_tokens": 16}
MESSAGES = {"messages": USER, "max_tokens": 16}
OPENAI_PATH, ANTHROPIC_PATH = "/v1/chat/completions", "/v1/messages"


def scripted_model(**kw: Any) -> FakeModel:
    chat, text = chat_reply(f"x\n</think>\n\n{REPLY}"), text_reply(PROMPT, COMPLETION)
    return FakeModel(lambda context: text(context) if context.startswith(PROMPT) else chat(context), **kw)


def start_scripted(**config: Any) -> LiveServer:
    live = LiveServer(ServeConfig(port=0, **config), fake_loader(scripted_model()))
    live.wait_ready()
    return live


def said(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def anthropic_error(status: int, body: Any, expected_status: int, error_type: str) -> str:
    """The message of an Anthropic-style error body, checked."""
    assert status == expected_status, body
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    return body["error"]["message"]


def assert_serves(server: LiveServer) -> None:
    status, _, body = server.request("POST", OPENAI_PATH, CHAT)
    assert status == 200 and body["choices"][0]["message"]["content"] == REPLY, body
