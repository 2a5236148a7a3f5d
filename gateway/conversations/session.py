"""SessionConversations: each browser session's conversation, kept in its HTTP session (the default)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request

from gateway.conversations.model import Conversation
from gateway.core.errors import GatewayError, SessionBusy, store_call
from gateway.sessions import SessionContext
from gateway.sessions.codec import encode_value
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
        self.new = context.created
        # What the store holds, so save() writes only what changed: the end of a turn
        # never writes back parameters /set_generation_params saved meanwhile, nor the reverse.
        self._saved_prompt = prompt.to_dict()
        self._saved_params = dict(params)

    async def save(self) -> None:
        session = self._context.get_session()
        prompt = self.prompt.to_dict()
        if prompt != self._saved_prompt:
            room = self._context.store.max_session_bytes - _size_of_others(session)
            if _forget_to_fit(self.prompt, room):
                prompt = self.prompt.to_dict()
            session[PROMPT_KEY] = self.prompt
        if self.params != self._saved_params:
            session[PARAMS_KEY] = dict(self.params)
        if self._context.created and not self.prompt.messages and not self.params and set(session) <= _OURS:
            # A session this request created and left empty (a refused first turn, a clear): keep nothing.
            await self._context.discard()
        else:
            await self._context.flush()
        self._saved_prompt, self._saved_params = prompt, dict(self.params)

    async def close(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            await store_call(self._context.store.unlock(*lock), "session store")

    async def clear(self) -> None:
        self.prompt.clear()
        # A new id: a copy of the old cookie no longer reaches this session.
        await self._context.renew()
        await self.save()


_OURS = {PROMPT_KEY, PARAMS_KEY}


def _size_of_others(session: Mapping[str, Any]) -> int:
    """What the session's other values take in the store, with the prompt's key."""
    others = sum(len(key.encode()) + len(encode_value(v)) for key, v in session.items() if key != PROMPT_KEY)
    return others + len(PROMPT_KEY)


def _forget_to_fit(prompt: ChatPrompt, limit: int) -> bool:
    """Forget the oldest turns until the stored prompt takes at most `limit` bytes; True if any went.

    The newest exchange always stays (the store refuses a session it alone outgrows).
    """
    # Encoded, a character takes at most 6 bytes (`\\uXXXX`): most conversations are far
    # below the limit, and need no encoding to know it.
    rough = 256 + 6 * (len(prompt.system or "") + sum(len(m["content"]) + 40 for m in prompt.messages))
    if rough <= limit:
        return False
    excess = len(encode_value(prompt)) - limit
    dropped = freed = 0
    while freed < excess and dropped < len(prompt.messages) - 2:
        freed += len(json.dumps(prompt.messages[dropped])) + 2  # and its ", " in the list
        dropped += 1
    return dropped > 0 and prompt.forget_oldest(len(prompt.messages) - dropped) > 0


class SessionConversations:
    """Keeps each browser session's ChatPrompt in `request.state.session`.

    The generation lock lives in the session store, so it holds across every
    replica that shares the store. Opening a conversation writes nothing: a
    read (`GET /get_prompt`) never creates a session, only a save does.
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
            if not await store_call(context.store.try_lock(*held), "session store"):
                raise SessionBusy("a generation is already running in this session; wait for it or stop it")
        prompt = session.get(PROMPT_KEY)
        if not isinstance(prompt, ChatPrompt):
            prompt = self._new_prompt()
        params = session.get(PARAMS_KEY)
        return SessionConversation(context, prompt, dict(params) if isinstance(params, dict) else {}, held)
