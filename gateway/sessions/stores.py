"""Session stores: where session data lives between requests.

Every store has the same small async interface, so the in-process
`MemoryStore` and the shared `RedisStore` are interchangeable. A store also
owns the per-session generation lock, because only the store can make that
lock hold across several gateway replicas.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class SessionStore(Protocol):
    """Where session data lives. Values are JSON data or ChatPrompt objects."""

    idle_timeout: float

    async def load(self, session_id: str) -> dict[str, Any] | None:
        """The session's data, or None if it is unknown or expired; refreshes its idle timer."""
        ...

    async def save(self, session_id: str, changed: Mapping[str, Any], removed: Iterable[str]) -> None:
        """Write the changed keys and drop the removed ones (creating the session if new)."""
        ...

    async def delete(self, session_id: str) -> None: ...

    async def try_lock(self, session_id: str, owner: str) -> bool:
        """Take the session's generation lock unless someone holds it."""
        ...

    async def unlock(self, session_id: str, owner: str) -> None:
        """Release the lock if `owner` still holds it."""
        ...

    async def close(self) -> None: ...


@dataclass
class _Entry:
    data: dict[str, Any]
    touched: float


class MemoryStore:
    """Sessions in this process's memory: bounded by an idle timeout and a count.

    The least recently used session is dropped when `max_sessions` is reached.
    Use RedisStore when several processes serve the same users.
    """

    def __init__(
        self, idle_timeout: float = 3600.0, max_sessions: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if idle_timeout <= 0 or max_sessions < 1:
            raise ValueError("idle_timeout must be positive and max_sessions at least 1")
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self._clock = clock
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._locks: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, session_id: str) -> _Entry | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        now = self._clock()
        if now - entry.touched > self.idle_timeout:
            del self._entries[session_id]
            return None
        entry.touched = now
        self._entries.move_to_end(session_id)
        return entry

    def _evict(self) -> None:
        now = self._clock()
        # Oldest first: stop at the first session still in use.
        while self._entries:
            sid, entry = next(iter(self._entries.items()))
            if now - entry.touched <= self.idle_timeout and len(self._entries) <= self.max_sessions:
                break
            del self._entries[sid]

    async def load(self, session_id: str) -> dict[str, Any] | None:
        entry = self._live(session_id)
        return None if entry is None else dict(entry.data)

    async def save(self, session_id: str, changed: Mapping[str, Any], removed: Iterable[str]) -> None:
        entry = self._live(session_id)
        if entry is None:
            entry = self._entries[session_id] = _Entry({}, self._clock())
        entry.data.update(changed)
        for key in removed:
            entry.data.pop(key, None)
        self._evict()

    async def delete(self, session_id: str) -> None:
        self._entries.pop(session_id, None)

    async def try_lock(self, session_id: str, owner: str) -> bool:
        if session_id in self._locks:
            return False
        self._locks[session_id] = owner
        return True

    async def unlock(self, session_id: str, owner: str) -> None:
        if self._locks.get(session_id) == owner:
            del self._locks[session_id]

    async def close(self) -> None:
        self._entries.clear()
