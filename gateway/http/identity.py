"""Who a request is for, decided from its headers alone (no I/O), for the fair share and the key's limits.

In order:
1. a known bearer key: its entry in the keys file (user, class, limits), on
   every route, `/chat_stream` included (an authenticated user);
2. a session cookie whose signature verifies: that session (one HMAC; the
   session itself is not loaded). A signature proves the gateway issued the
   id, so a client cannot mint sessions by inventing cookies;
3. otherwise the client's address: every cookieless first turn and every
   keyless API call from one address is one user, so a client that never
   keeps its cookie cannot multiply its share by starting a session per
   request. Behind a proxy, give uvicorn the proxy's forwarded-for headers
   (`--forwarded-allow-ips`) so the address is the client's.

Session ids never leave this module: a session's user name is a digest of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from starlette.types import Scope

from gateway.core.principal import ANONYMOUS, Principal
from gateway.http.auth import PRINCIPAL_STATE, UserKeys
from gateway.http.keys import SESSION_CLASS
from gateway.sessions.cookie import SessionCookie

Identify = Callable[[Scope], Principal]


def identify_by(keys: UserKeys | None, cookie: SessionCookie | None) -> Identify:
    """The function that names the principal of a request: its key, else its session, else its address."""

    def identify(scope: Scope) -> Principal:
        principal: Principal | None = scope.get("state", {}).get(PRINCIPAL_STATE)  # the key middleware's finding
        if principal is None and keys is not None:
            principal = keys.principal_of(scope)
        if principal is not None:
            return principal
        session_id = cookie.session_id(scope) if cookie is not None else None
        if session_id is not None:
            digest = hashlib.sha256(session_id.encode()).hexdigest()[:16]
            return Principal(f"session:{digest}", SESSION_CLASS)
        client = scope.get("client")
        return Principal(f"client:{client[0] if client else 'unknown'}", ANONYMOUS.user_class)

    return identify
