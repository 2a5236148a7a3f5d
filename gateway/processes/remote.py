"""RemoteAdmission: a front-end process's view of the gateway's one admission controller.

It implements the `Admission` protocol (gateway/core/claims.py) by asking the
coordinator in the parent process (gateway/processes/coordinator.py): a claim
and a confirmation are one round trip each, a release is one message with no
answer, a slot arrives as a message. The queue timeout is kept here, as the
controller keeps it in one process. If the link to the coordinator breaks
(the parent died), every request is refused with 503 from then on, waiting
ones included, and `lost` tells the server to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from typing import Any

from gateway.core.admission import Load, wait_for_slot
from gateway.core.errors import EngineUnavailable, GatewayError
from gateway.core.principal import ANONYMOUS, Principal
from gateway.processes.wire import (
    LINE_LIMIT,
    Message,
    encode,
    error_from_wire,
    error_to_wire,
    load_from_wire,
    messages,
    principal_to_wire,
)

logger = logging.getLogger(__name__)

# What a request gets when the coordinator cannot be asked.
_LINK_LOST = "the gateway's admission cannot be reached"


class RemoteTicket:
    """One request's place, held in the coordinator: the `Claim` protocol over the link."""

    __slots__ = ("_admission", "_slot", "admitted_at", "key", "principal", "queued_at", "released", "state")

    def __init__(self, admission: RemoteAdmission, key: int, principal: Principal) -> None:
        self._admission = admission
        self.key = key
        self.principal = principal
        self.state = "pending"
        self.queued_at = time.monotonic()
        self.admitted_at: float | None = None
        self.released = False
        # Resolved with None (a slot) or the refusal, by the link's reader; made before the
        # confirmation goes out, so a slot that arrives before `wait` is called is not lost.
        self._slot: asyncio.Future[GatewayError | None] | None = None

    @property
    def queue_seconds(self) -> float:
        return (self.admitted_at or time.monotonic()) - self.queued_at

    async def aconfirm(
        self, prompt_tokens: int = 0, max_tokens: int = 0, priority: int = 0, user: str | None = None
    ) -> None:
        """Join the queue with the request's cost; raises the refusal (the place stays claimed: release it)."""
        admission = self._admission
        self._slot = admission.slot_future(self.key)
        request = {"op": "confirm", "ticket": self.key, "prompt_tokens": prompt_tokens, "max_tokens": max_tokens}
        reply = await admission.call({**request, "priority": priority, "user": user})
        self.queued_at = time.monotonic()
        self.state = reply["state"]
        if self.state == "running":
            self.admitted_at = self.queued_at

    async def wait(self, timeout: float | None) -> None:
        """Wait for a slot. QueueTimeout after `timeout` s; cancelling gives the place up at once."""
        if self.state == "running":
            return
        if self._slot is None:
            raise RuntimeError("only a confirmed ticket can wait for a slot")
        refusal = await wait_for_slot(self._slot, timeout, self.release)
        if refusal is not None:
            self.release()  # the coordinator ended it already: this only counts it out here
            raise refusal
        self.state = "running"
        self.admitted_at = time.monotonic()

    def release(self, output_tokens: int = 0) -> None:
        """Give the place back, exactly once (a message with no answer)."""
        if self.released:
            return
        self.released = True
        self.state = "done"
        self._admission.release(self.key, output_tokens)


class RemoteAdmission:
    """The `Admission` of one front-end process (`index`) of several, through the coordinator at `path`."""

    def __init__(self, path: str, index: int, capacity: int, queue_size: int) -> None:
        self.path = path
        self.index = index
        self._load = Load(0, 0, capacity, queue_size)
        self._draining = False
        self.lost = False
        self.stop_requested = False  # the parent process says: stop serving now
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[Message]] = {}
        self._slots: dict[int, asyncio.Future[GatewayError | None]] = {}
        self._held = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(self.path, limit=LINE_LIMIT)
        self._reader_task = asyncio.create_task(self._read(reader))
        reply = await self.call({"op": "hello", "index": self.index, "pid": os.getpid()})
        self._draining = self._draining or reply["draining"]

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task

    @property
    def draining(self) -> bool:
        return self._draining

    def load(self) -> Load:
        return self._load

    async def aload(self) -> Load:
        await self.call({"op": "load"})
        return self._load

    async def aclaim(self, principal: Principal = ANONYMOUS) -> RemoteTicket:
        if self._draining:  # known here: no need to ask
            raise EngineUnavailable("the gateway is shutting down", retry_after=5)
        key = next(self._ids)
        await self.call({"op": "claim", "principal": principal_to_wire(principal)}, key)
        self._held += 1
        self._idle.clear()
        return RemoteTicket(self, key, principal)

    async def aholds_place(self, user: str) -> bool:
        return bool((await self.call({"op": "holds", "user": user}))["value"])

    async def afairness(self) -> dict[str, Any]:
        value: dict[str, Any] = (await self.call({"op": "fairness"}))["value"]
        return value

    def start_draining(self) -> None:
        """Refuse new requests in every process of the gateway (the coordinator tells the others)."""
        self._draining = True
        with contextlib.suppress(EngineUnavailable):
            self._send({"op": "drain"})

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def slot_future(self, key: int) -> asyncio.Future[GatewayError | None]:
        future: asyncio.Future[GatewayError | None] = asyncio.get_running_loop().create_future()
        self._slots[key] = future
        return future

    async def call(self, message: Message, key: int | None = None) -> Message:
        """Send `message` and return the coordinator's answer; raise its refusal, or 503 without a link."""
        key = next(self._ids) if key is None else key
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._calls[key] = future
        try:
            self._send({**message, "id": key})
            reply = await future
        finally:
            self._calls.pop(key, None)
        if "error" in reply:
            raise error_from_wire(reply["error"])
        return reply

    def release(self, key: int, output_tokens: int) -> None:
        self._slots.pop(key, None)
        self._held -= 1
        if not self._held:
            self._idle.set()
        with contextlib.suppress(EngineUnavailable):  # no link: the coordinator released it as the link closed
            self._send({"op": "release", "ticket": key, "output_tokens": output_tokens})

    def _send(self, message: Message) -> None:
        if self.lost or self._writer is None or self._writer.is_closing():
            raise EngineUnavailable(_LINK_LOST, retry_after=5)
        self._writer.write(encode(message))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            async for message in messages(reader):
                self._receive(message)
        except (ConnectionError, ValueError) as exc:
            logger.error("the admission link broke: %s", exc)
        finally:
            self._lose_link()

    def _receive(self, message: Message) -> None:
        self._load = load_from_wire(message["load"])
        if "id" in message:
            call = self._calls.get(message["id"])
            if call is not None and not call.done():
                call.set_result(message)
        elif message["event"] == "draining":
            self._draining = True
        elif message["event"] == "stop":
            self.stop_requested = True
        else:  # a waiting ticket's slot, or its refusal
            slot = self._slots.get(message["ticket"])
            if slot is not None and not slot.done():
                refused = message["event"] == "refused"
                slot.set_result(error_from_wire(message["error"]) if refused else None)

    def _lose_link(self) -> None:
        if self.lost:
            return
        self.lost = True
        self._draining = True
        gone = EngineUnavailable(_LINK_LOST, retry_after=5)
        for call in self._calls.values():
            if not call.done():
                call.set_result({"error": error_to_wire(gone)})
        for slot in self._slots.values():
            if not slot.done():
                slot.set_result(gone)
