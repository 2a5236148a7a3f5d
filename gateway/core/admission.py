"""AdmissionController: how many generations run at once, and who waits.

`capacity` tickets may hold a slot; `queue_size` more may wait, first come
first served; the next arrival is refused at once. The decision is made
synchronously in `enter()`, so counting is exact under any arrival pattern, and
a freed slot is handed straight to the oldest waiter, so no newcomer can jump
the queue. Every ticket is released exactly once, however its request ends.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass

from gateway.core.errors import EngineUnavailable, Overloaded, QueueTimeout


@dataclass(frozen=True, slots=True)
class Load:
    running: int
    waiting: int
    capacity: int
    queue_size: int


class Ticket:
    """One request's claim on a slot: waiting, holding, or released."""

    __slots__ = ("_controller", "_future", "admitted_at", "created_at", "released")

    def __init__(self, controller: AdmissionController, future: asyncio.Future[None] | None) -> None:
        self._controller = controller
        self._future = future
        self.created_at = time.monotonic()
        self.admitted_at: float | None = self.created_at if future is None else None
        self.released = False

    @property
    def admitted(self) -> bool:
        return self.admitted_at is not None

    async def wait(self, timeout: float | None) -> None:
        """Wait for a slot. QueueTimeout after `timeout` s; cancelling gives the place up at once."""
        future = self._future
        if future is None or self.admitted:
            return
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            self.release()
            raise QueueTimeout(f"no generation slot became free within {timeout:g} s", retry_after=timeout) from None
        except BaseException:
            self.release()
            raise
        self.admitted_at = time.monotonic()

    @property
    def queue_seconds(self) -> float:
        return (self.admitted_at or time.monotonic()) - self.created_at

    def release(self) -> None:
        """Give back the slot or the queue place. Safe to call more than once."""
        if self.released:
            return
        self.released = True
        self._controller._release(self)


class AdmissionController:
    """Caps generations in flight at `capacity`, with `queue_size` waiting places."""

    def __init__(self, capacity: int, queue_size: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if queue_size < 0:
            raise ValueError("queue_size cannot be negative")
        self.capacity = capacity
        self.queue_size = queue_size
        self._running = 0
        self._waiters: collections.deque[Ticket] = collections.deque()
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        # Mean time a slot is held, to tell refused clients when to come back.
        self._mean_hold = 1.0

    def load(self) -> Load:
        return Load(self._running, len(self._waiters), self.capacity, self.queue_size)

    @property
    def draining(self) -> bool:
        return self._draining

    def enter(self) -> Ticket:
        """Claim a slot or a queue place now, or raise Overloaded / EngineUnavailable."""
        if self._draining:
            raise EngineUnavailable("the gateway is shutting down", retry_after=5)
        if self._running < self.capacity and not self._waiters:
            self._running += 1
            self._idle.clear()
            return Ticket(self, None)
        if len(self._waiters) >= self.queue_size:
            wait = self._mean_hold * (len(self._waiters) + 1) / self.capacity
            raise Overloaded("the server is busy; try again shortly", retry_after=wait)
        ticket = Ticket(self, asyncio.get_running_loop().create_future())
        self._waiters.append(ticket)
        self._idle.clear()
        return ticket

    def _release(self, ticket: Ticket) -> None:
        future = ticket._future
        if future is not None and not future.done():
            # Still waiting: just give the place up.
            self._waiters.remove(ticket)
        else:
            if ticket.admitted_at is not None:
                held = time.monotonic() - ticket.admitted_at
                self._mean_hold += 0.1 * (held - self._mean_hold)
            self._hand_over_slot()
        if self._running == 0 and not self._waiters:
            self._idle.set()

    def _hand_over_slot(self) -> None:
        while self._waiters:
            nxt = self._waiters.popleft()
            assert nxt._future is not None
            if not nxt._future.done():
                nxt._future.set_result(None)
                return
        self._running -= 1

    def start_draining(self) -> None:
        """Refuse new requests from now on; those admitted or queued carry on."""
        self._draining = True

    async def wait_idle(self) -> None:
        """Return once nothing runs or waits."""
        await self._idle.wait()
