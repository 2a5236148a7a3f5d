"""A finished request leaves no reference cycle: its objects go when it ends, not at a garbage collection.

A request that leaves a cycle behind keeps its every object (the scope, the
session, the stream, the prompt) until the collector finds it, and under load
those pile up into the old generation, whose full collections then ran for
tens of milliseconds each, a stall of every stream (over the zero-cost engine,
garbage collection was 40% of the gateway's CPU per request:
benchmarks/results/2026-11-30-frontend, Update 9).
Here the collector is off while requests run, so anything they leave in a
cycle is still there when they are done.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.core.direct_send import DirectSend
from gateway.core.generation import Outcome
from gateway.core.runner import Serving
from gateway.core.stream import Stream
from gateway.core.vllm_engine import VLLMEngine
from gateway.sessions.middleware import SessionContext
from tests.fakes import FakeEngine
from tests.gateway_app import running_gateway
from tests.sse_client import eventually

PER_REQUEST = (DirectSend, Outcome, Serving, SessionContext, Stream)

REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/chat_stream", {"user_input": "hi"}),
    ("/v1/chat/completions", {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}),
    (
        "/v1/chat/completions",
        {
            "model": "fake-model",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    ("/v1/responses", {"model": "fake-model", "input": "hi", "stream": True}),
    ("/chat_stream", {"user_input": ""}),  # refused (400): no generation
]


class Requests:
    """The per-request objects made since it began (an earlier test may still hold its own)."""

    def __init__(self) -> None:
        self.before = {id(o) for o in self._all()}

    @staticmethod
    def _all() -> list[object]:
        # type(), not isinstance: that asks some objects (torch's deprecated ones) for __class__, which warns
        return [o for o in gc.get_objects() if type(o) in PER_REQUEST]

    def alive(self) -> list[str]:
        return [type(o).__name__ for o in self._all() if id(o) not in self.before]

    async def all_gone(self) -> None:
        """Every request's objects are gone (their last references drop as the connections close)."""
        with contextlib.suppress(TimeoutError):
            await eventually(lambda: not self.alive(), timeout=5)
        assert self.alive() == []


@pytest.fixture
def requests() -> Iterator[Requests]:
    """The collector off while the test runs: what its requests leave in a cycle stays."""
    gc.collect()
    gc.disable()
    try:
        yield Requests()
    finally:
        gc.enable()


@pytest.mark.parametrize(("path", "body"), REQUESTS, ids=[f"{p} {b}"[:60] for p, b in REQUESTS])
async def test_a_finished_request_leaves_nothing_for_the_collector(
    fake_engine: FakeEngine, requests: Requests, path: str, body: dict[str, Any]
) -> None:
    async with running_gateway(fake_engine) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            for _ in range(3):
                response = await client.post(path, json=body)
                assert response.status_code in (200, 400), response.text
        # The client's connections are closed: the server drops each one's last request.
        await eventually(lambda: gw.handled.finished == 3)
        await requests.all_gone()


async def test_a_stream_cut_by_its_client_leaves_nothing_for_the_collector(
    fake_engine: FakeEngine, requests: Requests
) -> None:
    fake_engine.token_delay = 0.05
    async with running_gateway(fake_engine) as gw:
        async with (
            httpx.AsyncClient(base_url=gw.url) as client,
            client.stream("POST", "/chat_stream", json={"user_input": "hi"}) as response,
        ):
            async for _ in response.aiter_raw():
                break  # hang up after the first chunk
        assert await gw.wait_states(1)
        await eventually(lambda: gw.handled.finished == 1)
        await requests.all_gone()


async def test_on_the_real_engine_a_finished_request_leaves_nothing_for_the_collector(
    real_engine: VLLMEngine, requests: Requests
) -> None:
    # vLLM's output handler writes the tokens (the stream's sink): its path leaves no cycle either.
    chat = {"model": real_engine.model_name, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with running_gateway(real_engine, lifespan="off", max_new_tokens=8) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
            for path, body in (("/chat_stream", {"user_input": "hi"}), ("/v1/chat/completions", chat)):
                response = await client.post(path, json=body)
                assert response.status_code == 200, response.text
        await eventually(lambda: gw.handled.finished == 2)
        await requests.all_gone()
