"""The admission link's messages: one JSON object per line on a unix socket, and what they carry.

A front-end process sends `op` messages with an `id` (answered by a reply with
the same `id`) or without one (`release`, `drain`: nothing to answer). The
coordinator also sends events of its own: `admitted` (a waiting ticket got
its slot), `refused` (a waiting ticket was displaced), `draining` and `stop`. Every
message from the coordinator carries the load as it was when it was sent, so a
front end's `load()` is never older than its last exchange.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from gateway.core.admission import Load
from gateway.core.errors import (
    Displaced,
    EngineUnavailable,
    GatewayError,
    LimitReached,
    Overloaded,
    PriorityNotAllowed,
    QueueTimeout,
)
from gateway.core.principal import Limits, Principal

Message = dict[str, Any]

# The refusals admission raises, by name; anything else arrives as a plain GatewayError.
_REFUSALS: dict[str, type[GatewayError]] = {
    cls.__name__: cls for cls in (Overloaded, Displaced, EngineUnavailable, PriorityNotAllowed, QueueTimeout)
}
# A line longer than this is not a message of ours (a fairness snapshot of many users is the largest).
LINE_LIMIT = 16 * 1024 * 1024


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


async def messages(reader: asyncio.StreamReader) -> AsyncIterator[Message]:
    """The messages on `reader` until the other side closes the link."""
    while line := await reader.readline():
        yield json.loads(line)


def principal_to_wire(principal: Principal) -> Message:
    return {"user": principal.user, "class": principal.user_class, "quota": principal.quota, **asdict(principal.limits)}


def principal_from_wire(data: Message) -> Principal:
    limits = {name: data[name] for name in Limits.__dataclass_fields__}
    return Principal(data["user"], data["class"], Limits(**limits), data["quota"])


def error_to_wire(error: GatewayError) -> Message:
    wire: Message = {"kind": type(error).__name__, "message": error.message, "retry_after": error.retry_after}
    if isinstance(error, LimitReached):
        wire.update(limit=error.limit, value=error.value)
    elif error.param is not None:
        wire["param"] = error.param
    return wire


def error_from_wire(data: Message) -> GatewayError:
    if data["kind"] == "LimitReached":
        return LimitReached(data["limit"], data["value"], data["retry_after"])
    cls = _REFUSALS.get(data["kind"], GatewayError)
    return cls(data["message"], retry_after=data["retry_after"], param=data.get("param"))


def load_to_wire(load: Load) -> list[int]:
    return [load.running, load.waiting, load.capacity, load.queue_size]


def load_from_wire(data: list[int]) -> Load:
    return Load(*data)
