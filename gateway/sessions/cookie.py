"""The session cookie: a random session id signed with itsdangerous, and nothing else.

Reading the verified id of a request is one HMAC over a short string (a few
microseconds, no I/O), so admission can tell one session from another on
arrival, before the session is loaded; the session middleware uses the same
object to read and to set the cookie.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from itsdangerous import BadSignature, TimestampSigner
from starlette.types import Scope

_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
_MAX_COOKIE_CHARS = 512


class SessionCookie:
    """Signs session ids into the cookie, and reads a request's verified id back.

    `secret_key` may be a list to rotate keys: the first signs, every one verifies.
    """

    def __init__(
        self,
        secret_key: str | Sequence[str],
        cookie_name: str = "chatstream_session",
        *,
        http_only: bool = True,
        secure: bool = True,
        same_site: Literal["lax", "strict", "none"] = "lax",
        path: str = "/",
        max_age: int | None = None,
        signature_max_age: int = 30 * 24 * 3600,
    ) -> None:
        keys = [secret_key] if isinstance(secret_key, str) else list(secret_key)
        if not keys or any(len(k) < 16 for k in keys):
            raise ValueError("session secret keys must be at least 16 characters")
        # itsdangerous signs with the last key and tries them all when verifying.
        self._signer = TimestampSigner(list(reversed(keys)), salt="chatstream-gateway.session")
        self.name = cookie_name
        self._signature_max_age = signature_max_age
        flags = [f"Path={path}", f"SameSite={same_site.capitalize()}"]
        if max_age is not None:
            flags.append(f"Max-Age={max_age}")
        if http_only:
            flags.append("HttpOnly")
        if secure:
            flags.append("Secure")
        self._flags = "; ".join(flags)

    def session_id(self, scope: Scope) -> str | None:
        """The id of the request's cookie if its signature verifies (the store is not asked)."""
        for name, value in scope.get("headers", ()):
            if name != b"cookie":
                continue
            # Split by hand, as browsers do: SimpleCookie drops the whole header when
            # any other cookie on the site is not RFC-strict (`a=b c`), which would
            # lose the session on every request. Several cookies with our name
            # (another path) may come: the first one that verifies wins.
            for pair in value.decode("latin-1").split(";"):
                key, _, raw = pair.partition("=")
                if key.strip() != self.name or len(raw) > _MAX_COOKIE_CHARS:
                    continue
                try:
                    session_id = self._signer.unsign(raw.strip(), max_age=self._signature_max_age).decode("ascii")
                except (BadSignature, UnicodeDecodeError):
                    continue
                if _ID_PATTERN.fullmatch(session_id):
                    return session_id
        return None

    def set_cookie(self, session_id: str) -> bytes:
        """The Set-Cookie header value that carries `session_id`."""
        return f"{self.name}={self._signer.sign(session_id).decode('ascii')}; {self._flags}".encode("latin-1")
