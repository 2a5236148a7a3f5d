"""Secrets stay secret, the page carries its security headers, and CORS is closed unless opened."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.cli import main as cli_main
from tests.fakes import FakeEngine
from tests.reliability.conftest import SECRET, Gateway, make_settings, running_gateway

API_KEY = "sk-reliability-0123456789abcdef"
WRONG_KEY = "sk-guessed-key-fedcba9876543210"
OLD_SECRET = "an-older-signing-key-still-accepted"
EVIL = "http://evil.example"


@pytest.fixture
async def gateway(engine: FakeEngine) -> AsyncIterator[Gateway]:
    settings = make_settings(session_secret=[SECRET, OLD_SECRET], api_key=[API_KEY], max_body_bytes=1024)
    async with running_gateway(engine, settings) as gw:
        yield gw


async def test_secrets_keys_and_session_cookies_never_appear_in_logs_or_answers(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[str] = []
    completion = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        requests = [
            client.build_request("POST", "/chat_stream", json={"user_input": "hi"}),
            client.build_request("POST", "/chat_stream", content=b"{not json"),
            client.build_request("POST", "/chat_stream", json={"user_input": "x" * 2000}),
            client.build_request("POST", "/chat_stream", json={"user_input": 5}),
            client.build_request("POST", "/set_generation_params", json={"temperature": 9}),
            client.build_request("GET", "/get_prompt"),
            client.build_request("POST", "/v1/chat/completions", json=completion),
            client.build_request("POST", "/v1/chat/completions", json=completion, headers={"authorization": API_KEY}),
            client.build_request(
                "POST", "/v1/chat/completions", json=completion, headers={"authorization": f"Bearer {WRONG_KEY}"}
            ),
            client.build_request(
                "POST", "/v1/chat/completions", json=completion, headers={"authorization": f"Bearer {API_KEY}"}
            ),
            client.build_request(
                "POST", "/v1/chat/completions", content=b"{", headers={"authorization": f"Bearer {API_KEY}"}
            ),
            client.build_request("GET", "/v1/models", headers={"authorization": f"Bearer {API_KEY}x"}),
            client.build_request("GET", "/nowhere"),
            client.build_request("GET", "/metrics"),
        ]
        for request in requests:
            r = await client.send(request)
            assert r.status_code < 500
            answers.append(f"{r.status_code} {r.headers} {r.text}")
        cookie = client.cookies["chatstream_session"]
    assert any(a.startswith("401") for a in answers) and any(a.startswith("200") for a in answers)
    session_id = cookie.split(".", 1)[0]
    # The server's log lines (the test's own HTTP client logs its traffic at DEBUG).
    server = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert server
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in server)
    for secret in (SECRET, OLD_SECRET, API_KEY, WRONG_KEY, session_id):
        assert secret not in logs
        # the session id travels in the client's own Set-Cookie only, never in a body
        assert all(secret not in a.split(" ", 1)[1].split("set-cookie", 1)[0] for a in answers)
    for answer in answers:
        assert "Traceback" not in answer


def test_the_cli_help_and_the_settings_repr_hide_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(api_key=[API_KEY])
    assert SECRET not in repr(settings) and API_KEY not in repr(settings)
    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    assert SECRET not in capsys.readouterr().out


async def test_the_page_and_its_files_carry_security_headers(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        for path in ("/", "/static/app.js"):
            r = await client.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["referrer-policy"] == "no-referrer"


async def test_cookies_are_httponly_and_samesite_and_secure_by_default(engine: FakeEngine) -> None:
    async with (
        running_gateway(engine, make_settings(secure_cookies=True)) as gw,
        httpx.AsyncClient(base_url=gw.url) as c,
    ):
        set_cookie = (await c.post("/set_generation_params", json={"temperature": 0.5})).headers["set-cookie"]
    flags = {flag.strip().split("=")[0].lower() for flag in set_cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path"} <= flags
    assert "samesite=lax" in set_cookie.lower()


PREFLIGHT = {"origin": EVIL, "access-control-request-method": "POST", "access-control-request-headers": "content-type"}


async def test_cors_is_closed_by_default(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        for path in ("/chat_stream", "/v1/chat/completions", "/get_prompt"):
            preflight = await client.options(path, headers=PREFLIGHT)
            assert "access-control-allow-origin" not in preflight.headers, path
        simple = await client.get("/get_load", headers={"origin": EVIL})
        assert "access-control-allow-origin" not in simple.headers
        assert "access-control-allow-credentials" not in simple.headers


async def test_cors_opens_only_to_the_configured_origin_and_never_with_credentials(engine: FakeEngine) -> None:
    friend = "https://friend.example"
    async with (
        running_gateway(engine, make_settings(cors_origin=[friend])) as gw,
        httpx.AsyncClient(base_url=gw.url) as c,
    ):
        allowed = await c.options("/v1/chat/completions", headers={**PREFLIGHT, "origin": friend})
        refused = await c.options("/v1/chat/completions", headers=PREFLIGHT)
    assert allowed.headers["access-control-allow-origin"] == friend
    assert "access-control-allow-credentials" not in allowed.headers
    assert "access-control-allow-origin" not in refused.headers


async def test_cors_lets_a_front_end_send_and_read_the_conversation_and_request_ids(engine: FakeEngine) -> None:
    # Regression (issue 13): the preflight refused X-Conversation-Id and X-Request-Id, and neither
    # (nor X-Request-Id on any answer) could be read by a front end on another origin.
    friend = "https://friend.example"
    wanted = "authorization, content-type, x-conversation-id, x-request-id"
    async with (
        running_gateway(engine, make_settings(cors_origin=[friend])) as gw,
        httpx.AsyncClient(base_url=gw.url) as c,
    ):
        preflight = await c.options(
            "/chat_stream", headers={**PREFLIGHT, "origin": friend, "access-control-request-headers": wanted}
        )
        answer = await c.get("/get_load", headers={"origin": friend})
    assert preflight.status_code == 200, preflight.text
    allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert {"x-conversation-id", "x-request-id"} <= allowed
    exposed = {h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")}
    assert {"x-conversation-id", "x-request-id", "x-message-id", "retry-after"} <= exposed
