"""The response body's short way to the server, past middlewares that only touch the response's start.

Every middleware of the gateway wraps `send` to edit the `http.response.start`
message (headers, cookies, the status it logs) and passes each body message
on unchanged. A stream sends one body message per token, and each of those
wrappers costs a coroutine call on the way down. So the gateway's app
(`gateway.http.direct_send`) leaves the server's own `send` in the request's
scope state, and once the response's start has gone down the whole chain the
runner sends the body straight to it. The app does so only while every
middleware is the gateway's own: one a user adds after `create_app` sees
every message.

Where the server allows it (uvicorn), the way is shorter still: `write` puts
one chunk of the body on the connection at once, without the server's `send`
coroutine, and says False when it cannot (the connection is paused because
the client reads slower than the stream, or it is gone); the runner then
takes `send`, which waits for the client as it always does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import Scope, Send

DIRECT_SEND_STATE = "direct_send"


@dataclass(frozen=True, slots=True)
class DirectSend:
    """The server's own ways to send the body of a response whose start has gone down the chain."""

    send: Send
    write: Callable[[bytes], bool] | None = None  # one chunk, now; False: use `send`


def direct_send(scope: Scope) -> DirectSend | None:
    """The server's ways for this request's body, if the gateway's app left them (None: use the chain's own)."""
    state = scope.get("state")
    return None if state is None else state.get(DIRECT_SEND_STATE)
