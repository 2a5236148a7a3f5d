"""Pure ASGI middleware that offers the runner a direct way to the server for response bodies.

Added last in `create_app` (the outermost of the gateway's middlewares); see
`gateway.core.direct_send` for why, and for the rule every middleware inside
it keeps: edit only `http.response.start`, pass body messages on as they are.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.core.direct_send import DIRECT_SEND_STATE


class DirectSend:
    """Leaves this request's `send` in its scope state, for the body of a stream."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[DIRECT_SEND_STATE] = send
        await self.app(scope, receive, send)
