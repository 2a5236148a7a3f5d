"""The conversation model: one `ChatPrompt` with its generation parameters, and who may change it.

A `ConversationHandler` (the seed's "custom request handler") finds the
conversation a request continues and where it is kept: in the HTTP session
(`SessionConversations`, the default) or per authenticated user in a
database (`PersistentConversations`). Every handler owns the conversation's
generation lock, so one conversation runs one generation at a time, on any
replica.
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.requests import Request

from prompts import ChatPrompt


class Conversation(Protocol):
    """One conversation opened for a request."""

    prompt: ChatPrompt
    params: dict[str, Any]
    # Started by this request: nothing of it is stored yet (its first turn stores it at once).
    new: bool

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
