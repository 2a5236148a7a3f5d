"""What a replica tells its router: its name (header and pin cookie), its load, and a full queue's status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest
from pydantic import ValidationError

from gateway import Settings
from tests.fakes import FakeEngine
from tests.gateway_app import replica_pin, running_gateway


@asynccontextmanager
async def client_of(engine: FakeEngine, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with running_gateway(engine, **settings) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        yield client


@asynccontextmanager
async def slot_held(engine: FakeEngine, client: httpx.AsyncClient) -> AsyncIterator[None]:
    """One generation admitted and held at the engine's gate until the block ends."""
    engine.gate = asyncio.Event()
    held = asyncio.create_task(client.post("/chat_stream", json={"user_input": "hold"}))
    async with asyncio.timeout(10):
        while not engine.running:
            await asyncio.sleep(0.01)
    try:
        yield
    finally:
        engine.gate.set()
        assert (await held).status_code == 200


async def test_the_first_turn_pins_the_conversation_and_the_next_turns_keep_the_pin(fake_engine: FakeEngine) -> None:
    async with client_of(fake_engine, replica_id="gateway-2") as client:
        first = await client.post("/chat_stream", json={"user_input": "hello"})
        assert first.status_code == 200
        assert first.headers["x-chatstream-replica"] == "gateway-2"
        assert replica_pin(first) == "gateway-2"
        cookie = first.headers.get_list("set-cookie")[-1]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
        # httpx keeps both cookies; the pinned next turn gets no new pin.
        second = await client.post("/chat_stream", json={"user_input": "again"})
        assert second.status_code == 200
        assert second.headers["x-chatstream-replica"] == "gateway-2"
        assert replica_pin(second) is None


async def test_a_turn_pinned_to_another_replica_is_re_pinned_to_the_one_that_served_it(
    fake_engine: FakeEngine,
) -> None:
    async with client_of(fake_engine, replica_id="gateway-2") as client:
        r = await client.post(
            "/chat_stream", json={"user_input": "spilled"}, headers={"cookie": "chatstream_replica=gateway-1"}
        )
    assert r.status_code == 200
    assert replica_pin(r) == "gateway-2"


async def test_the_pin_cookie_is_secure_unless_cookies_are_plain_http(fake_engine: FakeEngine) -> None:
    async with client_of(fake_engine, replica_id="a", secure_cookies=True) as client:
        r = await client.get("/health")
    assert "Secure" in r.headers.get_list("set-cookie")[-1]


async def test_a_refusal_names_the_replica_but_does_not_pin_and_reports_the_full_load(
    fake_engine: FakeEngine,
) -> None:
    async with client_of(fake_engine, replica_id="gateway-1", concurrency=1, queue_size=0) as client:
        async with slot_held(fake_engine, client):
            r = await client.post("/chat_stream", json={"user_input": "busy?"}, headers={"cookie": "x=1"})
        assert r.status_code == 429
        assert r.json()["error"]["type"] == "too_many_requests"
        assert r.headers["retry-after"]
        assert r.headers["x-chatstream-replica"] == "gateway-1"
        assert r.headers["x-chatstream-load"] == "running=1, waiting=0, capacity=1, queue_size=0"
        assert replica_pin(r) is None
        idle = await client.get("/health")
        assert idle.headers["x-chatstream-load"] == "running=0, waiting=0, capacity=1, queue_size=0"


@pytest.mark.parametrize(
    ("route", "body"),
    [
        pytest.param("/chat_stream", {"user_input": "busy?"}, id="chat_stream"),
        pytest.param(
            "/v1/chat/completions", {"model": "fake-model", "messages": [{"role": "user", "content": "?"}]}, id="openai"
        ),
    ],
)
async def test_overload_status_503_answers_a_full_queue_with_503_and_its_retry_after(
    fake_engine: FakeEngine, route: str, body: dict[str, Any]
) -> None:
    settings = {"concurrency": 1, "queue_size": 0, "overload_status": 503}
    async with client_of(fake_engine, **settings) as client, slot_held(fake_engine, client):
        r = await client.post(route, json=body)
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) >= 1
    assert "x-chatstream-replica" not in r.headers  # no --replica-id: nothing to pin to
    assert "x-chatstream-load" in r.headers


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"replica_id": "gateway 1"}, id="space-in-id"),
        pytest.param({"replica_id": "a;b=c"}, id="cookie-syntax-in-id"),
        pytest.param({"replica_id": ""}, id="empty-id"),
        pytest.param({"overload_status": 500}, id="status-500"),
    ],
)
def test_settings_refuse_a_replica_id_unfit_for_a_cookie_and_other_overload_statuses(settings: Any) -> None:
    with pytest.raises(ValidationError):
        Settings(**settings)


async def test_the_openai_sdk_keeps_the_pin_between_calls(fake_engine: FakeEngine) -> None:
    """The official client keeps a cookie jar: an API conversation stays pinned with no extra code."""
    async with running_gateway(fake_engine, replica_id="gateway-1") as gw:
        api = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
        try:
            pins = []
            for _ in range(2):
                raw = await api.chat.completions.with_raw_response.create(
                    model="fake-model", messages=[{"role": "user", "content": "hi"}]
                )
                pins.append(replica_pin(raw.http_response))
        finally:
            await api.close()
    assert pins == ["gateway-1", None]  # the second call sent the cookie back
