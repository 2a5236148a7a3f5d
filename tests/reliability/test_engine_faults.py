"""Engine faults: an engine that raises on a request, or dies, never breaks the gateway.

The client gets an `error` event (mid-stream) or a JSON error with a real
status (before it), the callback reports `unknown_error_occurred`, nothing
leaks, and `/health` says whether the engine can still serve. Killing the
real engine's core process is covered by tests/core/test_health.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from gateway.chat.chat_stream import ChatStream
from gateway.core.completion import CompletionState
from gateway.core.vllm_engine import VLLMEngine
from gateway.tiny_model import VOCAB_SIZE
from prompts import ChatPrompt, RenderedPrompt
from tests.fakes import FakeEngine
from tests.live import serve
from tests.reliability.conftest import Callbacks, Gateway, make_settings, running_gateway
from tests.sse_client import parse_sse

State = CompletionState


@pytest.fixture
async def gateway(engine: FakeEngine) -> AsyncIterator[Gateway]:
    async with running_gateway(engine, make_settings()) as gw:
        yield gw


async def chat(gw: Gateway, client: httpx.AsyncClient, test_id: str) -> httpx.Response:
    return await client.post("/chat_stream", json={"user_input": "hi"}, headers={"x-test-id": test_id})


async def test_an_engine_raising_mid_stream_gives_an_error_event_and_keeps_what_was_sent(
    gateway: Gateway, engine: FakeEngine
) -> None:
    engine.fail_after_tokens = 3
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        r = await chat(gateway, client, "mid")
        assert r.status_code == 200
        events = parse_sse(r.text)
        assert [kind for kind, _ in events] == ["delta", "delta", "delta", "error"]
        error = events[-1][1]["error"]
        assert isinstance(error, dict) and error["type"] == "internal_error"
        assert "fake engine failure" not in r.text and "Traceback" not in r.text  # no internals leak
        assert await gateway.callbacks.wait_for("mid") == State.UNKNOWN_ERROR_OCCURRED
        await gateway.wait_idle(engine.num_unfinished)
        messages = (await client.get("/get_prompt")).json()["messages"]
        assert messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": engine.answer[:3]}]
        # one failed request does not make the engine unhealthy; the next one is served
        assert (await client.get("/health")).status_code == 200
        engine.fail_after_tokens = None
        assert "event: done" in (await chat(gateway, client, "next")).text


async def test_an_engine_raising_before_the_first_token_gives_a_json_error_and_leaves_the_conversation_alone(
    gateway: Gateway, engine: FakeEngine
) -> None:
    engine.fail_after_tokens = 0
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        r = await chat(gateway, client, "early")
        # A fault inside the engine, not the client's: 500 with the gateway's JSON error, no internals.
        assert r.status_code == 500
        assert r.json() == {"error": {"type": "internal_error", "message": "the server failed to generate an answer"}}
        assert await gateway.callbacks.wait_for("early") == State.UNKNOWN_ERROR_OCCURRED
        await gateway.wait_idle(engine.num_unfinished)
        assert (await client.get("/get_prompt")).json()["messages"] == []


async def test_an_engine_dying_mid_stream_gives_an_error_event_503s_and_health_503_until_it_is_back(
    gateway: Gateway, engine: FakeEngine
) -> None:
    engine.answer = "a long answer that the engine will not finish"
    engine.token_delay = 0.01
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        async with client.stream("POST", "/chat_stream", json={"user_input": "hi"}, headers={"x-test-id": "d"}) as r:
            lines = r.aiter_lines()
            assert await anext(lines) == "event: delta"
            engine.dead = True
            rest = [line async for line in lines]
        assert "event: error" in rest
        error = json.loads(rest[rest.index("event: error") + 1].removeprefix("data: "))
        assert error["error"]["type"] == "engine_unavailable"
        assert await gateway.callbacks.wait_for("d") == State.UNKNOWN_ERROR_OCCURRED
        await gateway.wait_idle(engine.num_unfinished)

        assert (await client.get("/health")).status_code == 503
        assert (await client.get("/ready")).status_code == 503
        refused = await chat(gateway, client, "refused")
        assert refused.status_code == 503 and "retry-after" in refused.headers
        assert refused.json()["error"]["type"] == "engine_unavailable"
        assert "refused" not in gateway.callbacks.states  # refused before the queue: no callback

        # /health follows the engine: a supervisor restarting it (or the process) brings it back
        engine.dead = False
        assert (await client.get("/health")).status_code == 200
        assert "event: done" in (await chat(gateway, client, "back")).text


class OutOfVocabularyPrompt(ChatPrompt):
    """A prompt class that gives the engine token ids the model does not have."""

    def render(self, budget: int) -> RenderedPrompt:
        return RenderedPrompt("", [VOCAB_SIZE + 7, VOCAB_SIZE + 8], 0)


@pytest.mark.engine
async def test_the_real_engine_rejecting_a_request_is_a_client_error_and_the_engine_keeps_serving(
    real_engine: VLLMEngine,
) -> None:
    callbacks = Callbacks()
    bad = ChatStream(engine=real_engine, chat_prompt_clazz=OutOfVocabularyPrompt, max_new_tokens=4)
    app = create_app(make_settings(), chat_stream=bad, callback=callbacks)
    async with serve(app, lifespan="off") as url, httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/chat_stream", json={"user_input": "hi"}, headers={"x-test-id": "bad"})
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request"
        assert "Traceback" not in r.text
        # Regression (issue 13): vLLM's raw text (file paths, addresses, its parameter tags) reached
        # the client; it now gets vLLM's server's sanitized words.
        message = r.json()["error"]["message"]
        assert message and "site-packages" not in message and " at 0x" not in message
        assert "parameter=" not in message
        assert await callbacks.wait_for("bad") == State.UNKNOWN_ERROR_OCCURRED
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/get_prompt")).json()["messages"] == []
    assert bad.admission.load().running == 0
    assert real_engine.num_unfinished() == 0
    # the engine still serves well-formed requests
    settings = make_settings(max_new_tokens=4)
    async with (
        running_gateway(real_engine, settings, engine_started=True) as gw,
        httpx.AsyncClient(base_url=gw.url) as c,
    ):
        assert "event: done" in (await c.post("/chat_stream", json={"user_input": "hi"})).text
