"""Stored responses and conversations, kept in the session store (memory, Redis or SQL).

One model: a record of items. A response record holds the response as it was
answered, its input items and the id of the response it continued, so a chain
is walked record by record (each load refreshes its idle timeout: a chain in
use stays alive); a conversation record holds its metadata and its items in
order. Records live in the same `SessionStore` as the HTTP sessions, keyed by
their unguessable ids, under the same bounds (idle timeout, count, bytes per
record), so any replica sharing the store continues any chain, and on Redis or
SQL a restart loses nothing.

Each record names its owner (the API key's user, `anonymous` without keys).
A record of another owner is answered exactly as an unknown id, so an id
tells a caller nothing it could not have guessed.

Appends to one conversation take the store's lock (the one `/chat_stream`
uses, which holds across replicas), waiting for it rather than refusing, so
two responses on one conversation are written one after the other, never
item by item interleaved. Responses need no lock: a new response is a new
record, so two continuing one `previous_response_id` fork the chain.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from gateway.core.errors import NotFound, SessionBusy, store_call
from gateway.sessions.stores import SessionStore

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The longest chain walked for one request: far past what fits any context, and it bounds the loads.
MAX_CHAIN = 1000
# How often a writer retries the conversation lock while another append holds it.
_LOCK_RETRY = 0.01


def _missing(kind: str, record_id: str) -> NotFound:
    return NotFound(f"No {kind} found with id {record_id[:80]!r}.", param=kind if kind == "response" else None)


class ResponseStore:
    """Responses and conversations of every owner, in one `SessionStore`."""

    def __init__(self, store: SessionStore, *, lock_wait: float = 30.0) -> None:
        self.store = store
        self.lock_wait = lock_wait

    # --- responses -----------------------------------------------------------------------------

    async def save_response(
        self,
        response: dict[str, Any],
        owner: str,
        input_items: Sequence[dict[str, Any]],
        previous: str | None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Store a response, with `extra` record fields (raises SessionTooLarge if it outgrows a record's bytes)."""
        fields = {"owner": owner, "response": response, "input": list(input_items), "previous": previous}
        fields.update(extra or {})
        await self._save(response["id"], fields, ())

    async def response(self, response_id: str, owner: str) -> dict[str, Any]:
        """The stored record of a response (`response`, `input`, `previous`); 404 when unknown or not `owner`'s."""
        return await self._record(response_id, owner, "response")

    async def chain(self, response_id: str, owner: str) -> list[dict[str, Any]]:
        """Every item of a chain, oldest first: each response's input, then its output.

        404 when `response_id` is unknown or not `owner`'s. An older record that has
        expired or was deleted ends the walk: the chain continues from what remains.
        """
        records = [await self.response(response_id, owner)]
        while len(records) < MAX_CHAIN and (previous := records[-1].get("previous")):
            data = await self._load(previous)
            if data is None or data.get("owner") != owner or "response" not in data:
                break
            records.append(data)
        items: list[dict[str, Any]] = []
        for record in reversed(records):
            items += record["input"]
            items += record["response"]["output"]
        return items

    async def delete_response(self, response_id: str, owner: str) -> None:
        await self.response(response_id, owner)
        await self._delete(response_id)

    # --- conversations -------------------------------------------------------------------------

    async def create_conversation(
        self, conversation_id: str, owner: str, metadata: dict[str, str] | None, items: Sequence[dict[str, Any]]
    ) -> dict[str, Any]:
        head = {"id": conversation_id, "object": "conversation", "created_at": int(time.time()), "metadata": metadata}
        await self._save(conversation_id, {"owner": owner, "conversation": head, "items": list(items)}, ())
        return head

    async def conversation(self, conversation_id: str, owner: str) -> dict[str, Any]:
        """The record of a conversation (`conversation`: its object, `items`); 404 as for a response."""
        return await self._record(conversation_id, owner, "conversation")

    async def set_metadata(self, conversation_id: str, owner: str, metadata: dict[str, str] | None) -> dict[str, Any]:
        async with self._locked(conversation_id, owner) as record:
            head = {**record["conversation"], "metadata": metadata}
            await self._save(conversation_id, {"conversation": head}, ())
        return head

    async def append(self, conversation_id: str, owner: str, items: Sequence[dict[str, Any]]) -> None:
        """Add items at the end of a conversation, after any append already running."""
        async with self._locked(conversation_id, owner) as record:
            await self._save(conversation_id, {"items": [*record["items"], *items]}, ())

    async def delete_item(self, conversation_id: str, owner: str, item_id: str) -> dict[str, Any]:
        """Remove one item; returns the conversation object. 404 when the item is not in it."""
        async with self._locked(conversation_id, owner) as record:
            kept = [item for item in record["items"] if item.get("id") != item_id]
            if len(kept) == len(record["items"]):
                raise _missing("item", item_id)
            await self._save(conversation_id, {"items": kept}, ())
        head: dict[str, Any] = record["conversation"]
        return head

    async def delete_conversation(self, conversation_id: str, owner: str) -> None:
        async with self._locked(conversation_id, owner):
            await self._delete(conversation_id)

    # --- shared --------------------------------------------------------------------------------

    async def _load(self, record_id: str) -> dict[str, Any] | None:
        return await _io(self.store.load(record_id))

    async def _save(self, record_id: str, fields: dict[str, Any], removed: tuple[str, ...]) -> None:
        await _io(self.store.save(record_id, fields, removed))

    async def _delete(self, record_id: str) -> None:
        await _io(self.store.delete(record_id))

    async def _record(self, record_id: str, owner: str, kind: str) -> dict[str, Any]:
        data = await self._load(record_id) if record_id.startswith(_KIND_PREFIX[kind]) else None
        if data is None or data.get("owner") != owner or kind not in data:
            raise _missing(kind, record_id)
        return data

    def _locked(self, conversation_id: str, owner: str) -> AbstractAsyncContextManager[dict[str, Any]]:
        return self._locked_record(conversation_id, owner, "conversation")

    def locked_response(self, response_id: str, owner: str) -> AbstractAsyncContextManager[dict[str, Any]]:
        """A response's record, read under its lock: a background run's ending and its cancel, one at a time."""
        return self._locked_record(response_id, owner, "response")

    async def update_response(self, response_id: str, fields: dict[str, Any]) -> None:
        """Rewrite fields of a stored response's record (under `locked_response`)."""
        await self._save(response_id, fields, ())

    @asynccontextmanager
    async def _locked_record(self, record_id: str, owner: str, kind: str) -> AsyncIterator[dict[str, Any]]:
        """The record, read under its lock (waited for, up to `lock_wait` seconds)."""
        await self._record(record_id, owner, kind)  # 404 before waiting for anything
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self.lock_wait
        while not await _io(self.store.try_lock(record_id, token)):
            if time.monotonic() > deadline:
                raise SessionBusy(f"the {kind} is busy with another update; try again")
            await asyncio.sleep(_LOCK_RETRY)
        try:
            yield await self._record(record_id, owner, kind)  # read again: an update may have just ended
        finally:
            await _io(self.store.unlock(record_id, token))


def _io(pending: Awaitable[T]) -> Awaitable[T]:
    return store_call(pending, "response store")


_KIND_PREFIX = {"response": "resp_", "conversation": "conv_"}
