"""Session stores: where session data lives between requests.

Every store has the same small async interface, so the in-process
`MemoryStore` and the shared `RedisStore` and `SQLStore` (SQLite, PostgreSQL)
are interchangeable. A store also owns the per-session generation lock,
because only the store can make that lock hold across several gateway replicas.

Every store is bounded three ways: an idle timeout, a count (`max_sessions`,
the least recently used session goes first) and bytes (`max_session_bytes`
per session, measured as stored; `MemoryStore` also bounds its total). Values
are kept encoded (`codec`), so a request always works on its own copy of a
session and a session's size is what it really costs.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.core.errors import SessionTooLarge
from gateway.sessions.codec import decode_session, encode_value
from gateway.settings import MiB

logger = logging.getLogger(__name__)


class SessionStore(Protocol):
    """Where session data lives. Values are JSON data or ChatPrompt objects."""

    idle_timeout: float
    max_session_bytes: int

    async def load(self, session_id: str) -> dict[str, Any] | None:
        """The session's data, or None if it is unknown, expired or unreadable; refreshes its idle timer."""
        ...

    async def save(self, session_id: str, changed: Mapping[str, Any], removed: Iterable[str]) -> None:
        """Write the changed keys and drop the removed ones (creating the session if new).

        Raises SessionTooLarge, writing nothing, if the session would outgrow `max_session_bytes`.
        """
        ...

    async def delete(self, session_id: str) -> None: ...

    async def try_lock(self, session_id: str, owner: str) -> bool:
        """Take the session's generation lock unless someone holds it."""
        ...

    async def unlock(self, session_id: str, owner: str) -> None:
        """Release the lock if `owner` still holds it."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached (checked once at start-up)."""
        ...

    async def close(self) -> None: ...


def check_shared_bounds(idle_timeout: float, lock_timeout: float, max_sessions: int, max_session_bytes: int) -> None:
    """The bounds of a store shared by replicas (Redis, SQL): each must be positive."""
    if idle_timeout <= 0 or lock_timeout <= 0 or max_sessions < 1 or max_session_bytes < 1:
        raise ValueError("idle_timeout, lock_timeout, max_sessions and max_session_bytes must be positive")


def session_size(fields: Mapping[str, str]) -> int:
    """What a session's encoded fields take (names and values; encoded values are ASCII)."""
    return sum(len(name.encode()) + len(value) for name, value in fields.items())


@dataclass(eq=False, slots=True)
class _Entry:
    fields: dict[str, str]  # encoded values
    size: int
    touched: float


@dataclass(eq=False, slots=True)
class _Lock:
    owner: str
    # None while the task that took the lock runs; set when that task ended without
    # releasing it (a bug), so the session is busy for `lock_timeout` more, not for ever.
    expires: float | None = None


class MemoryStore:
    """Sessions in this process's memory: bounded by an idle timeout, a count and bytes.

    The least recently used session is dropped when `max_sessions` or
    `max_bytes` is reached; a save that would take one session past
    `max_session_bytes` is refused. Use RedisStore when several processes
    serve the same users.
    """

    def __init__(
        self,
        idle_timeout: float = 3600.0,
        max_sessions: int = 10_000,
        *,
        max_session_bytes: int = MiB,
        max_bytes: int = 256 * MiB,
        lock_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if idle_timeout <= 0 or max_sessions < 1 or lock_timeout <= 0:
            raise ValueError("idle_timeout and lock_timeout must be positive and max_sessions at least 1")
        if not 0 < max_session_bytes <= max_bytes:
            raise ValueError("max_session_bytes must be positive and at most max_bytes")
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.max_session_bytes = max_session_bytes
        self.max_bytes = max_bytes
        self.lock_timeout = lock_timeout
        self._clock = clock
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._bytes = 0
        self._locks: dict[str, _Lock] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def stored_bytes(self) -> int:
        """What the sessions held take, encoded."""
        return self._bytes

    def _drop(self, session_id: str) -> None:
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._bytes -= entry.size

    def _live(self, session_id: str) -> _Entry | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        now = self._clock()
        if now - entry.touched > self.idle_timeout:
            self._drop(session_id)
            return None
        entry.touched = now
        self._entries.move_to_end(session_id)
        return entry

    def _evict(self) -> None:
        now = self._clock()
        # Oldest first: stop at the first session still in use, once within bounds.
        while self._entries:
            sid, entry = next(iter(self._entries.items()))
            within = len(self._entries) <= self.max_sessions and self._bytes <= self.max_bytes
            if within and now - entry.touched <= self.idle_timeout:
                break
            self._drop(sid)

    async def load(self, session_id: str) -> dict[str, Any] | None:
        entry = self._live(session_id)
        if entry is None:
            return None
        data = decode_session(entry.fields)
        if data is None:
            self._drop(session_id)
        return data

    async def save(self, session_id: str, changed: Mapping[str, Any], removed: Iterable[str]) -> None:
        entry = self._live(session_id)
        fields = dict(entry.fields) if entry is not None else {}
        fields.update((key, encode_value(value)) for key, value in changed.items())
        for key in removed:
            fields.pop(key, None)
        size = session_size(fields)
        if size > self.max_session_bytes:
            raise SessionTooLarge(f"the session would take {size} bytes; the limit is {self.max_session_bytes}")
        if entry is None:
            entry = self._entries[session_id] = _Entry(fields, 0, self._clock())
        entry.fields = fields
        self._bytes += size - entry.size
        entry.size = size
        self._evict()

    async def delete(self, session_id: str) -> None:
        self._drop(session_id)

    async def try_lock(self, session_id: str, owner: str) -> bool:
        held = self._locks.get(session_id)
        if held is not None and (held.expires is None or self._clock() < held.expires):
            return False
        lock = self._locks[session_id] = _Lock(owner)
        holder = asyncio.current_task()
        if holder is None:
            lock.expires = self._clock() + self.lock_timeout
        else:
            holder.add_done_callback(functools.partial(self._holder_ended, session_id, owner))
        return True

    def _holder_ended(self, session_id: str, owner: str, task: object) -> None:
        lock = self._locks.get(session_id)
        if lock is not None and lock.owner == owner and lock.expires is None:
            logger.warning("a session lock outlived the request that took it: it lapses in %.0f s", self.lock_timeout)
            lock.expires = self._clock() + self.lock_timeout

    async def unlock(self, session_id: str, owner: str) -> None:
        lock = self._locks.get(session_id)
        if lock is not None and lock.owner == owner:
            del self._locks[session_id]

    @property
    def locks_held(self) -> int:
        """Generation locks held now (lapsed ones excluded)."""
        now = self._clock()
        return sum(1 for lock in self._locks.values() if lock.expires is None or now < lock.expires)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0
