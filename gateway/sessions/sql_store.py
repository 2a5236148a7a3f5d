"""SQLStore: sessions in SQLite or PostgreSQL, shared by every process using the database.

The same store model as `MemoryStore` and `RedisStore`, in three tables:
a session is a row of `session_records` (when it was last used) and one row
of `session_fields` per session key (so two requests that change different
keys never overwrite each other, as in Redis's hashes); `session_locks`
holds the generation locks.

Bounds, kept by every save in its own transaction: a save that would take a
session past `max_session_bytes` is refused (SessionTooLarge, nothing
written); sessions idle longer than `idle_timeout` are deleted (and never
loaded once expired); past `max_sessions` the least recently used go first.
So the sessions never take more than `max_sessions x max_session_bytes`.

The generation lock is one conditional upsert: it takes the lock unless a
holder's lock has not yet expired, so it holds across processes, and a dead
holder's lock lapses after `lock_timeout`. While a request of this process
holds it, `LockRenewal` extends it, as for Redis. Times come from the
database's clock, so replicas with skewed clocks agree.

Saves of one session are serialised: SQLite writes one transaction at a time
(taken with BEGIN IMMEDIATE, waiting for another process's write up to the
busy timeout), PostgreSQL takes a transaction-scoped advisory lock on the id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from gateway.core.errors import SessionTooLarge
from gateway.sessions.codec import decode_session, encode_value
from gateway.sessions.lock_renewal import LockRenewal
from gateway.sessions.stores import check_shared_bounds, session_size
from gateway.settings import MiB
from gateway.sql import Database, Dialect, Transaction, open_database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS session_records (id TEXT PRIMARY KEY, touched {real} NOT NULL, used {int} NOT NULL);
CREATE INDEX IF NOT EXISTS session_records_by_use ON session_records (used);
CREATE INDEX IF NOT EXISTS session_records_by_touch ON session_records (touched);
CREATE TABLE IF NOT EXISTS session_fields (
    session_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (session_id, name)
);
CREATE TABLE IF NOT EXISTS session_locks (id TEXT PRIMARY KEY, owner TEXT NOT NULL, expires {real} NOT NULL);
"""
SCHEMAS: dict[Dialect, str] = {
    "sqlite": _SCHEMA.format(real="REAL", int="INTEGER"),
    "postgresql": _SCHEMA.format(real="DOUBLE PRECISION", int="BIGINT"),
}
# A namespace of PostgreSQL advisory locks for session saves (the other key is the id's hash).
_PG_SAVE_LOCKS = 0x63730001

_TAKE_LOCK = (
    "INSERT INTO session_locks (id, owner, expires) VALUES (?, ?, ?) ON CONFLICT (id)"
    " DO UPDATE SET owner = excluded.owner, expires = excluded.expires WHERE session_locks.expires < ?"
)
_UPSERT_FIELD = (
    "INSERT INTO session_fields (session_id, name, value) VALUES (?, ?, ?)"
    " ON CONFLICT (session_id, name) DO UPDATE SET value = excluded.value"
)
_UPSERT_RECORD = (
    "INSERT INTO session_records (id, touched, used) VALUES (?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET touched = excluded.touched, used = excluded.used"
)


class SQLStore:
    """Session data in an SQL database with an idle timeout; safe for several processes and replicas."""

    def __init__(
        self,
        db: Database,
        idle_timeout: float = 3600.0,
        lock_timeout: float = 30.0,
        *,
        max_sessions: int = 10_000,
        max_session_bytes: int = MiB,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        check_shared_bounds(idle_timeout, lock_timeout, max_sessions, max_session_bytes)
        self.db = db
        self.idle_timeout = idle_timeout
        self.lock_timeout = lock_timeout
        self.max_sessions = max_sessions
        self.max_session_bytes = max_session_bytes
        self._renewal = LockRenewal(lock_timeout, self._renew, sleep)

    @classmethod
    def from_url(cls, url: str, idle_timeout: float = 3600.0, **kwargs: Any) -> SQLStore:
        """A store in the database `url` names: `sqlite:///PATH` or `postgresql://...`."""
        return cls(open_database(url, SCHEMAS), idle_timeout=idle_timeout, **kwargs)

    async def _now(self, tx: Transaction) -> float:
        [(now,)] = await tx.fetch(f"SELECT {self.db.now}")
        return float(now)

    async def _touch(self, tx: Transaction, session_id: str, now: float) -> None:
        [(last,)] = await tx.fetch("SELECT COALESCE(MAX(used), 0) FROM session_records")
        await tx.execute(_UPSERT_RECORD, session_id, now, int(last) + 1)

    async def _drop(self, tx: Transaction, ids: Iterable[str]) -> None:
        rows = [(sid,) for sid in ids]
        await tx.executemany("DELETE FROM session_fields WHERE session_id = ?", rows)
        await tx.executemany("DELETE FROM session_records WHERE id = ?", rows)

    async def load(self, session_id: str) -> dict[str, Any] | None:
        async with self.db.transaction() as tx:
            now = await self._now(tx)
            rows = await tx.fetch(
                "SELECT f.name, f.value FROM session_fields f JOIN session_records r ON r.id = f.session_id"
                " WHERE r.id = ? AND r.touched >= ?",
                session_id,
                now - self.idle_timeout,
            )
            if not rows:
                return None
            data = decode_session(dict(rows))
            if data is not None:  # undecodable data is not kept alive: it expires on its own
                await self._touch(tx, session_id, now)
            return data

    async def save(self, session_id: str, changed: Mapping[str, Any], removed: Iterable[str]) -> None:
        encoded = {key: encode_value(value) for key, value in changed.items()}
        gone = {key for key in removed if key not in encoded}
        async with self.db.transaction() as tx:
            if self.db.dialect == "postgresql":
                await tx.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", _PG_SAVE_LOCKS, session_id)
            now = await self._now(tx)
            [(stale,)] = await tx.fetch(
                "SELECT COUNT(*) FROM session_records WHERE id = ? AND touched < ?",
                session_id,
                now - self.idle_timeout,
            )
            if stale:  # an expired session's old keys are not carried into the new one
                await self._drop(tx, [session_id])
            stored = await tx.fetch("SELECT name, length(value) FROM session_fields WHERE session_id = ?", session_id)
            kept = [len(name.encode()) + int(n) for name, n in stored if name not in encoded and name not in gone]
            size = sum(kept) + session_size(encoded)
            if size > self.max_session_bytes:
                raise SessionTooLarge(f"the session would take {size} bytes; the limit is {self.max_session_bytes}")
            await tx.executemany(_UPSERT_FIELD, [(session_id, key, value) for key, value in encoded.items()])
            await tx.executemany(
                "DELETE FROM session_fields WHERE session_id = ? AND name = ?", [(session_id, key) for key in gone]
            )
            if kept or encoded:
                await self._touch(tx, session_id, now)
            else:  # nothing left: no session, as in Redis
                await self._drop(tx, [session_id])
            await self._evict(tx, session_id, now)

    async def _evict(self, tx: Transaction, session_id: str, now: float) -> None:
        expired = now - self.idle_timeout
        await tx.execute(
            "DELETE FROM session_fields WHERE session_id IN (SELECT id FROM session_records WHERE touched < ?)", expired
        )
        await tx.execute("DELETE FROM session_records WHERE touched < ?", expired)
        await tx.execute("DELETE FROM session_locks WHERE expires < ?", now)  # lapsed: as good as none
        [(count,)] = await tx.fetch("SELECT COUNT(*) FROM session_records")
        if count > self.max_sessions:  # the least recently used go first, never the session being saved
            oldest = await tx.fetch(
                "SELECT id FROM session_records WHERE id <> ? ORDER BY used LIMIT ?",
                session_id,
                int(count) - self.max_sessions,
            )
            await self._drop(tx, [sid for (sid,) in oldest])

    async def delete(self, session_id: str) -> None:
        async with self.db.transaction() as tx:
            await self._drop(tx, [session_id])

    async def try_lock(self, session_id: str, owner: str) -> bool:
        async with self.db.transaction() as tx:
            now = await self._now(tx)
            taken = await tx.execute(_TAKE_LOCK, session_id, owner, now + self.lock_timeout, now) == 1
        if taken:
            self._renewal.start(session_id, owner)
        return taken

    async def unlock(self, session_id: str, owner: str) -> None:
        self._renewal.stop(session_id, owner)
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM session_locks WHERE id = ? AND owner = ?", session_id, owner)

    async def _renew(self, session_id: str, owner: str) -> bool:
        async with self.db.transaction() as tx:
            now = await self._now(tx)
            sql = "UPDATE session_locks SET expires = ? WHERE id = ? AND owner = ? AND expires >= ?"
            return await tx.execute(sql, now + self.lock_timeout, session_id, owner, now) == 1

    async def ping(self) -> None:
        async with self.db.transaction() as tx:
            await self._now(tx)

    async def close(self) -> None:
        await self._renewal.close()
        await self.db.close()
