"""Bearer API keys: who a request comes from, and the middleware that guards the API paths.

A key is compared with every known key in constant time, through its SHA-256
digest (digests have one length whatever the key's, so `compare_digest` never
short-cuts on length), so neither an answer's timing nor its content tells a
caller how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.core.errors import GatewayError, Unauthorized


def bearer_key(authorization: str) -> str | None:
    """The key of an `Authorization: Bearer <key>` header value, if it is one."""
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


class _KeyDigests:
    """Known keys, each mapped to a value, looked up in constant time."""

    def __init__(self, keys: Iterable[tuple[str, str]]) -> None:
        self._digests = [(hashlib.sha256(key.encode()).digest(), value) for key, value in keys]

    def lookup(self, key: str) -> str | None:
        digest = hashlib.sha256(key.encode()).digest()
        found: str | None = None
        for known, value in self._digests:  # no early exit: every key costs the same
            if hmac.compare_digest(digest, known):
                found = value
        return found


class UserKeys:
    """API keys mapped to user ids: authenticates requests by `Authorization: Bearer <key>`."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        if not keys:
            raise ValueError("at least one API key is needed")
        self._keys = _KeyDigests(keys.items())

    @classmethod
    def from_file(cls, path: str | Path) -> UserKeys:
        """A file of `KEY USER_ID` lines; blank lines and `#` comments are skipped."""
        keys: dict[str, str] = {}
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{number}: expected 'KEY USER_ID'")
            key, user = parts
            if key in keys:
                raise ValueError(f"{path}:{number}: a key appears twice")
            keys[key] = user
        return cls(keys)

    def user_for_key(self, key: str) -> str | None:
        return self._keys.lookup(key)

    def authenticate(self, request: Request) -> str:
        """The user id of the request's bearer key; Unauthorized (401) if missing or unknown."""
        key = bearer_key(request.headers.get("authorization", ""))
        user = self.user_for_key(key) if key is not None else None
        if user is None:
            raise Unauthorized("a valid API key is required (Authorization: Bearer <key>)")
        return user


def is_protected(path: str, metrics_auth: bool) -> bool:
    """Which paths need a key: the OpenAI API (and vLLM's tokenizer routes beside it), and /metrics when asked.

    `/health` and `/ready` stay open for probes; `/chat_stream` and its helpers
    are the browser's session API (a page cannot keep a bearer key secret), so
    they are protected by whatever authenticates the page's users instead.
    """
    return (
        path == "/v1"
        or path.startswith("/v1/")
        or path in ("/tokenize", "/detokenize")
        or (metrics_auth and path == "/metrics")
    )


class APIKeyMiddleware:
    """Pure ASGI middleware: `Authorization: Bearer <key>` on the protected paths.

    `error_body` spells the 401 (the API's own error shape); `on_refusal` hears of each one.
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: Iterable[str],
        error_body: Callable[[GatewayError], Any],
        metrics_auth: bool = False,
        on_refusal: Callable[[str, Unauthorized], None] | None = None,
    ) -> None:
        keys = list(keys)
        if not keys or any(not k for k in keys):
            raise ValueError("API keys must be non-empty strings")
        self.app = app
        self._keys = _KeyDigests((key, key) for key in keys)
        self.error_body = error_body
        self.metrics_auth = metrics_auth
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protected(scope["path"], self.metrics_auth):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        key = None if header is None else bearer_key(header.decode("latin-1"))
        if key is not None and self._keys.lookup(key) is not None:
            await self.app(scope, receive, send)
            return
        error = Unauthorized("a valid API key is required" if header is None else "the API key is not valid")
        if self.on_refusal is not None:
            self.on_refusal(scope["path"].lstrip("/"), error)
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(self.error_body(error)).encode()})
