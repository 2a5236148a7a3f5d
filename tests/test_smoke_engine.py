"""The real engine streams through /chat_stream (the one end-to-end check everything else builds on)."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response

from gateway import ChatStream, SessionMiddleware
from gateway.vllm_engine import VLLMEngine
from tests.live import serve

pytestmark = pytest.mark.engine


async def test_real_engine_streams_an_answer_that_the_conversation_records(real_engine: VLLMEngine) -> None:
    chat = ChatStream(engine=real_engine, max_new_tokens=16, ignore_eos=True)
    app = FastAPI()
    app.add_middleware(SessionMiddleware, secret_key="s" * 32, secure=False)

    @app.post("/chat_stream")
    async def stream_api(request: Request) -> Response:
        return await chat.handle_chat_stream_request(request)

    async with serve(app, lifespan="off") as url, httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/chat_stream", json={"user_input": "hello"})
        assert r.status_code == 200
        events = [block for block in r.text.replace("\r\n", "\n").split("\n\n") if block.startswith("event:")]
        deltas = [json.loads(e.split("data: ", 1)[1])["text"] for e in events if e.startswith("event: delta")]
        done = json.loads(events[-1].split("data: ", 1)[1])
        assert done["state"] == "success" and done["usage"]["completion_tokens"] == 16
        assert "".join(deltas)
    assert real_engine.num_unfinished() == 0
