"""SessionMiddleware: a signed session-id cookie and server-side session data.

The cookie holds only a random id, signed with itsdangerous; the data stays in
a `SessionStore`. Anything wrong with the cookie (bad signature, garbage,
expired, unknown id) means a fresh session with a new id, never an error, and
never an id the client chose. Pure ASGI: it wraps `send` to add its
Set-Cookie header beside any the app set, and never buffers a stream.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core.errors import GatewayError, SessionStoreUnavailable, store_call
from gateway.http.asgi import add_headers, on_response_start
from gateway.sessions.cookie import SessionCookie
from gateway.sessions.stores import MemoryStore, SessionStore

logger = logging.getLogger(__name__)


class Session(dict[str, Any]):
    """A session's data. Setting or deleting a key marks it for saving.

    A value changed in place (a ChatPrompt that got a new turn) must be set
    again (`session["chat_prompt"] = prompt`) so the store saves it.
    """

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        super().__init__(data or {})
        self.changed: set[str] = set()
        self.removed: set[str] = set()

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.changed.add(key)
        self.removed.discard(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.removed.add(key)
        self.changed.discard(key)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self.removed.add(key)
            self.changed.discard(key)
        return super().pop(key, *default)

    def clear(self) -> None:
        self.removed.update(self.keys())
        self.changed.clear()
        super().clear()


class SessionContext:
    """What a request sees as `request.state.session` (its data is also `scope["session"]`)."""

    def __init__(
        self, store: SessionStore, session_id: str | None, data: dict[str, Any] | None, error: Exception | None
    ) -> None:
        self.store = store
        self._id = session_id
        self._session = Session(data)
        self._error = error
        self.issued = False  # a new id was created: it needs a cookie once something is stored under it
        self.saved = False  # this request stored data under the id
        # No stored session came with the request: anything kept is created by it.
        self.created = session_id is None

    @property
    def id(self) -> str:
        """The session id, created on first use."""
        if self._id is None:
            self._id = secrets.token_urlsafe(32)
            self.issued = True
        return self._id

    def get_session(self) -> Session:
        """The session data (a dict). Raises SessionStoreUnavailable if the store could not be read."""
        if self._error is not None:
            raise SessionStoreUnavailable("the session store is unavailable", retry_after=5) from self._error
        return self._session

    @property
    def data(self) -> Session:
        """The session data without the store check (empty, and never saved, if the store failed)."""
        return self._session

    @property
    def has_changes(self) -> bool:
        return bool(self._session.changed or self._session.removed)

    async def flush(self) -> None:
        """Save what changed now (the middleware also does this when the response ends)."""
        if self._error is not None or not self.has_changes:
            return
        session_id = self.id
        changed = {k: self._session[k] for k in self._session.changed}
        removed = set(self._session.removed)
        self._session.changed.clear()
        self._session.removed.clear()
        await store_call(self.store.save(session_id, changed, removed), "session store")
        self.saved = True

    async def discard(self) -> None:
        """Keep nothing of a session this request created: no stored data, no cookie."""
        self._session.changed.clear()
        self._session.removed.clear()
        if self.created and self._id is not None:
            session_id, self._id, self.issued, self.saved = self._id, None, False, False
            await store_call(self.store.delete(session_id), "session store")

    async def renew(self) -> None:
        """Move the data to a fresh id and forget the old one (after a clear, or a login)."""
        old = self._id
        self._id = None
        self.saved = False
        # Every key is saved again under the new id; the dict stays the one in `scope["session"]`.
        self._session.changed.update(self._session.keys())
        self._session.removed.clear()
        _ = self.id
        if old is not None:
            await self.store.delete(old)


class SessionMiddleware:
    """Gives every HTTP request `request.state.session`, kept server side in `store`.

    `secret_key` signs the cookie; pass a list to rotate keys: the first signs,
    every one verifies. `secure=False` only for local development over HTTP.
    """

    def __init__(
        self,
        app: ASGIApp,
        secret_key: str | Sequence[str],
        store: SessionStore | None = None,
        *,
        cookie_name: str = "chatstream_session",
        http_only: bool = True,
        secure: bool = True,
        same_site: Literal["lax", "strict", "none"] = "lax",
        path: str = "/",
        max_age: int | None = None,
        signature_max_age: int = 30 * 24 * 3600,
    ) -> None:
        self.app = app
        self.store: SessionStore = store if store is not None else MemoryStore()
        self.cookie = SessionCookie(
            secret_key,
            cookie_name,
            http_only=http_only,
            secure=secure,
            same_site=same_site,
            path=path,
            max_age=max_age,
            signature_max_age=signature_max_age,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        context = await self._open(scope)
        scope.setdefault("state", {})["session"] = context
        # As Starlette's SessionMiddleware does, so `request.session` works for code mounted beside the gateway.
        scope["session"] = context.data

        def add_cookie(message: Message) -> None:
            if context.has_changes:
                _ = context.id  # data written before the response starts gets its cookie now
            # An id that only locked (a refused turn) stored nothing: it gets no cookie.
            if context.issued and (context.saved or context.has_changes):
                add_headers(message, [(b"set-cookie", self.cookie.set_cookie(context.id))])

        try:
            await self.app(scope, receive, on_response_start(send, add_cookie))
        finally:
            try:
                await context.flush()
            except GatewayError as err:
                logger.warning("could not save session data: %s", err.message)

    async def _open(self, scope: Scope) -> SessionContext:
        session_id = self.cookie.session_id(scope)
        if session_id is None:
            return SessionContext(self.store, None, None, None)
        try:
            data = await self.store.load(session_id)
        except Exception as exc:
            logger.warning("session store unavailable: %s", type(exc).__name__)
            return SessionContext(self.store, session_id, None, exc)
        if data is None:  # unknown, expired or unreadable: a fresh id, never the one presented
            return SessionContext(self.store, None, None, None)
        return SessionContext(self.store, session_id, data, None)
