"""What every Server-Sent Events stream of the gateway shares, whatever its API."""

from __future__ import annotations

from sse_starlette import ServerSentEvent

# `X-Accel-Buffering: no` stops nginx from holding events back.
SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]

# A comment line: clients ignore it, and load balancers see a stream that is alive.
PING = ServerSentEvent(comment="ping").encode()
