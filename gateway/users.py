"""Users: bearer API keys mapped to user ids, read from a file.

The file has one `KEY USER_ID` pair per line; blank lines and lines starting
with `#` are skipped. A key is compared with every known key in constant
time, so response timing does not tell an attacker how much of a key is right.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path

from starlette.requests import Request

from gateway.errors import Unauthorized


class UserKeys:
    """Authenticates requests by `Authorization: Bearer <key>`."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        if not keys:
            raise ValueError("at least one API key is needed")
        # Digests have one length whatever the key's, so compare_digest never short-cuts on length.
        self._digests = [(hashlib.sha256(key.encode()).digest(), user) for key, user in keys.items()]

    @classmethod
    def from_file(cls, path: str | Path) -> UserKeys:
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
        digest = hashlib.sha256(key.encode()).digest()
        found: str | None = None
        for known, user in self._digests:  # no early exit: every key costs the same
            if hmac.compare_digest(digest, known):
                found = user
        return found

    def authenticate(self, request: Request) -> str:
        """The user id of the request's bearer key; Unauthorized (401) if missing or unknown."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        user = self.user_for_key(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
        if user is None:
            raise Unauthorized("a valid API key is required (Authorization: Bearer <key>)")
        return user
