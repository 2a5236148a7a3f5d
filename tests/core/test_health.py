"""/health and /ready: liveness and readiness, down to the engine's core process dying."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest

from gateway import CompletionState
from gateway.core.vllm_engine import VLLMEngine
from tests.fakes import FakeEngine
from tests.gateway_app import Gateway, running_gateway
from tests.sse_client import chunks


async def test_health_and_ready_follow_the_engine_and_draining(fake_engine: FakeEngine) -> None:
    async with running_gateway(fake_engine) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).json() == {"status": "ready"}
        gw.app.state.chat_stream.admission.start_draining()
        assert (await client.get("/health")).status_code == 200  # draining is alive, just not taking work
        ready = await client.get("/ready")
        assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
        fake_engine.dead = True
        health = await client.get("/health")
        assert (health.status_code, health.json()) == (503, {"status": "engine_unavailable"})


async def test_a_dead_engine_refuses_openai_requests_with_503(fake_engine: FakeEngine) -> None:
    async with running_gateway(fake_engine) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        fake_engine.dead = True
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 503 and "retry-after" in r.headers
        assert r.json()["error"]["type"] == "server_error"
        assert gw.states == []  # refused before the queue: no callback


def engine_core_children(before: set[int]) -> list[psutil.Process]:
    """The engine core processes started since `before` was taken."""
    found = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in before:
            continue
        try:
            name = child.name() + " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "EngineCore" in name:
            found.append(child)
    return found


async def read_until(lines: AsyncIterator[str], prefix: str) -> list[str]:
    """The lines of a stream up to and including the first that starts with `prefix`."""
    seen = []
    async for line in lines:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"the stream ended before {prefix!r}")


@pytest.mark.engine
async def test_killing_the_engine_core_fails_health_and_ends_streams_with_an_error(tiny_model_dir: Path) -> None:
    # A dedicated engine: the shared `real_engine` must stay alive for the other tests.
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    engine = VLLMEngine(str(tiny_model_dir), {"max_model_len": 1024})
    await engine.start()  # outside the server's start-up bound: an engine start is slow on a busy machine
    try:
        async with (
            running_gateway(engine, lifespan="off", max_new_tokens=900, ignore_eos=True) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=60) as client,
        ):
            await kill_the_core_mid_stream(engine, before, gw, client)
    finally:
        await engine.stop()


async def kill_the_core_mid_stream(
    engine: VLLMEngine, before: set[int], gw: Gateway, client: httpx.AsyncClient
) -> None:
    """SIGKILL the engine core while a /chat_stream and a /v1 stream run, and check what clients see."""
    (core,) = engine_core_children(before)
    body = {"model": engine.model_name, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with asyncio.timeout(120):
        async with (
            client.stream("POST", "/chat_stream", json={"user_input": "hi"}) as chat,
            client.stream("POST", "/v1/chat/completions", json=body) as api,
        ):
            chat_lines, api_lines = chat.aiter_lines(), api.aiter_lines()
            chat_seen = await read_until(chat_lines, "event: delta")
            api_seen = await read_until(api_lines, "data: {")
            os.kill(core.pid, signal.SIGKILL)
            chat_seen += [line async for line in chat_lines]
            api_seen += [line async for line in api_lines]
        health = await client.get("/health")
        while health.status_code != 503:
            await asyncio.sleep(0.05)
            health = await client.get("/health")
        assert (await client.get("/ready")).status_code == 503
        states = await gw.wait_states(2)
        late = await client.post("/v1/chat/completions", json={**body, "stream": False})
        assert (late.status_code, late.json()["error"]["code"]) == (503, "engine_unavailable")
    assert "event: error" in chat_seen
    error = json.loads(chat_seen[chat_seen.index("event: error") + 1].removeprefix("data: "))
    assert error["error"]["type"] == "engine_unavailable"
    api_error = chunks("\n".join(api_seen))[-1]
    assert api_error["error"]["code"] == "engine_unavailable"
    assert states == [CompletionState.UNKNOWN_ERROR_OCCURRED] * 2
