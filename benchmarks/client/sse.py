"""Server-sent events, decoded from a body that arrives in arbitrary pieces.

The one SSE parser of the harness: the load targets, the disconnect storm and
the httpx comparison of scenario 5 all read events through it, so the two
client stacks measured there differ only in their HTTP layer. It is written
here rather than taken from httpx-sse because the load client does not use
httpx (see `http.py`) and it parses every streamed token on a shared core.
"""

from __future__ import annotations

from typing import NamedTuple


class Event(NamedTuple):
    """One event: its `event:` name ("message" when it has none) and its `data:` lines joined by newlines."""

    name: str
    data: str


class SSEDecoder:
    """Feed it body bytes as they arrive; it returns the events completed so far and keeps the rest."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Event]:
        """The complete events in what has arrived; comments (keep-alive pings) are skipped."""
        buffer = self._buffer
        buffer += data.replace(b"\r\n", b"\n")
        events: list[Event] = []
        while (end := buffer.find(b"\n\n")) >= 0:
            block = bytes(buffer[:end]).decode("utf-8", "replace")
            del buffer[: end + 2]
            name, datas = "message", []
            for line in block.split("\n"):
                if line.startswith(":") or not line:
                    continue
                key, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if key == "event":
                    name = value
                elif key == "data":
                    datas.append(value)
            if datas or name != "message":
                events.append(Event(name, "\n".join(datas)))
        return events
