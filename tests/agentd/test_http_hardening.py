"""Hostile and careless requests (issue 10): browser safety (content type, Host, CORS), sampling
parameters at float limits, deep nesting, prompts too big to tokenize, slow and excess
connections. Each case is the exact request that used to be accepted or answered 500."""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any, Iterator

import pytest

from agentd.config import ServeConfig
from agentd.json_depth import MAX_NESTING
from tests.agentd.conftest import LiveServer, fake_loader
from tests.agentd.fakes import FakeModel, chat_reply, text_reply
from tests.agentd.test_app import assert_error
from tests.agentd.test_openai import sse_data

USER = [{"role": "user", "content": "hi"}]
REPLY = "fine"
CHAT = {"messages": USER, "max_tokens": 16}
MESSAGES = {"messages": USER, "max_tokens": 16}
PROMPT = "Once upon"


def _continuation(context: str) -> str:
    """A chat reply, or the text reply for raw completions of PROMPT."""
    return (text_reply(PROMPT, " a time") if context.startswith(PROMPT) else chat_reply(f"x\n</think>\n\n{REPLY}"))(
        context
    )


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    """One daemon with the default settings for every test that needs no other."""
    live = LiveServer(ServeConfig(port=0), fake_loader(FakeModel(_continuation)))
    live.wait_ready()
    yield live
    live.close()


def anthropic_error(status: int, body: Any, expected_status: int, error_type: str) -> str:
    assert status == expected_status, body
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    return body["error"]["message"]


def assert_serves(server: LiveServer) -> None:
    status, _, body = server.request("POST", "/v1/chat/completions", CHAT)
    assert status == 200 and body["choices"][0]["message"]["content"] == REPLY, body


# -- browser safety --------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])
def test_posts_that_a_web_page_can_send_without_a_preflight_are_415(server, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps(CHAT).encode()
    conn = server.connect()
    conn.putrequest("POST", "/v1/chat/completions", skip_accept_encoding=True)
    for name, value in {**headers, "Content-Length": str(len(body))}.items():
        conn.putheader(name, value)
    conn.endheaders(body)
    response = conn.getresponse()
    error = assert_error(response.status, json.loads(response.read()), 415, "invalid_request_error")
    assert "application/json" in error["message"] and error["code"] == "unsupported_media_type"
    status, _, reply = server.request("POST", "/v1/messages", MESSAGES, {"Content-Type": "text/plain"})
    anthropic_error(status, reply, 415, "invalid_request_error")
    assert_serves(server)


def test_json_with_parameters_is_accepted_and_other_methods_and_paths_are_unaffected(server):
    status, _, body = server.request("POST", "/v1/chat/completions", CHAT, {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200 and body["choices"][0]["message"]["content"] == REPLY
    assert server.request("GET", "/v1/models", headers={"Content-Type": "text/plain"})[0] == 200
    assert_error(*server.request("POST", "/v1/nothing", b"x", {"Content-Type": "text/plain"})[::2], 404)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.io", "[::2]:80", "localhost.evil.example"])
def test_a_foreign_host_header_is_403_on_a_loopback_server(server, host):
    """DNS rebinding: the page's own name, now pointing at 127.0.0.1, arrives in the Host header."""
    error = assert_error(*server.request("POST", "/v1/chat/completions", CHAT, {"Host": host})[::2], 403)
    assert error["type"] == "permission_error" and "--allowed-host" in error["message"]
    assert_error(*server.request("GET", "/v1/models", headers={"Host": host})[::2], 403)
    status, _, body = server.request("POST", "/v1/messages", MESSAGES, {"Host": host})
    anthropic_error(status, body, 403, "permission_error")


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "LOCALHOST.", "127.0.0.1", "127.0.0.1:1", "127.1.2.3:99",
                                  "[::1]", "[::1]:8080"])  # fmt: skip
def test_loopback_host_headers_are_served(server, host):
    status, _, body = server.request("POST", "/v1/chat/completions", CHAT, {"Host": host})
    assert status == 200 and body["choices"][0]["message"]["content"] == REPLY


def test_allowed_hosts_add_names_and_a_star_allows_any(serve_fake):
    named = serve_fake(FakeModel(_continuation), allowed_hosts=("agentd.lan",))
    assert named.request("GET", "/v1/models", headers={"Host": "agentd.lan:8080"})[0] == 200
    assert named.request("GET", "/v1/models", headers={"Host": "localhost"})[0] == 200
    assert named.request("GET", "/v1/models", headers={"Host": "evil.example"})[0] == 403
    anything = serve_fake(FakeModel(_continuation), allowed_hosts=("*",))
    assert anything.request("GET", "/v1/models", headers={"Host": "evil.example"})[0] == 200


def test_a_server_on_all_interfaces_checks_no_host_unless_asked(serve_fake):
    """Reached by whatever name or address the network gives it; --allowed-host opts in."""
    open_server = serve_fake(FakeModel(_continuation), host="0.0.0.0")
    assert open_server.request("GET", "/v1/models", headers={"Host": "box.example"})[0] == 200
    checked = serve_fake(FakeModel(_continuation), host="0.0.0.0", allowed_hosts=("agentd.lan",))
    assert checked.request("GET", "/v1/models", headers={"Host": "agentd.lan"})[0] == 200
    assert checked.request("GET", "/v1/models", headers={"Host": "box.example"})[0] == 403


PREFLIGHT = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type, authorization"}  # fmt: skip


def test_cors_is_off_by_default(server):
    status, headers, _ = server.request("OPTIONS", "/v1/chat/completions", headers=PREFLIGHT)
    assert status == 405 and not [h for h in headers if h.lower().startswith("access-control-")]
    status, headers, _ = server.request("POST", "/v1/chat/completions", CHAT, {"Origin": "http://localhost:3000"})
    assert status == 200 and not [h for h in headers if h.lower().startswith("access-control-")]


def test_cors_origins_get_cors_and_only_they(serve_fake):
    live = serve_fake(FakeModel(_continuation), cors_origins=("http://localhost:3000",), api_key="k")
    status, headers, _ = live.request("OPTIONS", "/v1/chat/completions", headers=PREFLIGHT)  # no key: preflights carry none
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert headers["Access-Control-Allow-Headers"] == "content-type, authorization"
    assert "Origin" in headers["Vary"]
    auth = {"Origin": "http://localhost:3000", "Authorization": "Bearer k"}
    status, headers, body = live.request("POST", "/v1/chat/completions", CHAT, auth)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    status, headers, _ = live.request("POST", "/v1/chat/completions", {"messages": []}, auth)
    assert status == 400 and headers["Access-Control-Allow-Origin"] == "http://localhost:3000"  # errors readable too
    other = {**PREFLIGHT, "Origin": "http://evil.example"}
    status, headers, _ = live.request("OPTIONS", "/v1/chat/completions", headers=other)
    assert status == 401 and "Access-Control-Allow-Origin" not in headers  # not a preflight: it needs the key
    status, headers, _ = live.request("POST", "/v1/chat/completions", CHAT, {**auth, "Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in headers


# -- sampling parameters at float limits ---------------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-38, 1e-320])
def test_a_vanishing_temperature_answers_greedily_on_every_api(server, temperature):
    """Used to be 500 "logits contain +inf" (NaN at 1e-320)."""
    status, _, body = server.request("POST", "/v1/chat/completions", {**CHAT, "temperature": temperature})
    assert status == 200 and body["choices"][0]["message"]["content"] == REPLY, body
    status, _, raw = server.request("POST", "/v1/chat/completions", {**CHAT, "temperature": temperature, "stream": True})
    events = sse_data(raw)
    assert events[-1] == "[DONE]" and not [e for e in events if "error" in e], events
    status, _, body = server.request("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 16, "temperature": temperature})
    assert status == 200 and body["choices"][0]["text"] == " a time", body
    status, _, body = server.request("POST", "/v1/messages", {**MESSAGES, "temperature": temperature})
    assert status == 200 and body["content"][-1]["text"].endswith(REPLY), body


def with_number(body: dict, field: str, literal: str) -> bytes:
    """`body` with one more field whose value is the JSON number `literal` as written."""
    return (json.dumps(body)[:-1] + f', "{field}": {literal}}}').encode()


@pytest.mark.parametrize(
    "field, literal",
    [("repetition_penalty", "1e-320"), ("repetition_penalty", "0"), ("repetition_penalty", "1e30"),
     ("temperature", "1e30"), ("temperature", "101"), ("temperature", "1e400"), ("temperature", "-1e-320"),
     ("top_p", "1e400"), ("presence_penalty", "-1e308"), ("min_p", "2")],
)  # fmt: skip
def test_sampling_parameters_out_of_range_are_400_naming_them(server, field, literal):
    error = assert_error(*server.request("POST", "/v1/chat/completions", with_number(CHAT, field, literal))[::2], 400)
    assert error["param"] == field and field in error["message"]
    completion = with_number({"prompt": PROMPT, "max_tokens": 4}, field, literal)
    assert assert_error(*server.request("POST", "/v1/completions", completion)[::2], 400)["param"] == field
    assert_serves(server)


def test_anthropic_sampling_parameters_out_of_range_are_400(server):
    for body in ({**MESSAGES, "temperature": 1e30}, {**MESSAGES, "top_p": 0}, {**MESSAGES, "top_k": -1}):
        status, _, reply = server.request("POST", "/v1/messages", body)
        assert next(iter(set(body) - set(MESSAGES))) in anthropic_error(status, reply, 400, "invalid_request_error")
    status, _, body = server.request("POST", "/v1/messages", {**MESSAGES, "top_k": 10**30})  # larger than the vocabulary: off
    assert status == 200, body


def test_a_failed_stream_still_ends_with_done(serve_fake):
    def explode(context: str) -> str:
        if context.count("z") >= 2:
            raise RuntimeError("boom")
        return "z"

    live = serve_fake(FakeModel(explode))
    status, _, raw = live.request("POST", "/v1/chat/completions", {**CHAT, "stream": True})
    events = sse_data(raw)
    assert status == 200 and "boom" in events[-2]["error"]["message"] and events[-1] == "[DONE]"


# -- nesting ---------------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


DEEP = nested(5000)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/chat/completions", '{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"unknown":%s}'),
        ("/v1/chat/completions", '{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"chat_template_kwargs":{"x":%s}}'),
        ("/v1/chat/completions", '{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"tools":[{"type":"function",'
                                 '"function":{"name":"f","parameters":{"type":"object","default":%s}}}]}'),
        ("/v1/completions", '{"prompt":"hi","max_tokens":2,"x":%s}'),
        ("/v1/messages", '{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"metadata":{"x":%s}}'),
        ("/v1/messages", '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"tool_use",'
                         '"id":"t","name":"f","input":{"x":%s}}]},{"role":"user","content":"ok"}],"max_tokens":2}'),
        ("/v1/messages/count_tokens", '{"messages":[{"role":"user","content":"hi"}],"x":%s}'),
        ("/tokenize", '{"content":"hi","x":%s}'),
        ("/apply-template", '{"messages":[{"role":"user","content":"hi"}],"x":%s}'),
    ],
)  # fmt: skip
def test_deep_nesting_is_400_not_a_recursion_error(server, path, body):
    status, _, reply = server.request("POST", path, (body % DEEP).encode())
    message = reply["error"]["message"]
    assert status == 400 and "nesting too deep" in message and str(MAX_NESTING) in message, reply


def test_nesting_up_to_the_limit_is_served_and_brackets_in_strings_do_not_count(server):
    body = '{"messages":[{"role":"user","content":"%s"}],"max_tokens":16,"x":%s}'  # the outer object is level 1
    status, _, reply = server.request("POST", "/v1/chat/completions", (body % ("[{" * 1000, nested(MAX_NESTING - 1))).encode())
    assert status == 200, reply
    status, _, reply = server.request("POST", "/v1/chat/completions", (body % ("hi", nested(MAX_NESTING))).encode())
    assert status == 400 and "nesting too deep" in reply["error"]["message"]


# -- sizes -----------------------------------------------------------------------------------------


def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(serve_fake):
    """One 30 MB word took 27 s to tokenize before its 400; its size alone proves it too long."""
    model = FakeModel(_continuation, context_length=4096)
    live = serve_fake(model)
    encoded: list[int] = []
    encode = model.tokenizer.encode
    model.tokenizer.encode = lambda text: encoded.append(len(text)) or encode(text)
    word = "w" * 5_000_000
    started = time.monotonic()
    error = assert_error(*live.request("POST", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": word}]})[::2], 400)
    assert error["code"] == "context_length_exceeded" and "at least" in error["message"] and "4096" in error["message"]
    error = assert_error(*live.request("POST", "/v1/completions", {"prompt": word, "max_tokens": 2})[::2], 400)
    assert error["code"] == "context_length_exceeded"
    assert_error(*live.request("POST", "/apply-template", {"messages": [{"role": "user", "content": word}]})[::2], 400)
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        status, _, body = live.request("POST", path, {**MESSAGES, "messages": [{"role": "user", "content": word}]})
        assert re.fullmatch(r"prompt is too long: \d+ tokens > 4095 maximum", anthropic_error(status, body, 400, "invalid_request_error"))
    assert max(encoded, default=0) < 100_000, "the huge prompt was tokenized"
    assert time.monotonic() - started < 20
    assert model.forward_calls == 0


def test_a_prompt_just_within_the_byte_bound_is_still_tokenized_and_checked(serve_fake):
    model = FakeModel(_continuation, context_length=4096)
    live = serve_fake(model)
    text = "word " * 800  # 4000 bytes (and tokens): the bound (4096 tokens * 16 bytes) proves nothing
    status, _, body = live.request("POST", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": text}]})
    assert status == 200, body
    status, _, body = live.request("POST", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": text * 3}]})
    assert assert_error(status, body, 400)["code"] == "context_length_exceeded" and "at least" not in body["error"]["message"]


# -- connections -----------------------------------------------------------------------------------


def open_socket(live: LiveServer) -> socket.socket:
    host, port = live.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None when it kept the connection open."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    return data


def test_partial_headers_are_closed_after_the_read_timeout(serve_fake):
    live = serve_fake(FakeModel(_continuation), read_timeout=0.5)
    socks = [open_socket(live) for _ in range(20)]
    for sock in socks:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
    started = time.monotonic()
    assert all(closed_within(sock, 5) is not None for sock in socks)
    assert time.monotonic() - started < 3
    idle = open_socket(live)  # a connection that never sends anything
    assert closed_within(idle, 5) == b""
    assert_serves(live)


def test_a_body_that_does_not_arrive_is_408(serve_fake):
    live = serve_fake(FakeModel(_continuation), read_timeout=0.5)
    sock = open_socket(live)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"messages\":")  # fmt: skip
    head, _, body = (closed_within(sock, 15) or b"").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert "did not arrive" in json.loads(body)["error"]["message"]
    assert_serves(live)


def test_connections_beyond_the_limit_are_503_and_closed(serve_fake):
    live = serve_fake(FakeModel(_continuation), max_connections=4)
    held = [open_socket(live) for _ in range(4)]
    for sock in held:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers not finished
    time.sleep(0.2)
    extra = [open_socket(live) for _ in range(10)]
    for sock in extra:
        reply = closed_within(sock, 5)
        assert reply is not None and reply.startswith(b"HTTP/1.1 503"), reply
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "too_many_connections"
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 5
    while (status := _status(live)) != 200 and time.monotonic() < deadline:
        time.sleep(0.05)  # until the server has seen the held connections close
    assert status == 200
    assert_serves(live)


def _status(live: LiveServer) -> int | None:
    try:
        return live.request("GET", "/v1/models")[0]
    except OSError:  # refused before the request was read
        return None


# -- found by the fuzz test ------------------------------------------------------------------------


@pytest.mark.parametrize("length", [[1], {"a": 1}, "5", 1e400, -1, 2.5, True])
def test_a_string_length_that_is_not_a_count_is_400(server, length):
    """maxLength [1] in a tool parameter was int([1]) in the grammar writer: 500."""
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": "LENGTH"}}}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    body = json.dumps({**CHAT, "tools": [tool], "tool_choice": "required"})
    literal = "1e400" if length == 1e400 else json.dumps(length)
    error = assert_error(*server.request("POST", "/v1/chat/completions", body.replace('"LENGTH"', literal).encode())[::2], 400)
    assert error["param"].startswith("tools")
    anthropic_tool = {"name": "f", "input_schema": {**schema, "properties": {"city": {"type": "string", "minLength": "LENGTH"}}}}
    body = json.dumps({**MESSAGES, "tools": [anthropic_tool], "tool_choice": {"type": "any"}})
    status, _, reply = server.request("POST", "/v1/messages", body.replace('"LENGTH"', literal).encode())
    anthropic_error(status, reply, 400, "invalid_request_error")


@pytest.mark.parametrize("required", [[{"a": 1}], [["city"]], ["city", 3]])
def test_required_parameters_that_are_not_names_are_400(server, required):
    """An object in a tool's `required` list was looked up in its properties: unhashable, 500."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": required}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    for choice in ("auto", "required"):
        body = {**CHAT, "tools": [tool], "tool_choice": choice}
        error = assert_error(*server.request("POST", "/v1/chat/completions", body)[::2], 400)
        assert error["param"] == "tools" and "required" in error["message"]
    status, _, reply = server.request("POST", "/v1/messages", {**MESSAGES, "tools": [{"name": "f", "input_schema": schema}]})
    assert "required" in anthropic_error(status, reply, 400, "invalid_request_error")
