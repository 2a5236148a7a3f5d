"""Fixtures of the reliability suite: a real gateway (create_app) on loopback, and how to look inside it."""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.requests import Request

from gateway.app import create_app
from gateway.chat.chat_stream import ChatStream
from gateway.core.completion import CompletionState
from gateway.core.engine import Engine
from gateway.sessions import SessionMiddleware, SessionStore
from gateway.sessions.stores import MemoryStore
from gateway.settings import Settings
from tests.fakes import FakeEngine
from tests.live import Handled, serve

SECRET = "reliability-suite-signing-key-0123456789"
SOAK = os.environ.get("CHATSTREAM_SOAK") == "1"


def rounds(ci: int, soak: int) -> int:
    """How many times a loop runs: small in CI, long under `make soak` (CHATSTREAM_SOAK=1)."""
    return soak if SOAK else ci


def make_settings(**overrides: Any) -> Settings:
    """Settings for a test gateway: a fixed signing key, cookies over plain HTTP, small limits."""
    values: dict[str, Any] = {
        "session_secret": [SECRET],
        "secure_cookies": False,
        "max_new_tokens": 32,
        "ping_interval": 15.0,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Callbacks:
    """Completion callbacks seen, keyed by the request's `x-test-id` header."""

    states: dict[str, list[CompletionState]] = field(default_factory=lambda: collections.defaultdict(list))

    def __call__(self, request: Request, state: CompletionState) -> None:
        self.states[request.headers.get("x-test-id", "")].append(state)

    async def wait_for(self, test_id: str) -> CompletionState:
        """The one state reported for `test_id`, once it is reported."""
        async with asyncio.timeout(30):
            while not self.states.get(test_id):
                await asyncio.sleep(0.005)
        return self.states[test_id][0]


@dataclass
class Gateway:
    url: str
    app: FastAPI
    chat: ChatStream
    callbacks: Callbacks
    handled: Handled

    @property
    def store(self) -> MemoryStore:
        """The app's session store (found by walking the built middleware stack)."""
        node: Any = self.app.middleware_stack
        while node is not None:
            if isinstance(node, SessionMiddleware):
                assert isinstance(node.store, MemoryStore)
                return node.store
            node = getattr(node, "app", None)
        raise AssertionError("no SessionMiddleware in the app")

    async def wait_idle(self, engine_running: Callable[[], int]) -> None:
        """Wait until no slot is held or queued, no session lock is held and the engine runs nothing."""
        held: tuple[int, int, int, int] = (0, 0, 0, 0)
        try:
            async with asyncio.timeout(30):
                while True:
                    load = self.chat.admission.load()
                    held = (load.running, load.waiting, engine_running(), self.store.locks_held)
                    if held == (0, 0, 0, 0):
                        return
                    await asyncio.sleep(0.005)
        except TimeoutError:
            raise AssertionError(f"still held (slots, queued, engine requests, session locks): {held}") from None


@asynccontextmanager
async def running_gateway(
    engine: Engine,
    settings: Settings | None = None,
    *,
    engine_started: bool = False,
    store: SessionStore | None = None,
    callbacks: Callbacks | None = None,
) -> AsyncIterator[Gateway]:
    """create_app(settings) with `engine` (and `store`, if given), served by uvicorn on 127.0.0.1.

    A shared engine that is already running (the real one) is served without
    the app's lifespan, so the app does not start or stop it.
    """
    callbacks = callbacks or Callbacks()
    app = create_app(settings or make_settings(), engine=engine, callback=callbacks, store=store)
    handled = Handled(app)
    async with serve(handled, lifespan="off" if engine_started else "on") as url:
        yield Gateway(url, app, app.state.chat_stream, callbacks, handled)


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


async def raw_request(url: str, head: bytes, body: bytes = b"") -> RawResponse:
    """Send bytes no HTTP client library would send; read the answer until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    async with asyncio.timeout(30):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(head + b"\r\n" + body)
            await writer.drain()
            data = await reader.read(-1)
        finally:
            writer.close()
    head_part, _, rest = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    return RawResponse(int(lines[0].split(" ")[1]), headers, rest)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(answer="fine, thanks")
