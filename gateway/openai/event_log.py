"""A streamed background response's events, kept by the replica that runs it, and the streams that read them.

`POST /v1/responses` with `background` and `stream` answers with the events
of a run that goes on without its client; `GET /v1/responses/{id}?stream=true
&starting_after=N` reads them again from N + 1 and follows the run to its
end (as vLLM's own server and OpenAI's API do). The run's format appends each
event as it spells it, so an event's place in the log is its sequence number.
Its last event is written here once the run's ending is stored, spelled from
the stored response: a stream never ends `completed` when a cancel took the
record first, and a client that reads the response as soon as its stream has
ended finds what the stream said.

A log holds one response's events; the replica drops it a while after the
run ended (background.py). The streams read it, they never drive the run: a
client that leaves, or stops reading and is cut after `send_timeout`, leaves
the run going.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.http.sse import PING, SSE_HEADERS
from gateway.openai.format import dumps

# The stream's last event for each ending; the spec has none for `cancelled`, whose response
# (status `cancelled`, as stored) ends the stream as the one event that ends a stream otherwise.
_LAST_EVENT = {"completed": "response.completed", "incomplete": "response.incomplete"}
_FAILED = "response.failed"
# The events a log writes itself (`finish`): its run's format leaves them out (responses_format.py).
LAST_EVENTS = frozenset({*_LAST_EVENT.values(), _FAILED})


class EventLog:
    """One response's events in order (index = sequence_number), and whether its run has ended."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response  # the response as it was created: what a log whose ending is unknown says
        self.events: list[bytes] = []
        self.ended_at: float | None = None  # the clock's time (background.py's) the last event came
        self._changed = asyncio.Event()

    def append(self, event: bytes) -> None:
        if self.ended_at is None:
            self.events.append(event)
            self._wake()

    def finish(self, response: dict[str, Any], now: float) -> None:
        """The last event: how the run ended, as stored (`response.completed`, `.incomplete`, `.failed`)."""
        if self.ended_at is not None:
            return
        kind = _LAST_EVENT.get(response["status"], _FAILED)
        body = {"type": kind, "sequence_number": len(self.events), "response": response}
        self.events.append(b"event: " + kind.encode() + b"\ndata: " + dumps(body) + b"\n\n")
        self.ended_at = now
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, after: int, quiet: float) -> AsyncGenerator[bytes]:
        """The events after sequence number `after`, then each as it comes, to the last one.

        A keep-alive comment whenever `quiet` seconds pass without one.
        """
        index = max(after + 1, 0)
        while True:
            changed = self._changed
            if index < len(self.events):
                upto = len(self.events)
                yield b"".join(self.events[index:upto])
                index = upto
                continue
            if self.ended_at is not None:
                return
            try:
                await asyncio.wait_for(changed.wait(), quiet)
            except TimeoutError:
                yield PING


class LogStream(Response):
    """An ASGI response: a log's events after `after` as Server-Sent Events, until the run's last event."""

    def __init__(self, log: EventLog, after: int, *, ping_interval: float, send_timeout: float) -> None:
        super().__init__()
        self.log, self.after = log, after
        self.ping_interval, self.send_timeout = ping_interval, send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()  # the client left: its stream ends, the run goes on

            tg.start_soon(watch_disconnect)
            try:
                await self._send(send, {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                async with aclosing(self.log.follow(self.after, self.ping_interval)) as events:
                    async for chunk in events:
                        await self._send(send, {"type": "http.response.body", "body": chunk, "more_body": True})
                await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})
            except (TimeoutError, OSError):
                pass  # a client that stopped reading (cut after send_timeout) or is gone: the run goes on
            tg.cancel_scope.cancel()

    async def _send(self, send: Send, message: Message) -> None:
        with anyio.fail_after(self.send_timeout):
            await send(message)
