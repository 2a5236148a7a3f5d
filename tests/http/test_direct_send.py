"""A stream's body goes past the gateway's own middlewares, never past a user's."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle as HttptoolsCycle

from gateway import Settings, create_app
from tests.fakes import FakeEngine
from tests.live import serve


class BodyCounter:
    """A user's middleware, added after create_app: counts the body bytes of each response it sees."""

    seen: list[bytes]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        BodyCounter.seen = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting(message: Message) -> None:
            if message["type"] == "http.response.body":
                BodyCounter.seen.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counting)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/chat_stream", {"user_input": "hi"}, id="chat_stream"),
        pytest.param(
            "/v1/chat/completions",
            {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            id="openai",
        ),
    ],
)
async def test_a_middleware_added_after_create_app_sees_every_byte_of_a_stream(
    fake_engine: FakeEngine, path: str, body: dict[str, object]
) -> None:
    app = create_app(Settings(secure_cookies=False), engine=fake_engine)
    app.add_middleware(BodyCounter)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post(path, json=body)
    assert response.status_code == 200
    assert response.headers["x-request-id"]  # the gateway's middlewares still saw the response's start
    assert b"".join(BodyCounter.seen) == response.content
    assert len(BodyCounter.seen) > len(fake_engine.answer)  # one message per token, and the end


async def test_under_uvicorn_the_tokens_of_a_stream_skip_the_servers_send_coroutine(
    fake_engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # uvicorn's `send` sees the response's start and its end; each token's chunk is put on
    # the connection directly, framed as uvicorn frames it (the client decodes the same bytes).
    sent: list[str] = []
    original = HttptoolsCycle.send

    async def counting_send(self: HttptoolsCycle, message: Message) -> None:
        sent.append(message["type"])
        await original(self, message)

    monkeypatch.setattr(HttptoolsCycle, "send", counting_send)
    app = create_app(Settings(secure_cookies=False), engine=fake_engine)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event)["choices"][0]["delta"] for event in events[:-1]]
    assert "".join(delta.get("content", "") for delta in chunks) == fake_engine.answer
    assert len(chunks) == len(fake_engine.answer)  # one event per token
    assert sent == ["http.response.start", "http.response.body"]
