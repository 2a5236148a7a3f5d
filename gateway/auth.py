"""Bearer API keys for the OpenAI routes (and, with `metrics_auth`, for /metrics).

Keys are compared in constant time, against every configured key, so neither
the answer's timing nor its content tells a caller how close a guess was.
A refused request gets a 401 in OpenAI's error shape.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import Unauthorized
from gateway.openai_format import openai_error_body


def is_protected(path: str, metrics_auth: bool) -> bool:
    """Which paths need a key: the OpenAI API, and /metrics when asked.

    `/health` and `/ready` stay open for probes; `/chat_stream` and its helpers
    are the browser's session API (a page cannot keep a bearer key secret), so
    they are protected by whatever authenticates the page's users instead.
    """
    return path == "/v1" or path.startswith("/v1/") or (metrics_auth and path == "/metrics")


class APIKeyMiddleware:
    """Pure ASGI middleware: `Authorization: Bearer <key>` on the protected paths."""

    def __init__(
        self,
        app: ASGIApp,
        keys: Sequence[str],
        metrics_auth: bool = False,
        on_refusal: Callable[[str, Unauthorized], None] | None = None,
    ) -> None:
        if not keys or any(not k for k in keys):
            raise ValueError("API keys must be non-empty strings")
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.metrics_auth = metrics_auth
        self.on_refusal = on_refusal

    def _accepts(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        # Compare against every key, with no early exit, so timing says nothing.
        matches = [hmac.compare_digest(token, key) for key in self.keys]
        return scheme.lower() == b"bearer" and any(matches)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protected(scope["path"], self.metrics_auth):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is not None and self._accepts(header):
            await self.app(scope, receive, send)
            return
        error = Unauthorized("a valid API key is required" if header is None else "the API key is not valid")
        if self.on_refusal is not None:
            self.on_refusal(scope["path"].lstrip("/"), error)
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(openai_error_body(error)).encode()})
