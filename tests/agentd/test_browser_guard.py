"""agentd/guard.py: what a web page in the user's browser can no longer do (issue 10): send a
simple cross-origin POST (415), read answers through DNS rebinding (403), or use CORS unless
--cors-origin allows its origin."""

from __future__ import annotations

import json
from typing import Iterator

import pytest

from tests.agentd.conftest import LiveServer
from tests.agentd.scripted import (
    ANTHROPIC_PATH, CHAT, MESSAGES, OPENAI_PATH, REPLY, anthropic_error, assert_serves, scripted_model, start_scripted,
)  # fmt: skip
from tests.agentd.test_app import assert_error

PAGE = "http://localhost:3000"
PREFLIGHT = {"Origin": PAGE, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type, authorization"}  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    live = start_scripted()
    yield live
    live.close()


def post_raw(server: LiveServer, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """A POST with exactly these headers (no Content-Type unless given)."""
    conn = server.connect()
    conn.putrequest("POST", OPENAI_PATH, skip_accept_encoding=True)
    for name, value in {**headers, "Content-Length": str(len(body))}.items():
        conn.putheader(name, value)
    conn.endheaders(body)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def cors_headers(headers) -> list[str]:
    return [name for name in headers if name.lower().startswith("access-control-")]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])
def test_posts_that_a_web_page_can_send_without_a_preflight_are_415(server, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    error = assert_error(*post_raw(server, json.dumps(CHAT).encode(), headers), 415, "invalid_request_error")
    assert "application/json" in error["message"] and error["code"] == "unsupported_media_type"
    status, _, reply = server.request("POST", ANTHROPIC_PATH, MESSAGES, {"Content-Type": "text/plain"})
    anthropic_error(status, reply, 415, "invalid_request_error")
    assert_serves(server)


def test_json_with_parameters_is_accepted_and_other_methods_and_paths_are_unaffected(server):
    status, _, body = server.request("POST", OPENAI_PATH, CHAT, {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200 and body["choices"][0]["message"]["content"] == REPLY
    assert server.request("GET", "/v1/models", headers={"Content-Type": "text/plain"})[0] == 200
    assert_error(*server.request("POST", "/v1/nothing", b"x", {"Content-Type": "text/plain"})[::2], 404)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.io", "[::2]:80",
                                  "localhost.evil.example"])  # fmt: skip
def test_a_foreign_host_header_is_403_on_a_loopback_server(server, host):
    """DNS rebinding: the page's own name, now pointing at 127.0.0.1, arrives in the Host header."""
    error = assert_error(*server.request("POST", OPENAI_PATH, CHAT, {"Host": host})[::2], 403)
    assert error["type"] == "permission_error" and "--allowed-host" in error["message"]
    assert_error(*server.request("GET", "/v1/models", headers={"Host": host})[::2], 403)
    status, _, body = server.request("POST", ANTHROPIC_PATH, MESSAGES, {"Host": host})
    anthropic_error(status, body, 403, "permission_error")


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "LOCALHOST.", "127.0.0.1", "127.0.0.1:1", "127.1.2.3:99",
                                  "[::1]", "[::1]:8080"])  # fmt: skip
def test_loopback_host_headers_are_served(server, host):
    status, _, body = server.request("POST", OPENAI_PATH, CHAT, {"Host": host})
    assert status == 200 and body["choices"][0]["message"]["content"] == REPLY


def models_status(server: LiveServer, host: str) -> int:
    return server.request("GET", "/v1/models", headers={"Host": host})[0]


def test_allowed_hosts_add_names_and_a_star_allows_any(serve_fake):
    named = serve_fake(scripted_model(), allowed_hosts=("agentd.lan",))
    assert models_status(named, "agentd.lan:8080") == 200 and models_status(named, "localhost") == 200
    assert models_status(named, "evil.example") == 403
    assert models_status(serve_fake(scripted_model(), allowed_hosts=("*",)), "evil.example") == 200


def test_a_server_on_all_interfaces_checks_no_host_unless_asked(serve_fake):
    """Reached by whatever name or address the network gives it; --allowed-host opts in."""
    assert models_status(serve_fake(scripted_model(), host="0.0.0.0"), "box.example") == 200
    checked = serve_fake(scripted_model(), host="0.0.0.0", allowed_hosts=("agentd.lan",))
    assert models_status(checked, "agentd.lan") == 200 and models_status(checked, "box.example") == 403


def test_cors_is_off_by_default(server):
    status, headers, _ = server.request("OPTIONS", OPENAI_PATH, headers=PREFLIGHT)
    assert status == 405 and not cors_headers(headers)
    status, headers, _ = server.request("POST", OPENAI_PATH, CHAT, {"Origin": PAGE})
    assert status == 200 and not cors_headers(headers)


def test_cors_origins_get_cors_and_only_they(serve_fake):
    live = serve_fake(scripted_model(), cors_origins=(PAGE,), api_key="k")
    status, headers, _ = live.request("OPTIONS", OPENAI_PATH, headers=PREFLIGHT)  # preflights carry no key
    assert status == 204 and headers["Access-Control-Allow-Origin"] == PAGE and "Origin" in headers["Vary"]
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert headers["Access-Control-Allow-Headers"] == "content-type, authorization"
    auth = {"Origin": PAGE, "Authorization": "Bearer k"}
    status, headers, _ = live.request("POST", OPENAI_PATH, CHAT, auth)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == PAGE
    status, headers, _ = live.request("POST", OPENAI_PATH, {"messages": []}, auth)
    assert status == 400 and headers["Access-Control-Allow-Origin"] == PAGE  # errors are readable too
    status, headers, _ = live.request("OPTIONS", OPENAI_PATH, headers={**PREFLIGHT, "Origin": "http://evil.example"})
    assert status == 401 and not cors_headers(headers)  # not answered as a preflight: it needs the key
    status, headers, _ = live.request("POST", OPENAI_PATH, CHAT, {**auth, "Origin": "http://evil.example"})
    assert status == 200 and not cors_headers(headers)
