"""Whose conversation a request continues, and where it is kept.

ChatStream asks a `ConversationHandler` for the conversation of each request
(the seed's "custom request handler"). The default keeps it in the HTTP
session; `gateway.persistent` keeps each user's conversations in a database.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Protocol

from starlette.requests import Request

from gateway.errors import GatewayError, SessionBusy
from gateway.sessions import SessionContext
from prompts import ChatPrompt

PROMPT_KEY = "chat_prompt"
PARAMS_KEY = "generation_params"


class Conversation(Protocol):
    """One conversation opened for a request."""

    prompt: ChatPrompt
    params: dict[str, Any]

    async def save(self) -> None:
        """Persist the prompt and the generation parameters as they are now."""
        ...

    async def close(self) -> None:
        """Release the generation lock, if this conversation holds it. Idempotent."""
        ...

    async def clear(self) -> None:
        """Forget the conversation's turns (and its identity where that applies)."""
        ...


class ConversationHandler(Protocol):
    async def open(self, request: Request, *, lock: bool) -> Conversation:
        """The request's conversation; with `lock`, raises SessionBusy if a generation holds it."""
        ...


class SessionConversation:
    def __init__(self, context: SessionContext, prompt: ChatPrompt, params: dict[str, Any], owner: str | None) -> None:
        self._context = context
        self.prompt = prompt
        self.params = params
        self._owner = owner

    async def save(self) -> None:
        session = self._context.get_session()
        session[PROMPT_KEY] = self.prompt
        session[PARAMS_KEY] = dict(self.params)
        await self._context.flush()

    async def close(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            await self._context.unlock(owner)

    async def clear(self) -> None:
        self.prompt.clear()
        # A new id: a copy of the old cookie no longer reaches this session.
        await self._context.renew()
        await self.save()


class SessionConversations:
    """Keeps each browser session's ChatPrompt in `request.state.session` (the default)."""

    def __init__(self, new_prompt: Callable[[], ChatPrompt]) -> None:
        self._new_prompt = new_prompt

    async def open(self, request: Request, *, lock: bool) -> Conversation:
        context = request.scope.get("state", {}).get("session")
        if not isinstance(context, SessionContext):
            raise GatewayError("sessions are not configured on this server (add SessionMiddleware)")
        session = context.get_session()
        owner: str | None = None
        if lock:
            owner = uuid.uuid4().hex
            if not await context.try_lock(owner):
                raise SessionBusy("a generation is already running in this session; wait for it or stop it")
        prompt = session.get(PROMPT_KEY)
        if not isinstance(prompt, ChatPrompt):
            prompt = self._new_prompt()
            session[PROMPT_KEY] = prompt
        params = session.get(PARAMS_KEY)
        return SessionConversation(context, prompt, dict(params) if isinstance(params, dict) else {}, owner)
