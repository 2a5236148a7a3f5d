"""LockRenewal: keeps a shared store's generation locks alive while the requests holding them run.

A lock in a store shared by several processes (Redis, SQL) expires after
`lock_timeout`, so a dead replica's lock lapses by itself. While a request of
this process holds one, a task renews it every third of `lock_timeout`, so a
generation longer than `lock_timeout` keeps its lock. The renewal stops when
the lock is released, when it was lost, or when the request that took it
ended without releasing it (a bug): that lock then lapses like a dead
replica's, instead of being held for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)


class LockRenewal:
    """One renewing task per lock held; `renew(session_id, owner)` extends a lock, False if it was lost."""

    def __init__(
        self,
        lock_timeout: float,
        renew: Callable[[str, str], Awaitable[bool]],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.lock_timeout = lock_timeout
        self._renew = renew
        self._sleep = sleep  # how renewers wait (a seam: tests move time by hand)
        self.tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def start(self, session_id: str, owner: str) -> None:
        """Renew the lock just taken by the running task, until `stop` or that task ends."""
        holder = asyncio.current_task()
        self.tasks[session_id, owner] = asyncio.create_task(self._run(session_id, owner, holder))

    def stop(self, session_id: str, owner: str) -> None:
        task = self.tasks.pop((session_id, owner), None)
        if task is not None:
            task.cancel()

    async def _run(self, session_id: str, owner: str, holder: asyncio.Task[Any] | None) -> None:
        while True:
            await self._sleep(self.lock_timeout / 3)
            if holder is not None and holder.done():  # its request ended without unlocking: let it lapse
                logger.warning("a session lock outlived its request: it lapses in %.0f s", self.lock_timeout)
                self.tasks.pop((session_id, owner), None)
                return
            try:
                held = await self._renew(session_id, owner)
            except Exception as exc:  # the store briefly away: the lock still has two thirds of its time
                logger.warning("could not renew a session lock: %s", type(exc).__name__)
                continue
            if not held:
                logger.warning("a session lock expired while its generation was running")
                self.tasks.pop((session_id, owner), None)
                return

    async def close(self) -> None:
        """Stop renewing (a closing replica's locks lapse after `lock_timeout`)."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
