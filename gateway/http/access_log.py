"""Request ids and the access log, as pure ASGI middleware.

Every response carries `X-Request-Id`: the client's own when it sent a sane
one, else a fresh one. The id is put into the request's state
(`request.state.request_id`) so the generation log line can carry it. Each
request is logged in exactly one INFO line: a generation's line comes from the
`GenerationRunner` (with its state, TTFT and token counts) and marks the
request as logged; this middleware logs every other request. Neither line ever
holds a prompt or an answer.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core.request_log import LOGGED_STATE, REQUEST_ID_STATE
from gateway.http.asgi import add_headers, on_response_start

logger = logging.getLogger(__name__)

_SANE_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


class AccessLogMiddleware:
    """Gives every HTTP request an id, echoes it as `X-Request-Id`, and logs it once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        request_id = given.decode() if _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state[REQUEST_ID_STATE] = request_id
        started = time.monotonic()
        status = 0

        def add_id(message: Message) -> None:
            nonlocal status
            status = message["status"]
            add_headers(message, [(b"x-request-id", request_id.encode())])

        try:
            await self.app(scope, receive, on_response_start(send, add_id))
        finally:
            if not state.get(LOGGED_STATE):
                logger.info(
                    "request %s method=%s route=%s status=%s duration=%.3fs",
                    request_id,
                    scope["method"],
                    scope["path"],
                    status or "-",
                    time.monotonic() - started,
                )
