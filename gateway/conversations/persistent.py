"""PersistentConversations: each user's conversations in a database.

A `ConversationHandler` for ChatStream (`ChatStream(conversations=...)`):
requests authenticate with a bearer API key (`gateway.http.auth`), and name the
conversation they continue with the `X-Conversation-Id` header. Without the
header a new conversation is started; its id comes back in the
`X-Conversation-Id` response header (add `ConversationIdHeader` to the app).
An id the user does not own is a 404 whether or not it exists, so ids never
reveal other users' conversations.

`handler.add_routes(app)` adds `GET /conversations`,
`GET /conversations/{id}` and `DELETE /conversations/{id}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.conversations.db import ConversationDB, Part, StoredConversation, open_db
from gateway.conversations.model import Conversation
from gateway.core.errors import GatewayError, NotFound, SessionBusy, error_response, store_call
from gateway.http.asgi import add_headers, on_response_start
from gateway.http.auth import UserKeys
from gateway.sessions.codec import decode_value, encode_value
from prompts import ChatPrompt

logger = logging.getLogger(__name__)

HEADER = "X-Conversation-Id"
_STATE_KEY = "conversation_id"
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TITLE_CHARS = 80

T = TypeVar("T")


class PersistentConversation:
    """One user's conversation, opened for one request."""

    def __init__(
        self,
        handler: PersistentConversations,
        user: str,
        row: StoredConversation,
        prompt: ChatPrompt,
        owner: str | None,
        *,
        created: bool,
        scope_state: dict[str, Any],
    ) -> None:
        self._handler = handler
        self.user = user
        self.id = row.id
        self.created_at = row.created_at
        self.prompt = prompt
        params = json.loads(row.params)
        self.params: dict[str, Any] = params if isinstance(params, dict) else {}
        # What the row holds, so save() writes only what changed: the end of a turn never
        # writes back parameters saved meanwhile by /set_generation_params, nor the reverse.
        self._saved: dict[Part, Any] = {"prompt": prompt.to_dict(), "params": dict(self.params)}
        # Started by this request (not yet known to anyone else): dropped again if left empty.
        self.new = self._created = created
        self._scope_state = scope_state
        self._owner = owner
        self._renewer = asyncio.create_task(handler._keep_lock(row.id, owner)) if owner is not None else None

    async def save(self) -> None:
        now: dict[Part, Any] = {"prompt": self.prompt.to_dict(), "params": dict(self.params)}
        parts = [part for part in now if now[part] != self._saved[part]]
        db = self._handler.db
        if self._created and not self.prompt.messages and not self.params:
            # A conversation this request started and left empty (a refused first turn): keep no row,
            # and name none in X-Conversation-Id if the response has not started.
            self._scope_state.pop(_STATE_KEY, None)
            if self._owner is not None:
                await self._handler._call(db.delete(self.user, self.id, self._owner))
        elif parts:
            first_user = next((m["content"] for m in self.prompt.messages if m["role"] == "user"), "")
            row = StoredConversation(
                id=self.id,
                title=" ".join(first_user.split())[:_TITLE_CHARS],
                turns=len(self.prompt.messages),
                created_at=self.created_at,
                updated_at=time.time(),
                prompt=encode_value(self.prompt),
                params=json.dumps(self.params),
            )
            await self._handler._call(db.save(self.user, row, parts))
            self._scope_state[_STATE_KEY] = self.id
        self._saved = now

    async def close(self) -> None:
        owner, self._owner = self._owner, None
        if owner is None:
            return
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._handler._call(self._handler.db.unlock(self.id, owner))

    async def clear(self) -> None:
        self.prompt.clear()
        await self.save()


class PersistentConversations:
    """Authenticated users' conversations, kept in `db`: `sqlite:///PATH`, `postgresql://...`
    or a `gateway.conversation_db.ConversationDB`.

    `lock_timeout` bounds how long a crashed replica's generation lock outlives
    it; a live holder renews its lock every third of it.
    """

    def __init__(
        self,
        users: UserKeys,
        db: ConversationDB | str,
        new_prompt: Callable[[], ChatPrompt] = ChatPrompt,
        lock_timeout: float = 30.0,
    ) -> None:
        self.users = users
        self.db = open_db(db) if isinstance(db, str) else db
        self.new_prompt = new_prompt
        self.lock_timeout = lock_timeout

    def _call(self, operation: Awaitable[T]) -> Awaitable[T]:
        return store_call(operation, "conversation database")

    async def open(self, request: Request, *, lock: bool) -> Conversation:
        user = self.users.authenticate(request)
        cid = request.headers.get(HEADER.lower())
        owner = secrets.token_hex(16) if lock else None
        if cid is None:
            now = time.time()
            prompt = self.new_prompt()
            row = StoredConversation(secrets.token_urlsafe(16), "", 0, now, now, encode_value(prompt), "{}")
            if lock:  # a turn creates the conversation at once; reads create nothing
                await self._call(self.db.create(user, row, owner, self.lock_timeout))
        else:
            if not _ID_PATTERN.fullmatch(cid):
                raise NotFound("no such conversation")
            if owner is not None and not await self._call(self.db.try_lock(user, cid, owner, self.lock_timeout)):
                if await self._call(self.db.get(user, cid)) is None:
                    raise NotFound("no such conversation")
                raise SessionBusy("a generation is already running in this conversation; wait for it or stop it")
            try:
                found = await self._call(self.db.get(user, cid))
            except GatewayError:
                if owner is not None:  # do not leave the lock to expire on its own
                    with contextlib.suppress(Exception):
                        await self.db.unlock(cid, owner)
                raise
            if found is None:
                raise NotFound("no such conversation")
            row = found
            stored = decode_value(row.prompt)
            prompt = stored if isinstance(stored, ChatPrompt) else self.new_prompt()
        state = request.scope.setdefault("state", {})
        if cid is not None or lock:  # the conversation exists (a turn creates it at once)
            state[_STATE_KEY] = row.id
        return PersistentConversation(self, user, row, prompt, owner, created=cid is None, scope_state=state)

    async def _keep_lock(self, cid: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self.lock_timeout / 3)
            try:
                if not await self.db.renew(cid, owner, self.lock_timeout):
                    logger.warning("a conversation lock was lost while its generation was running")
                    return
            except Exception as exc:  # the database briefly away: the lock still has time left
                logger.warning("could not renew a conversation lock: %s", type(exc).__name__)

    async def close(self) -> None:
        await self.db.close()

    # --- the endpoints ------------------------------------------------------------------

    async def handle_list(self, request: Request) -> Response:
        """`GET /conversations`: the caller's conversations, newest first."""
        try:
            user = self.users.authenticate(request)
            rows = await self._call(self.db.list_user(user))
        except GatewayError as err:
            return error_response(err)
        return JSONResponse({"conversations": [_summary(row) for row in rows]})

    async def handle_get(self, request: Request) -> Response:
        """`GET /conversations/{id}`: one conversation's turns and parameters."""
        try:
            user = self.users.authenticate(request)
            row = await self._call(self.db.get(user, request.path_params["conversation_id"]))
            if row is None:
                raise NotFound("no such conversation")
        except GatewayError as err:
            return error_response(err)
        stored = decode_value(row.prompt)
        prompt = stored if isinstance(stored, ChatPrompt) else self.new_prompt()
        body = {**_summary(row), "system": prompt.system, "messages": prompt.messages, "params": json.loads(row.params)}
        return JSONResponse(body)

    async def handle_delete(self, request: Request) -> Response:
        """`DELETE /conversations/{id}`: forget it (409 while a generation runs in it)."""
        try:
            user = self.users.authenticate(request)
            result = await self._call(self.db.delete(user, request.path_params["conversation_id"]))
            if result == "missing":
                raise NotFound("no such conversation")
            if result == "busy":
                raise SessionBusy("a generation is running in this conversation; wait for it or stop it")
        except GatewayError as err:
            return error_response(err)
        return JSONResponse({"deleted": True})

    def add_routes(self, app: Starlette) -> None:
        """Add the conversation endpoints to `app`."""
        app.add_route("/conversations", self.handle_list, methods=["GET"])
        app.add_route("/conversations/{conversation_id}", self.handle_get, methods=["GET"])
        app.add_route("/conversations/{conversation_id}", self.handle_delete, methods=["DELETE"])


def _summary(row: StoredConversation) -> dict[str, Any]:
    return {
        "id": row.id,
        "title": row.title,
        "turns": row.turns,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


class ConversationIdHeader:
    """Pure ASGI middleware: sends back the id of the conversation a request used."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        def add_id(message: Message) -> None:
            cid = scope.get("state", {}).get(_STATE_KEY)
            if cid is not None:
                add_headers(message, [(HEADER.lower().encode(), cid.encode())])

        await self.app(scope, receive, on_response_start(send, add_id) if scope["type"] == "http" else send)
