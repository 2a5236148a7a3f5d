"""Run an ASGI app on a real uvicorn server on loopback, inside the test's event loop.

A real server (not an in-memory transport) is what gives tests real client
disconnects, real flow control and real status lines.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.types import ASGIApp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
