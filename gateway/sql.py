"""SQL databases the gateway keeps state in: an SQLite file or a PostgreSQL server.

One place for what the session store (gateway.sessions.sql_store) and the
conversation database (gateway.conversations.db) share: the URL forms, how a
database is opened (SQLite in WAL mode with a busy timeout, so several
processes on one host share the file; PostgreSQL through a pool, its schema
created under an advisory lock, so replicas starting together do not race),
and `Database`, one transaction interface over both drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgresql"]

SQL_URL_FORMS = "sqlite:///PATH or postgresql://..."
# Seconds a statement waits for another process's write lock (SQLite) or for the server (PostgreSQL).
TIMEOUT = 5.0
# Each database's own clock in seconds since the epoch, so every replica sharing it agrees on time.
_NOW: dict[Dialect, str] = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "extract(epoch from clock_timestamp())::float8",
}


def sql_dialect(url: str) -> Dialect | None:
    """Which database a URL names, or None when it names neither."""
    if url.startswith("sqlite:///"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    return None


def sqlite_path(url: str) -> Path:
    """`sqlite:///relative/path` or `sqlite:////absolute/path`."""
    return Path(url.removeprefix("sqlite:///"))


async def _connect_sqlite(path: Path, schema: str, autocommit: bool) -> Any:
    """An aiosqlite connection to `path` (created with its directory), in WAL mode, with `schema` applied.

    WAL lets readers go on while one process writes; the busy timeout makes a writer
    wait for another process's write instead of failing at once.
    """
    import aiosqlite

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, timeout=TIMEOUT, isolation_level=None if autocommit else "")

    async def set_up() -> None:
        await conn.execute("PRAGMA journal_mode=WAL")
        # Durable across a crash of the process (the case a restart test covers); only a power
        # loss could cost the last transactions, and it saves an fsync per write.
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.executescript(schema)
        await conn.commit()

    try:
        await _while_locked(set_up, conn)
    except BaseException:
        await conn.close()
        raise
    return conn


async def _while_locked(step: Callable[[], Awaitable[None]], conn: Any) -> None:
    """`step`, again while SQLite says "database is locked", for up to TIMEOUT seconds.

    The busy timeout does not cover it all: a connection turning a new file to WAL, or
    creating the schema, while others open the same file (replicas or front ends starting
    together, two stores of one process) is refused at once, without waiting, where
    waiting could deadlock. Retried, each attempt finds the others done.
    """
    deadline = time.monotonic() + TIMEOUT
    delay = 0.005
    while True:
        try:
            await step()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            await conn.rollback()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def _create_postgres_pool(dsn: str, schema: str, timeout: float) -> Any:
    """An asyncpg pool for `dsn`, with `schema` applied once however many replicas start together."""
    import asyncpg

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10, timeout=timeout, command_timeout=timeout)
    async with pool.acquire() as conn, conn.transaction():
        # Replicas starting together would race on CREATE TABLE IF NOT EXISTS.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('chatstream-gateway schema'))")
        await conn.execute(schema)
    return pool


class Connection:
    """Opened on first use, once, however many tasks ask at once: an SQLite connection or a PostgreSQL pool.

    `get()` gives the aiosqlite connection (`autocommit`: no implicit transactions) or the asyncpg pool.
    Opening runs in a task of its own: a caller cancelled meanwhile (its client left) neither
    abandons a half-opened connection nor makes the next caller open a second one.
    """

    def __init__(self, url: str, schema: str, *, autocommit: bool = False, timeout: float = TIMEOUT) -> None:
        self.dialect = sql_dialect(url)
        if self.dialect is None:
            raise ValueError(f"unknown database {url!r}: use {SQL_URL_FORMS}")
        self.url = url
        self._schema = schema
        self._autocommit = autocommit
        self._timeout = timeout
        self._opened: asyncio.Task[Any] | None = None

    async def _open(self) -> Any:
        if self.dialect == "sqlite":
            return await _connect_sqlite(sqlite_path(self.url), self._schema, self._autocommit)
        return await _create_postgres_pool(self.url, self._schema, self._timeout)

    async def get(self) -> Any:
        opened = self._opened
        if opened is None or (opened.done() and (opened.cancelled() or opened.exception() is not None)):
            opened = self._opened = asyncio.ensure_future(self._open())  # first use, or the last try failed
        return await asyncio.shield(opened)

    async def close(self) -> None:
        opened, self._opened = self._opened, None
        if opened is not None:
            with contextlib.suppress(Exception):
                await (await opened).close()


class Transaction(Protocol):
    """Statements run in one transaction. SQL is written with `?` placeholders for both dialects."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...


class Database(Protocol):
    """A database the gateway shares with other processes; `now` is its clock as an SQL expression."""

    dialect: Dialect
    now: str

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """`async with db.transaction() as tx:` commits at the end, rolls back on an exception."""
        ...

    async def close(self) -> None: ...


def open_database(url: str, schemas: dict[Dialect, str]) -> Database:
    """The database `url` names (`sqlite:///PATH`, `postgresql://...`), its schema applied when first used."""
    dialect = sql_dialect(url)
    if dialect == "sqlite":
        return _SQLite(Connection(url, schemas["sqlite"], autocommit=True))
    if dialect == "postgresql":
        return _Postgres(Connection(url, schemas["postgresql"]))
    raise ValueError(f"unknown database {url!r}: use {SQL_URL_FORMS}")


class _SQLiteTransaction:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = await self._conn.execute(sql, args)
        return int(cursor.rowcount)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._conn.execute(sql, args) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]


class _SQLite:
    """One connection per process; its transactions run one at a time (SQLite has one writer anyway)."""

    dialect: Dialect = "sqlite"
    now = _NOW["sqlite"]

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._lock:
            conn = await self._connection.get()
            try:
                # IMMEDIATE takes the write lock now: a read-then-write transaction never has to
                # upgrade its lock later, which SQLite would refuse at once (no busy wait) under WAL.
                await conn.execute("BEGIN IMMEDIATE")
                yield _SQLiteTransaction(conn)
            except BaseException:
                # Also when cancelled while BEGIN was queued: the connection's statements run in
                # order, so this rolls back whatever began, and the next transaction starts clean.
                await asyncio.shield(conn.rollback())
                raise
            await asyncio.shield(conn.commit())

    async def close(self) -> None:
        async with self._lock:
            await self._connection.close()


_PLACEHOLDER = re.compile(r"\?")


def _numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...` (the gateway's SQL has no `?` inside literals)."""
    count = iter(range(1, 1 << 16))
    return _PLACEHOLDER.sub(lambda _: f"${next(count)}", sql)


class _PostgresTransaction:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self._conn.execute(_numbered(sql), *args)  # e.g. "UPDATE 1", "INSERT 0 1"
        return int(str(status).rsplit(" ", 1)[-1])

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(_numbered(sql), list(rows))

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._conn.fetch(_numbered(sql), *args)]


class _Postgres:
    dialect: Dialect = "postgresql"
    now = _NOW["postgresql"]

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        pool = await self._connection.get()
        async with pool.acquire() as conn, conn.transaction():
            yield _PostgresTransaction(conn)

    async def close(self) -> None:
        await self._connection.close()
