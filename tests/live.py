"""Run an ASGI app on a real uvicorn server on loopback, inside the test's event loop.

A real server (not an in-memory transport) is what gives tests real client
disconnects, real flow control and real status lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from benchmarks.peers.process import free_port

__all__ = ["free_port", "serve"]


@asynccontextmanager
async def serve(app: ASGIApp, port: int | None = None, lifespan: str = "on", root_path: str = "") -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 for the duration of the block; yields its base URL.

    `root_path` is uvicorn's `--root-path` (the app served behind a proxy that strips a prefix).
    """
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan, root_path=root_path
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(120):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server exited before it started")
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(30):
            await task


class Handled:
    """An ASGI app wrapped to know which HTTP requests it has finished handling.

    A completion callback fires inside the app's call, so once a request is handled
    to its end, a callback that has not come never will: tests wait for this
    instead of sleeping "long enough" before checking that something did not happen.
    Requests are named by their `X-Test-Id` header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.started = 0
        self.finished = 0
        self.finished_ids: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.started += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.finished += 1
            self.finished_ids.update(v.decode() for k, v in scope["headers"] if k == b"x-test-id")

    async def wait_handled(self, *test_ids: str, timeout: float = 30) -> None:
        """Until every request begun has been handled to its end, each of `test_ids` among them."""
        async with asyncio.timeout(timeout):
            while self.finished < self.started or not set(test_ids) <= self.finished_ids:
                await asyncio.sleep(0.005)
