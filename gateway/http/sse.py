"""What every Server-Sent Events stream of the gateway shares, whatever its API."""

from __future__ import annotations

import json

import orjson
from sse_starlette import ServerSentEvent

# `X-Accel-Buffering: no` stops nginx from holding events back.
SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]

# A comment line: clients ignore it, and load balancers see a stream that is alive.
PING = ServerSentEvent(comment="ping").encode()


def json_string(text: str) -> bytes:
    """`text` as a JSON string, byte for byte what `json.dumps(text, ensure_ascii=False)` spells.

    orjson spells strings exactly as `json` does (without ASCII escapes) at a
    tenth of the cost; a stream spells one per token. It refuses lone
    surrogates, which `json` then handles (or refuses) as it always did.
    """
    try:
        return orjson.dumps(text)
    except TypeError:
        return json.dumps(text, ensure_ascii=False).encode()
