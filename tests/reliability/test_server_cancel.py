"""The server cancelling a request's task: the generation still finishes, once and whole.

uvicorn cancels the tasks of requests still running when its graceful-shutdown
timeout runs out. Wherever that cancel lands (a request waiting in the queue, a
stream mid-answer, the finish itself running its completion callback), the
generation's finish must run to its end exactly once: the slot released, the
engine request aborted, the session lock freed, the callback fired once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import pytest
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.core.completion import CompletionState
from tests.fakes import FakeEngine
from tests.reliability.conftest import Callbacks, Gateway, make_settings, running_gateway
from tests.reliability.test_clients import Connection, wait_until

State = CompletionState


class Tasks:
    """Wraps an ASGI app to know each request's task, by its `X-Test-Id` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.by_id: dict[str, asyncio.Task[object]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            test_id = next((v.decode() for k, v in scope["headers"] if k == b"x-test-id"), "")
            task = asyncio.current_task()
            assert task is not None
            self.by_id[test_id] = task
        await self.app(scope, receive, send)

    async def cancel(self, test_id: str) -> None:
        """Cancel the request's task as uvicorn does, and wait until the task has ended.

        (uvicorn's task logs the app's CancelledError and ends.)
        """
        await wait_until(lambda: test_id in self.by_id)
        task = self.by_id[test_id]
        task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        async with asyncio.timeout(30):
            await asyncio.wait({task})


class HeldCallbacks(Callbacks):
    """Completion callbacks that, while `hold` is unset, wait on it after recording their state."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = asyncio.Event()
        self.hold.set()
        self.waiting = 0
        self.cut = 0  # callbacks cancelled while they waited

    def __call__(self, request: Request, state: CompletionState) -> Awaitable[None]:
        super().__call__(request, state)
        return self._wait()

    async def _wait(self) -> None:
        self.waiting += 1
        try:
            await self.hold.wait()
        except asyncio.CancelledError:
            self.cut += 1
            raise
        finally:
            self.waiting -= 1


@pytest.fixture
async def gateway(engine: FakeEngine) -> AsyncIterator[tuple[Gateway, Tasks, HeldCallbacks]]:
    engine.answer = "an answer long enough to be cut in the middle of it"
    callbacks = HeldCallbacks()
    settings = make_settings(concurrency=1, queue_size=4, max_new_tokens=128)
    async with running_gateway(engine, settings, callbacks=callbacks) as gw:
        tasks = Tasks(gw.handled.app)
        gw.handled.app = tasks
        yield gw, tasks, callbacks


async def test_cancelled_while_queued(gateway: tuple[Gateway, Tasks, HeldCallbacks], engine: FakeEngine) -> None:
    gw, tasks, _ = gateway
    engine.gate = asyncio.Event()
    holder = await Connection.open(gw, "holder")
    await wait_until(lambda: len(engine.running) == 1)
    queued = await Connection.open(gw, "queued")
    await wait_until(lambda: gw.chat.admission.load().waiting == 1)
    await tasks.cancel("queued")
    assert gw.callbacks.states["queued"] == [State.UNKNOWN_ERROR_OCCURRED]
    assert gw.chat.admission.load().waiting == 0
    engine.gate.set()
    await holder.read_until(b"event: done")
    assert await gw.callbacks.wait_for("holder") == State.SUCCESS
    await gw.wait_idle(engine.num_unfinished)
    assert engine.aborted == []  # the queued request never reached the engine
    await holder.close()
    await queued.close()


async def test_cancelled_mid_stream(gateway: tuple[Gateway, Tasks, HeldCallbacks], engine: FakeEngine) -> None:
    gw, tasks, _ = gateway
    engine.gate, engine.gate_after = asyncio.Event(), 3
    conn = await Connection.open(gw, "streaming")
    await conn.read_until(b"event: delta", 3)
    await wait_until(lambda: engine.at_gate == 1)
    await tasks.cancel("streaming")
    assert gw.callbacks.states["streaming"] == [State.UNKNOWN_ERROR_OCCURRED]
    await gw.wait_idle(engine.num_unfinished)
    assert len(engine.aborted) == 1  # the engine request was stopped, not left to run
    await conn.close()


async def test_cancelled_while_the_finish_runs(
    gateway: tuple[Gateway, Tasks, HeldCallbacks], engine: FakeEngine
) -> None:
    gw, tasks, callbacks = gateway
    callbacks.hold.clear()
    conn = await Connection.open(gw, "finishing")
    await conn.read_until(b"event: done")
    await wait_until(lambda: callbacks.waiting == 1)  # the finish is in the callback
    cancelling = asyncio.create_task(tasks.cancel("finishing"))
    await wait_until(lambda: tasks.by_id["finishing"].cancelling() > 0)
    for _ in range(3):  # a cancel reaches the coroutine it lands in on the loop's next turn
        await asyncio.sleep(0)
    callbacks.hold.set()
    await cancelling
    assert callbacks.cut == 0  # the callback was not cut: the finish went on to its end
    assert gw.callbacks.states["finishing"] == [State.SUCCESS]
    await gw.wait_idle(engine.num_unfinished)
    assert engine.aborted == []
    await conn.close()
