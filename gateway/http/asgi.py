"""The one idiom every pure ASGI middleware of the gateway shares: touch the response's start."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Message, Send


def on_response_start(send: Send, edit: Callable[[Message], None]) -> Send:
    """`send`, with `edit` applied to the `http.response.start` message (e.g. to add headers) before it goes."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            edit(message)
        await send(message)

    return wrapped


def add_headers(message: Message, headers: list[tuple[bytes, bytes]]) -> None:
    """Append raw headers to an `http.response.start` message."""
    message["headers"] = [*message.get("headers", ()), *headers]
