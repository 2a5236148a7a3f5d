"""How late the client's own event loop wakes up: a starved client inflates every latency it measures."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def loop_lag(interval: float = 0.005) -> AsyncIterator[list[float]]:
    """Sample, every `interval` s while the block runs, how late this event loop woke (s)."""
    lags: list[float] = []

    async def tick() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(interval)
            lags.append(time.perf_counter() - before - interval)

    task = asyncio.create_task(tick())
    try:
        yield lags
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
