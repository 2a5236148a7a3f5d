"""X-Request-Id on every response, and exactly one log line per request, never with its text."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.fakes import FakeEngine
from tests.gateway_app import Gateway, running_gateway

SECRET = "my card number is 4242"


@pytest.fixture
async def gateway(fake_engine: FakeEngine) -> AsyncIterator[Gateway]:
    async with running_gateway(fake_engine, api_key=["sk-key"]) as gw:
        yield gw


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, headers={"authorization": "Bearer sk-key"}) as c:
        yield c


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        pytest.param("trace-0af7651916cd43dd8448eb211c80319c", True, id="sane"),
        pytest.param("a b", False, id="space"),
        pytest.param("x" * 129, False, id="too-long"),
        pytest.param("é", False, id="non-ascii"),
    ],
)
async def test_a_sane_client_request_id_is_echoed_and_others_replaced(
    client: httpx.AsyncClient, given: str, kept: bool
) -> None:
    r = await client.get("/health", headers=[(b"x-request-id", given.encode())])
    assert (r.headers["x-request-id"] == given) is kept
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        pytest.param("GET", "/health", {}, id="health"),
        pytest.param("GET", "/v1/models", {"authorization": "Bearer wrong"}, id="401"),
        pytest.param("GET", "/nowhere", {}, id="404"),
        pytest.param("POST", "/chat_stream", {}, id="stream"),
    ],
)
async def test_every_response_carries_a_request_id(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> None:
    first = await client.request(method, path, headers=headers, json={"user_input": "hi"})
    second = await client.request(method, path, headers=headers, json={"user_input": "hi"})
    assert len(first.headers["x-request-id"]) >= 16
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_one_line_per_request_without_prompt_or_answer(
    client: httpx.AsyncClient, gateway: Gateway, fake_engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": SECRET}], "stream": True}
    r = await client.post("/v1/chat/completions", json=body, headers={"x-request-id": "gen-1"})
    assert r.status_code == 200
    await gateway.wait_states(1)
    await client.get("/health", headers={"x-request-id": "probe-1"})
    await client.post("/v1/chat/completions", json={"model": "x"}, headers={"x-request-id": "bad-1"})

    def lines(request_id: str) -> list[str]:
        return [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith(f"request {request_id} ")]

    (generation,) = lines("gen-1")
    assert "route=v1/chat/completions state=success status=200" in generation
    assert f"completion_tokens={len(fake_engine.answer)}" in generation and "ttft=" in generation
    (probe,) = lines("probe-1")
    assert "route=/health status=200" in probe
    (refused,) = lines("bad-1")
    assert "status=400" in refused
    assert SECRET not in caplog.text and fake_engine.answer not in caplog.text
