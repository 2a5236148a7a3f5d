"""Where the persistent handler keeps conversations: SQLite or PostgreSQL.

One table, one row per conversation, owned by one user. Every query names the
user, so a conversation id alone never reaches another user's data. The
generation lock is two columns (`locked_by`, `lock_expires`) set by a single
conditional UPDATE, so it holds across every process that shares the
database, and a lock whose holder died lapses when it expires.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from gateway.sql import SQL_URL_FORMS, TIMEOUT, Connection, sql_dialect

DeleteResult = Literal["deleted", "missing", "busy"]
# What a save writes: the conversation (prompt, title, turns) and its generation parameters.
Part = Literal["prompt", "params"]


@dataclass(frozen=True, slots=True)
class StoredConversation:
    id: str
    title: str
    turns: int
    created_at: float
    updated_at: float
    prompt: str = ""  # encoded ChatPrompt (gateway.sessions.codec.encode_value)
    params: str = "{}"  # JSON object

    def columns(self, user: str) -> tuple[str, str, str, int, float, float, str, str]:
        """The values of (id, user_id, title, turns, created_at, updated_at, prompt, params)."""
        return self.id, user, self.title, self.turns, self.created_at, self.updated_at, self.prompt, self.params


class ConversationDB(Protocol):
    """A user's conversations, by id. Lock durations are in seconds."""

    async def get(self, user: str, cid: str) -> StoredConversation | None: ...

    async def list_user(self, user: str) -> list[StoredConversation]:
        """The user's conversations, most recently updated first (without prompt and params)."""
        ...

    async def create(self, user: str, row: StoredConversation, owner: str | None, ttl: float) -> None:
        """A new conversation, locked by `owner` when given."""
        ...

    async def save(self, user: str, row: StoredConversation, parts: Collection[Part]) -> None:
        """Write the `parts` of `row` that changed (creating the row, whole, if new); the rest stays as stored."""
        ...

    async def delete(self, user: str, cid: str, owner: str | None = None) -> DeleteResult:
        """Forget a conversation unless a generation holds it (other than `owner`'s)."""
        ...

    async def try_lock(self, user: str, cid: str, owner: str, ttl: float) -> bool: ...

    async def renew(self, cid: str, owner: str, ttl: float) -> bool: ...

    async def unlock(self, cid: str, owner: str) -> None: ...

    async def close(self) -> None: ...


def open_db(url: str) -> ConversationDB:
    """`sqlite:///relative/path`, `sqlite:////absolute/path`, or `postgresql://user@host/db`."""
    dialect = sql_dialect(url)
    if dialect == "sqlite":
        return SQLiteDB(url.removeprefix("sqlite:///"))
    if dialect == "postgresql":
        return PostgresDB(url)
    raise ValueError(f"unknown conversation database {url!r}: use {SQL_URL_FORMS}")


_COLUMNS = "id, title, turns, created_at, updated_at, prompt, params"
_PART_COLUMNS: dict[Part, tuple[str, ...]] = {"prompt": ("title", "turns", "prompt"), "params": ("params",)}


def _upsert(parts: Collection[Part], placeholders: str) -> str:
    """INSERT a whole row, or UPDATE only the columns of `parts` (and updated_at) of the user's existing row."""
    columns = ["updated_at", *(column for part in sorted(parts) for column in _PART_COLUMNS[part])]
    return (
        "INSERT INTO conversations (id, user_id, title, turns, created_at, updated_at, prompt, params)"
        f" VALUES ({placeholders}) ON CONFLICT (id) DO UPDATE SET "
        + ", ".join(f"{column} = excluded.{column}" for column in columns)
        + " WHERE conversations.user_id = excluded.user_id"
    )


_LIST_COLUMNS = "id, title, turns, created_at, updated_at"

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    title TEXT NOT NULL,
    turns INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL,
    locked_by TEXT,
    lock_expires REAL
);
CREATE INDEX IF NOT EXISTS conversations_by_user ON conversations (user_id, updated_at);
"""


class SQLiteDB:
    """An embedded database file (no server). Several processes on one host may share it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._connection = Connection(f"sqlite:///{self.path}", _SQLITE_SCHEMA)

    async def _db(self) -> Any:
        return await self._connection.get()

    async def _write(self, sql: str, *args: Any) -> int:
        conn = await self._db()
        cursor = await conn.execute(sql, args)
        await conn.commit()
        return int(cursor.rowcount)

    async def get(self, user: str, cid: str) -> StoredConversation | None:
        conn = await self._db()
        sql = f"SELECT {_COLUMNS} FROM conversations WHERE id = ? AND user_id = ?"
        async with conn.execute(sql, (cid, user)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else StoredConversation(*row)

    async def list_user(self, user: str) -> list[StoredConversation]:
        conn = await self._db()
        sql = f"SELECT {_LIST_COLUMNS} FROM conversations WHERE user_id = ? ORDER BY updated_at DESC"
        async with conn.execute(sql, (user,)) as cursor:
            return [StoredConversation(*row) for row in await cursor.fetchall()]

    async def create(self, user: str, row: StoredConversation, owner: str | None, ttl: float) -> None:
        expires = time.time() + ttl if owner is not None else None
        await self._write(
            "INSERT INTO conversations (id, user_id, title, turns, created_at, updated_at, prompt, params,"
            " locked_by, lock_expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            *row.columns(user),
            owner,
            expires,
        )

    async def save(self, user: str, row: StoredConversation, parts: Collection[Part]) -> None:
        await self._write(_upsert(parts, "?, ?, ?, ?, ?, ?, ?, ?"), *row.columns(user))

    async def delete(self, user: str, cid: str, owner: str | None = None) -> DeleteResult:
        deleted = await self._write(
            "DELETE FROM conversations WHERE id = ? AND user_id = ?"
            " AND (locked_by IS NULL OR lock_expires < ? OR locked_by = ?)",
            cid,
            user,
            time.time(),
            owner,
        )
        if deleted:
            return "deleted"
        return "busy" if await self.get(user, cid) is not None else "missing"

    async def try_lock(self, user: str, cid: str, owner: str, ttl: float) -> bool:
        now = time.time()
        return (
            await self._write(
                "UPDATE conversations SET locked_by = ?, lock_expires = ?"
                " WHERE id = ? AND user_id = ? AND (locked_by IS NULL OR lock_expires < ?)",
                owner,
                now + ttl,
                cid,
                user,
                now,
            )
            == 1
        )

    async def renew(self, cid: str, owner: str, ttl: float) -> bool:
        sql = "UPDATE conversations SET lock_expires = ? WHERE id = ? AND locked_by = ?"
        return await self._write(sql, time.time() + ttl, cid, owner) == 1

    async def unlock(self, cid: str, owner: str) -> None:
        sql = "UPDATE conversations SET locked_by = NULL, lock_expires = NULL WHERE id = ? AND locked_by = ?"
        await self._write(sql, cid, owner)

    async def close(self) -> None:
        await self._connection.close()


# Lock times come from the database's clock, so replicas with skewed clocks agree.
_PG_NOW = "extract(epoch from clock_timestamp())"

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    title TEXT NOT NULL,
    turns INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL,
    locked_by TEXT,
    lock_expires DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS conversations_by_user ON conversations (user_id, updated_at);
"""


class PostgresDB:
    """A PostgreSQL database shared by several gateway replicas (asyncpg pool)."""

    def __init__(self, dsn: str, *, timeout: float = TIMEOUT) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._connection = Connection(dsn, _PG_SCHEMA, timeout=timeout)

    async def _db(self) -> Any:
        return await self._connection.get()

    async def _execute(self, sql: str, *args: Any) -> int:
        pool = await self._db()
        status = await pool.execute(sql, *args)  # e.g. "UPDATE 1"
        return int(str(status).rsplit(" ", 1)[-1])

    async def get(self, user: str, cid: str) -> StoredConversation | None:
        pool = await self._db()
        row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM conversations WHERE id = $1 AND user_id = $2", cid, user)
        return None if row is None else StoredConversation(*row)

    async def list_user(self, user: str) -> list[StoredConversation]:
        pool = await self._db()
        sql = f"SELECT {_LIST_COLUMNS} FROM conversations WHERE user_id = $1 ORDER BY updated_at DESC"
        return [StoredConversation(*row) for row in await pool.fetch(sql, user)]

    async def create(self, user: str, row: StoredConversation, owner: str | None, ttl: float) -> None:
        await self._execute(
            "INSERT INTO conversations (id, user_id, title, turns, created_at, updated_at, prompt, params,"
            f" locked_by, lock_expires) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
            f" CASE WHEN $9::text IS NULL THEN NULL ELSE {_PG_NOW} + $10 END)",
            *row.columns(user),
            owner,
            ttl,
        )

    async def save(self, user: str, row: StoredConversation, parts: Collection[Part]) -> None:
        await self._execute(_upsert(parts, "$1, $2, $3, $4, $5, $6, $7, $8"), *row.columns(user))

    async def delete(self, user: str, cid: str, owner: str | None = None) -> DeleteResult:
        deleted = await self._execute(
            "DELETE FROM conversations WHERE id = $1 AND user_id = $2"
            f" AND (locked_by IS NULL OR lock_expires < {_PG_NOW} OR locked_by = $3)",
            cid,
            user,
            owner,
        )
        if deleted:
            return "deleted"
        return "busy" if await self.get(user, cid) is not None else "missing"

    async def try_lock(self, user: str, cid: str, owner: str, ttl: float) -> bool:
        return (
            await self._execute(
                f"UPDATE conversations SET locked_by = $1, lock_expires = {_PG_NOW} + $2"
                f" WHERE id = $3 AND user_id = $4 AND (locked_by IS NULL OR lock_expires < {_PG_NOW})",
                owner,
                ttl,
                cid,
                user,
            )
            == 1
        )

    async def renew(self, cid: str, owner: str, ttl: float) -> bool:
        sql = f"UPDATE conversations SET lock_expires = {_PG_NOW} + $1 WHERE id = $2 AND locked_by = $3"
        return await self._execute(sql, ttl, cid, owner) == 1

    async def unlock(self, cid: str, owner: str) -> None:
        sql = "UPDATE conversations SET locked_by = NULL, lock_expires = NULL WHERE id = $1 AND locked_by = $2"
        await self._execute(sql, cid, owner)

    async def close(self) -> None:
        await self._connection.close()
