"""Two front ends (whole gateway apps) sharing one admission coordinator: the four completion states,
refusals and the cap, exactly as one gateway, whichever front end a request reaches.

Each front end is a real app on its own uvicorn server with its own fake engine,
as each front-end process has its own client of the shared engine core.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.requests import Request

from gateway import CompletionState, Settings
from gateway.app import create_app, make_chat_stream
from gateway.processes.coordinator import AdmissionCoordinator
from gateway.processes.remote import RemoteAdmission
from tests.fakes import FakeEngine
from tests.gateway_app import metric
from tests.live import Handled, serve
from tests.sse_client import eventually, hang_up, open_raw_post

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@dataclass
class FrontEnd:
    url: str
    engine: FakeEngine
    handled: Handled
    states: list[CompletionState] = field(default_factory=list)


@asynccontextmanager
async def front_ends(link_path: str, count: int = 2) -> AsyncIterator[list[FrontEnd]]:
    """`count` gateway apps (2 slots, 2 queue places) on one coordinator, each with its fake engine."""
    settings = Settings(secure_cookies=False, concurrency=2, queue_size=2, queue_timeout=30)
    async with AsyncExitStack() as stack:
        started: list[FrontEnd] = []
        for index in range(count):
            engine = FakeEngine()
            states: list[CompletionState] = []

            def record(request: Request, state: CompletionState, states: list[CompletionState] = states) -> None:
                states.append(state)

            admission = RemoteAdmission(link_path, index, settings.concurrency, settings.queue_size)
            chat = make_chat_stream(settings, engine, admission=admission)
            handled = Handled(create_app(settings, chat_stream=chat, callback=record))
            url = await stack.enter_async_context(serve(handled))
            started.append(FrontEnd(url, engine, handled, states))
        yield started


async def test_completion_states_and_refusals_across_two_front_ends(
    coordinator: AdmissionCoordinator, link_path: str
) -> None:
    async with front_ends(link_path) as (first, second):
        for front in (first, second):
            front.engine.gate = asyncio.Event()
        second.engine.gate_after = 1  # its generations hold after their first token: they have begun streaming
        # Two generations held running and two waiting, one of each in each front end.
        held = [await open_raw_post(f.url, "/v1/chat/completions", CHAT) for f in (first, second)]
        await eventually(lambda: len(first.engine.running) == len(second.engine.running) == 1)
        queued = [await open_raw_post(f.url, "/v1/chat/completions", CHAT) for f in (second, first)]
        await eventually(lambda: coordinator.admission.load().waiting == 2)

        async with httpx.AsyncClient(timeout=30) as client:
            for front in (first, second):  # full, whichever front end is asked
                refused = await client.post(f"{front.url}/v1/chat/completions", json=CHAT)
                assert refused.status_code == 429, refused.text
                assert int(refused.headers["retry-after"]) >= 1
                assert (await client.get(f"{front.url}/get_load")).json() == {
                    "in_flight": 2,
                    "queued": 2,
                    "capacity": 2,
                    "queue_size": 2,
                }

            await hang_up(queued[0][1])  # left while waiting, in the second front end
            await eventually(lambda: second.states == [CompletionState.CLIENT_DISCONNECTED_BEFORE_STREAMING])
            first.engine.fail_after_tokens = 3  # the next generation the first front end runs fails
            first.engine.gate.set()  # its running one ends (fails: the gate opened after the flag was set)
            # Its slot went to the request waiting in the first front end, which fails too.
            await eventually(lambda: len(first.states) == 2)
            await hang_up(held[1][1])  # the second front end's stream, mid-answer
            await eventually(lambda: len(second.states) == 2)
            second.engine.gate.set()
            ok = await client.post(f"{second.url}/v1/chat/completions", json={**CHAT, "stream": False})
            assert ok.status_code == 200
            await eventually(lambda: coordinator.admission.load().running + coordinator.admission.load().waiting == 0)
            text = (await client.get(f"{first.url}/metrics")).text
        for _, writer in held[:1] + queued[1:]:
            await hang_up(writer)  # answered (failed) already

    assert first.states == [CompletionState.UNKNOWN_ERROR_OCCURRED] * 2
    assert second.states == [
        CompletionState.CLIENT_DISCONNECTED_BEFORE_STREAMING,
        CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING,
        CompletionState.SUCCESS,
    ]
    # The gauges are the gateway's (this test runs without a shared metrics directory: the counters are its own).
    assert metric(text, "chatstream:num_requests_running") == 0
    assert metric(text, "chatstream:admission_capacity") == 2


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat_stream"])
async def test_a_front_end_whose_coordinator_is_gone_answers_503(
    coordinator: AdmissionCoordinator, link_path: str, path: str
) -> None:
    async with front_ends(link_path, count=1) as [front], httpx.AsyncClient(timeout=30) as client:
        await coordinator.close()
        body = CHAT if path.startswith("/v1") else {"user_input": "hi"}
        response = await client.post(f"{front.url}{path}", json=body)
        assert response.status_code == 503, response.text
        assert "retry-after" in response.headers
        assert (await client.get(f"{front.url}/ready")).status_code == 503
