"""SessionConversations: each browser session's conversation, kept in its HTTP session (the default)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from gateway.conversations.model import Conversation
from gateway.core.errors import GatewayError, SessionBusy, SessionStoreUnavailable
from gateway.sessions import SessionContext
from prompts import ChatPrompt

PROMPT_KEY = "chat_prompt"
PARAMS_KEY = "generation_params"


class SessionConversation:
    """The conversation of one HTTP session, opened for one request."""

    def __init__(
        self, context: SessionContext, prompt: ChatPrompt, params: dict[str, Any], lock: tuple[str, str] | None
    ) -> None:
        self._context = context
        self.prompt = prompt
        self.params = params
        # (session id, owner) of the generation lock held; the id is kept because
        # clear() renews the session id while the lock stays on the old one.
        self._lock = lock

    async def save(self) -> None:
        session = self._context.get_session()
        session[PROMPT_KEY] = self.prompt
        session[PARAMS_KEY] = dict(self.params)
        await self._context.flush()

    async def close(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            await self._context.store.unlock(*lock)

    async def clear(self) -> None:
        self.prompt.clear()
        # A new id: a copy of the old cookie no longer reaches this session.
        await self._context.renew()
        await self.save()


class SessionConversations:
    """Keeps each browser session's ChatPrompt in `request.state.session`.

    The generation lock lives in the session store, so it holds across every
    replica that shares the store.
    """

    def __init__(self, new_prompt: Callable[[], ChatPrompt]) -> None:
        self._new_prompt = new_prompt

    async def open(self, request: Request, *, lock: bool) -> Conversation:
        context = request.scope.get("state", {}).get("session")
        if not isinstance(context, SessionContext):
            raise GatewayError("sessions are not configured on this server (add SessionMiddleware)")
        session = context.get_session()
        held: tuple[str, str] | None = None
        if lock:
            held = (context.id, uuid.uuid4().hex)
            try:
                locked = await context.store.try_lock(*held)
            except Exception as exc:
                raise SessionStoreUnavailable("the session store is unavailable", retry_after=5) from exc
            if not locked:
                raise SessionBusy("a generation is already running in this session; wait for it or stop it")
        prompt = session.get(PROMPT_KEY)
        if not isinstance(prompt, ChatPrompt):
            prompt = self._new_prompt()
            session[PROMPT_KEY] = prompt
        params = session.get(PARAMS_KEY)
        return SessionConversation(context, prompt, dict(params) if isinstance(params, dict) else {}, held)
