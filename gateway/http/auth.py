"""Bearer API keys: who a request comes from, and the middleware that guards the API paths.

A key is compared with every known key in constant time, through its SHA-256
digest (digests have one length whatever the key's, so `compare_digest` never
short-cuts on length), so neither an answer's timing nor its content tells a
caller how close a guess was.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.core.errors import Forbidden, GatewayError, Unauthorized
from gateway.core.principal import Principal
from gateway.http.asgi import route_path
from gateway.http.keys import KeyEntry, key_digest, key_principal, read_keys_file

# Where the principal of a request's valid key is left for admission: `scope["state"][PRINCIPAL_STATE]`.
PRINCIPAL_STATE = "principal"


def bearer_key(authorization: str) -> str | None:
    """The key of an `Authorization: Bearer <key>` header value, if it is one."""
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


class UserKeys:
    """API keys and who each is for (a user, a class, limits: gateway/http/keys.py).

    Built from a keys file (`from_file`), from `(key, Principal)` entries, or
    from a `{key: user_id}` mapping. `authenticate(request)` gives the user id
    of the request's bearer key, or raises Unauthorized (401).
    """

    def __init__(self, keys: Mapping[str, str] | Iterable[KeyEntry]) -> None:
        entries = [(k, key_principal(k, u)) for k, u in keys.items()] if isinstance(keys, Mapping) else list(keys)
        if not entries:
            raise ValueError("at least one API key is needed")
        if any(not key for key, _ in entries):
            raise ValueError("API keys must be non-empty strings")
        self._digests = [(key_digest(key), principal) for key, principal in entries]
        if len({digest for digest, _ in self._digests}) != len(self._digests):
            raise ValueError("an API key is given twice")
        self.has_admin = any(principal.admin for _, principal in entries)

    @classmethod
    def from_file(cls, path: str | Path) -> UserKeys:
        """The keys of a keys file (see gateway/http/keys.py for its lines)."""
        return cls(read_keys_file(path))

    def principal_for_key(self, key: str) -> Principal | None:
        digest = key_digest(key)
        found: Principal | None = None
        for known, principal in self._digests:  # no early exit: every key costs the same
            if hmac.compare_digest(digest, known):
                found = principal
        return found

    def user_for_key(self, key: str) -> str | None:
        principal = self.principal_for_key(key)
        return None if principal is None else principal.user

    def principal_of(self, scope: Scope) -> Principal | None:
        """Who the request's `Authorization: Bearer <key>` header names, if a known key."""
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        key = None if header is None else bearer_key(header.decode("latin-1"))
        return None if key is None else self.principal_for_key(key)

    def authenticate(self, request: Request) -> str:
        """The user id of the request's bearer key; Unauthorized (401) if missing or unknown."""
        principal = self.principal_of(request.scope)
        if principal is None:
            raise Unauthorized("a valid API key is required (Authorization: Bearer <key>)")
        return principal.user


def is_protected(path: str, metrics_auth: bool) -> bool:
    """Which paths need a key: the OpenAI API (and vLLM's tokenizer routes beside it), the admin
    endpoints, and /metrics when asked.

    `/health` and `/ready` stay open for probes; `/chat_stream` and its helpers
    are the browser's session API (a page cannot keep a bearer key secret), so
    they are protected by whatever authenticates the page's users instead.
    """
    return (
        _under(path, "/v1")
        or _under(path, "/admin")
        or path in ("/tokenize", "/detokenize")
        or (metrics_auth and path == "/metrics")
    )


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


class APIKeyMiddleware:
    """Pure ASGI middleware: `Authorization: Bearer <key>` on the protected paths; an admin key under /admin.

    The key's `Principal` is left in `scope["state"]` for admission. `error_body`
    spells the 401 or 403 (the API's own error shape); `on_refusal` hears of each one.
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: UserKeys,
        error_body: Callable[[GatewayError], Any],
        metrics_auth: bool = False,
        on_refusal: Callable[[str, GatewayError], None] | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.error_body = error_body
        self.metrics_auth = metrics_auth
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The routed path, not scope["path"]: under a mount or --root-path the latter carries the prefix.
        path = route_path(scope) if scope["type"] == "http" else ""
        if scope["type"] != "http" or not is_protected(path, self.metrics_auth):
            await self.app(scope, receive, send)
            return
        principal = self.keys.principal_of(scope)
        error: GatewayError
        if principal is None:
            has_header = any(k == b"authorization" for k, _ in scope["headers"])
            error = Unauthorized("the API key is not valid" if has_header else "a valid API key is required")
        elif _under(path, "/admin") and not principal.admin:
            error = Forbidden("this API key may not use the admin endpoints")
        else:
            scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
            await self.app(scope, receive, send)
            return
        if self.on_refusal is not None:
            self.on_refusal(path.lstrip("/"), error)
        headers = [(b"content-type", b"application/json")]
        if error.status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(self.error_body(error)).encode()})
