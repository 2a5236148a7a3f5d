"""The gateway's app: FastAPI that offers the runner the server's own way down for response bodies.

See `gateway.core.direct_send` for why, and for the rule every middleware of
the gateway keeps: edit only `http.response.start`, pass body messages on as
they are. Starlette puts its `ServerErrorMiddleware` outside every middleware
(it only notes that the response started), so the app, not a middleware, is
the one place that sees the server's `send` itself.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle as HttptoolsCycle

from gateway.core.direct_send import DIRECT_SEND_STATE, DirectSend


class GatewayApp(FastAPI):
    """FastAPI that leaves the server's `send` in each request's state while every middleware is the gateway's."""

    # How many of `user_middleware` are the gateway's own: set by create_app once it added them.
    own_middleware: int | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or len(self.user_middleware) != self.own_middleware:
            await super().__call__(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[DIRECT_SEND_STATE] = DirectSend(send, chunk_writer(send))
        try:
            await super().__call__(scope, receive, send)
        finally:
            # `send` is the server's connection object's, which holds this scope: left here, the
            # pair is a reference cycle that keeps the whole request alive until a full collection.
            del state[DIRECT_SEND_STATE]


def chunk_writer(send: Send) -> Callable[[bytes], bool] | None:
    """uvicorn's connection behind `send`, as a function that writes one chunk of a streamed body at once.

    uvicorn's `send` for a body chunk only checks the connection's state and
    frames the chunk: doing the same here saves a coroutine per token, an eighth
    of the gateway's own cost per streamed token. Anything but a chunked
    response under way on a connection that takes data now goes to `send`.
    """
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not HttptoolsCycle:  # another server, or uvicorn's h11 protocol: `send` is the way
        return None
    transport, flow = cycle.transport, cycle.flow

    def write(body: bytes) -> bool:
        if flow.write_paused or cycle.disconnected or not cycle.chunked_encoding or cycle.response_complete:
            return False
        if body:  # an empty chunk would end the response
            transport.write(b"%x\r\n%b\r\n" % (len(body), body))
        return True

    return write
