"""Slow and vanishing clients: every way of leaving releases everything, and is reported once.

Real sockets against a real uvicorn server: a client closes its connection at
each moment of a request's life, and a client that stops reading is cut by the
send timeout. After each one the gateway must hold no slot, no queue place, no
session lock and no engine request, and the completion callback must have
fired exactly once with the right state (or not at all for a request that
never entered the queue). Loops run `rounds(20, 1000)` times (1000 under `make soak`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import pytest

from gateway.core.completion import CompletionState
from gateway.core.engine import EngineOutput, OutputSink, SamplingOptions
from tests.fakes import FakeEngine
from tests.reliability.conftest import Gateway, make_settings, rounds, running_gateway

State = CompletionState


class Connection:
    """One raw HTTP/1.1 request whose client can stop at any byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = b""

    @classmethod
    async def open(
        cls, gw: Gateway, test_id: str, *, send_all: bool = True, rcvbuf: int | None = None, openai: bool = False
    ) -> Connection:
        host, port = gw.url.removeprefix("http://").split(":")
        sock = socket.socket()
        if rcvbuf is not None:  # set before connecting, so the window starts small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock)
        text = f"hello from {test_id}"
        if openai:
            path = b"/v1/chat/completions"
            payload: dict[str, object] = {"model": "fake-model", "messages": [{"role": "user", "content": text}]}
            body = json.dumps({**payload, "stream": True}).encode()
        else:
            path, body = b"/chat_stream", json.dumps({"user_input": text}).encode()
        head = (
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"X-Test-Id: %s\r\nContent-Length: %d\r\n\r\n" % (path, test_id.encode(), len(body))
        )
        writer.write(head + (body if send_all else body[: len(body) // 2]))
        await writer.drain()
        return cls(reader, writer)

    async def read_until(self, marker: bytes, count: int = 1) -> None:
        async with asyncio.timeout(30):
            while self.received.count(marker) < count:
                chunk = await self.reader.read(65536)
                assert chunk, f"connection closed before {marker!r} x{count}: {self.received[-300:]!r}"
                self.received += chunk

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.002)


# Each scenario leaves at one moment and returns the state the callback must report
# (None: the request never entered the queue, so no callback).
Scenario = Callable[[Gateway, FakeEngine, str], Awaitable[State | None]]


async def before_the_body_is_complete(gw: Gateway, engine: FakeEngine, tid: str) -> State | None:
    conn = await Connection.open(gw, tid, send_all=False)
    await asyncio.sleep(0.01)
    await conn.close()
    return None


async def while_queued(gw: Gateway, engine: FakeEngine, tid: str) -> State | None:
    engine.gate = asyncio.Event()
    holder = await Connection.open(gw, tid + "-holder")
    await wait_until(lambda: len(engine.running) == 1)
    queued = await Connection.open(gw, tid)
    await wait_until(lambda: gw.chat.admission.load().waiting == 1)
    await queued.close()
    await wait_until(lambda: gw.chat.admission.load().waiting == 0)
    engine.gate.set()
    await holder.read_until(b"event: done")
    await holder.close()
    assert await gw.callbacks.wait_for(tid + "-holder") == State.SUCCESS
    engine.gate = None
    return State.CLIENT_DISCONNECTED_BEFORE_STREAMING


async def admitted_before_the_first_token(gw: Gateway, engine: FakeEngine, tid: str) -> State | None:
    engine.gate = asyncio.Event()
    conn = await Connection.open(gw, tid)
    await wait_until(lambda: len(engine.running) == 1)
    await conn.close()
    await gw.callbacks.wait_for(tid)
    engine.gate = None
    return State.CLIENT_DISCONNECTED_BEFORE_STREAMING


async def at_the_first_token(gw: Gateway, engine: FakeEngine, tid: str) -> State | None:
    conn = await Connection.open(gw, tid)
    await conn.read_until(b"event: delta")
    await conn.close()
    return State.CLIENT_DISCONNECTED_WHILE_STREAMING


async def mid_stream(gw: Gateway, engine: FakeEngine, tid: str) -> State | None:
    conn = await Connection.open(gw, tid)
    await conn.read_until(b"event: delta", 5)
    await conn.close()
    return State.CLIENT_DISCONNECTED_WHILE_STREAMING


async def after_the_last_token(gw: Gateway, engine: FakeEngine, tid: str) -> State | None:
    conn = await Connection.open(gw, tid)
    await conn.read_until(b"event: done")
    await conn.close()
    return State.SUCCESS


async def mid_stream_on_the_openai_route(gw: Gateway, engine: FakeEngine, tid: str) -> State | None:
    conn = await Connection.open(gw, tid, openai=True)
    await conn.read_until(b"data: ", 5)
    await conn.close()
    return State.CLIENT_DISCONNECTED_WHILE_STREAMING


async def after_the_last_token_on_the_openai_route(gw: Gateway, engine: FakeEngine, tid: str) -> State | None:
    conn = await Connection.open(gw, tid, openai=True)
    await conn.read_until(b"data: [DONE]")
    await conn.close()
    return State.SUCCESS


SCENARIOS: list[Scenario] = [
    before_the_body_is_complete,
    while_queued,
    admitted_before_the_first_token,
    at_the_first_token,
    mid_stream,
    after_the_last_token,
    mid_stream_on_the_openai_route,
    after_the_last_token_on_the_openai_route,
]

# The moments at which the engine is generating for the client that leaves.
LEFT_THE_ENGINE_RUNNING = {
    admitted_before_the_first_token,
    at_the_first_token,
    mid_stream,
    mid_stream_on_the_openai_route,
}


@pytest.fixture
async def gateway(engine: FakeEngine) -> AsyncIterator[Gateway]:
    # A slow answer, so a client can leave in the middle of it.
    engine.answer = "a slow answer, one character at a time, long enough to leave in the middle"
    engine.token_delay = 0.002
    settings = make_settings(concurrency=1, queue_size=4, max_new_tokens=128)
    async with running_gateway(engine, settings) as gw:
        yield gw


@pytest.mark.parametrize("scenario", [pytest.param(s, id=s.__name__) for s in SCENARIOS])
async def test_leaving_at_this_moment_releases_everything_and_reports_once(
    gateway: Gateway, engine: FakeEngine, scenario: Scenario
) -> None:
    expected = await scenario(gateway, engine, "one")
    await gateway.wait_idle(engine.num_unfinished)
    if expected is None:
        await gateway.handled.wait_handled("one")  # handled to its end: a callback not yet come never will
        assert "one" not in gateway.callbacks.states
    else:
        assert gateway.callbacks.states["one"] == [expected]
    if scenario in LEFT_THE_ENGINE_RUNNING:
        assert len(engine.aborted) == 1  # the engine request was stopped, not left to run
    else:
        assert engine.aborted == []


async def test_every_way_of_leaving_in_a_loop_leaks_nothing(gateway: Gateway, engine: FakeEngine) -> None:
    n = rounds(20, 1000)
    started = time.monotonic()
    expected: dict[str, State | None] = {}
    for i in range(n):
        for scenario in SCENARIOS:
            tid = f"{scenario.__name__}-{i}"
            expected[tid] = await scenario(gateway, engine, tid)
            await gateway.wait_idle(engine.num_unfinished)
    await gateway.handled.wait_handled(*expected)
    seen = gateway.callbacks.states
    wrong = {tid: seen.get(tid) for tid, state in expected.items() if seen.get(tid, []) != ([state] if state else [])}
    assert wrong == {}
    load = gateway.chat.admission.load()
    figures = Counter(s.value for states in seen.values() for s in states)
    print(
        f"\nclient departures: {len(expected)} requests ({n} rounds x {len(SCENARIOS)} moments) "
        f"in {time.monotonic() - started:.1f} s; callbacks {dict(figures)}; "
        f"leaked slots {load.running + load.waiting}, engine requests left {engine.num_unfinished()}, "
        f"session locks left {gateway.store.locks_held}"
    )
    assert (load.running, load.waiting, engine.num_unfinished(), gateway.store.locks_held) == (0, 0, 0, 0)


# --- a client that reads nothing ---------------------------------------------------------


class FloodEngine(FakeEngine):
    """Answers with 64 KiB deltas until it is stopped, so a client that does not read stalls the server's sends."""

    flood = True

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions, sink: OutputSink | None = None
    ) -> AsyncGenerator[EngineOutput, None]:
        if not self.flood:
            async for out in super().generate(request_id, prompt_token_ids, options, sink):
                yield out
            return
        self.running.add(request_id)
        try:
            while True:
                out = EngineOutput("x" * 65536, 1, len(prompt_token_ids))
                if not self.took(sink, out):
                    yield out
                await asyncio.sleep(0)
        finally:
            self.running.discard(request_id)


async def test_a_client_that_reads_nothing_is_cut_by_the_send_timeout_and_frees_its_slot() -> None:
    engine = FloodEngine()
    settings = make_settings(concurrency=1, queue_size=0, send_timeout=1.0)
    async with running_gateway(engine, settings) as gw:
        stalled = await Connection.open(gw, "stalled", rcvbuf=4096)
        state = await gw.callbacks.wait_for("stalled")
        assert state == State.CLIENT_DISCONNECTED_WHILE_STREAMING
        await gw.wait_idle(engine.num_unfinished)
        # the slot is free again: the next client is served (queue_size=0 would refuse it otherwise)
        engine.flood = False
        after = await Connection.open(gw, "after")
        await after.read_until(b"event: done")
        await after.close()
        assert await gw.callbacks.wait_for("after") == State.SUCCESS
        # uvicorn keeps the socket until its write buffer drains: the stalled client
        # holds a file descriptor, not a slot (a proxy's send timeout closes it in production)
        await stalled.close()
