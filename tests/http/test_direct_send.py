"""A stream's body goes past the gateway's own middlewares, never past a user's."""

from __future__ import annotations

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
