"""What every session store promises, on each of them: memory, a real Redis, SQLite and a real PostgreSQL.

"Replicas" are two store objects on one backing store (for the memory store,
which no other process can share, the same object).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.core.errors import SessionTooLarge
from gateway.sessions import MemoryStore, RedisStore, SessionStore, SQLStore
from prompts import ChatPrompt
from tests.servers import RedisServer
from tests.sessions.support import ManualSleep, fresh_postgres_database

MakeStore = Callable[..., SessionStore]


async def store_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        return redis.url
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/sessions.db"
    return await fresh_postgres_database(request.getfixturevalue("postgres"))


@pytest.fixture(params=["memory", "redis", "sqlite", "postgresql"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """Makes replicas of one store (all with the bounds of the first); closes them at the end."""
    kind: str = request.param
    url = "" if kind == "memory" else await store_url(kind, request, tmp_path)
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    made: list[SessionStore] = []

    def make(**bounds: Any) -> SessionStore:
        store: SessionStore
        if kind == "memory":
            store = made[0] if made else MemoryStore(**bounds)
        elif kind == "redis":
            store = RedisStore.from_url(url, prefix=prefix, **bounds)
        else:
            store = SQLStore.from_url(url, **bounds)
        made.append(store)
        return store

    yield make
    for store in {id(store): store for store in made}.values():
        await store.close()


def sql_only(request: pytest.FixtureRequest) -> None:
    if request.node.callspec.params["make_store"] not in ("sqlite", "postgresql"):
        pytest.skip("the other stores' clocks and locks are tested in their own modules")


def new_id() -> str:
    return uuid.uuid4().hex


async def test_values_and_chat_prompts_round_trip_and_delete(make_store: MakeStore) -> None:
    store = make_store()
    prompt = ChatPrompt(system="be brief")
    prompt.add_user("hello ünïcode")
    prompt.add_assistant("hi")
    sid = new_id()
    assert await store.load(sid) is None
    await store.save(sid, {"chat_prompt": prompt, "params": {"temperature": 0.5}}, ())
    loaded = await store.load(sid)
    assert loaded is not None and loaded["params"] == {"temperature": 0.5}
    assert isinstance(loaded["chat_prompt"], ChatPrompt)
    assert loaded["chat_prompt"].messages == prompt.messages and loaded["chat_prompt"].system == "be brief"
    await store.delete(sid)
    assert await store.load(sid) is None
    await store.delete(sid)  # harmless twice


async def test_replicas_changing_different_keys_keep_both(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    sid = new_id()
    await a.save(sid, {"a": 1, "gone": True}, ())
    await b.save(sid, {"b": 2}, ["gone", "never-there"])
    await a.save(sid, {"a": 3}, ())
    assert await b.load(sid) == {"a": 3, "b": 2}


async def test_concurrent_saves_of_different_keys_lose_none(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    sid = new_id()
    async with asyncio.timeout(30):
        await asyncio.gather(*(replica.save(sid, {f"k{i}": i}, ()) for i, replica in enumerate([a, b] * 10)))
    assert await a.load(sid) == {f"k{i}": i for i in range(20)}


async def test_a_save_past_max_session_bytes_is_refused_and_writes_nothing(make_store: MakeStore) -> None:
    store = make_store(max_session_bytes=4096)
    sid = new_id()
    await store.save(sid, {"small": "x" * 100}, ())
    with pytest.raises(SessionTooLarge):
        await store.save(sid, {"big": "x" * 4096, "small": "changed"}, ())
    assert await store.load(sid) == {"small": "x" * 100}
    await store.save(sid, {"small": "y" * 3000}, ())  # replacing a key counts its new size only
    assert await store.load(sid) == {"small": "y" * 3000}


async def test_max_sessions_drops_the_least_recently_used(make_store: MakeStore) -> None:
    store = make_store(max_sessions=3)
    ids = [new_id() for _ in range(4)]
    for sid in ids[:3]:
        await store.save(sid, {"id": sid}, ())
    assert await store.load(ids[0]) is not None  # now the most recently used
    await store.save(ids[3], {"id": ids[3]}, ())
    assert await store.load(ids[1]) is None
    for sid in (ids[0], ids[2], ids[3]):
        assert await store.load(sid) == {"id": sid}


async def test_the_lock_is_exclusive_across_replicas_and_only_its_owner_releases_it(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    sid = new_id()  # a lock needs no stored session (a refused first turn locks and stores nothing)
    assert await a.try_lock(sid, "owner-1")
    assert not await b.try_lock(sid, "owner-2")
    assert not await a.try_lock(sid, "owner-1")  # not re-entrant
    await b.unlock(sid, "owner-2")  # not its lock: nothing happens
    assert not await b.try_lock(sid, "owner-2")
    await a.unlock(sid, "owner-1")
    assert await b.try_lock(sid, "owner-2")
    await b.unlock(sid, "owner-2")


# --- the SQL store's own clock, lock expiry and concurrency


async def until(condition: Callable[[], Any], seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while not await condition():
            await asyncio.sleep(0.01)


async def test_an_idle_session_expires_and_a_new_save_starts_it_afresh(
    make_store: MakeStore, request: pytest.FixtureRequest
) -> None:
    sql_only(request)
    store = make_store(idle_timeout=0.3)
    assert isinstance(store, SQLStore)
    sid, other = new_id(), new_id()

    async def idle(session_id: str) -> bool:  # asked without loading it (a load would keep it alive)
        async with store.db.transaction() as tx:
            sql = f"SELECT COUNT(*) FROM session_records WHERE id = ? AND touched >= {store.db.now} - 0.3"
            [(live,)] = await tx.fetch(sql, session_id)
        return not live

    await store.save(other, {"x": 1}, ())  # first: idle once `sid` is
    await store.save(sid, {"old": 1}, ())
    await until(lambda: idle(sid))
    assert await store.load(sid) is None
    await store.save(sid, {"new": 2}, ())  # starts afresh: the expired keys are not carried over
    assert await store.load(sid) == {"new": 2}
    async with store.db.transaction() as tx:  # a save deletes every expired session, loaded or not
        assert await tx.fetch("SELECT id FROM session_records") == [(sid,)]
        assert await tx.fetch("SELECT session_id, name FROM session_fields") == [(sid, "new")]


async def test_a_held_lock_is_renewed_and_lapses_when_its_holder_dies(
    make_store: MakeStore, request: pytest.FixtureRequest
) -> None:
    sql_only(request)
    ticks = ManualSleep()
    # Long enough that a loaded machine renews it in time, short enough to wait for it to lapse.
    holder = make_store(lock_timeout=3, sleep=ticks)
    other = make_store()
    assert isinstance(holder, SQLStore)
    sid = new_id()

    async def remaining() -> float:
        async with holder.db.transaction() as tx:
            [(value,)] = await tx.fetch(f"SELECT expires - {holder.db.now} FROM session_locks WHERE id = ?", sid)
        return float(value)

    assert await holder.try_lock(sid, "long-generation")
    async with holder.db.transaction() as tx:  # its time has nearly run out when the renewal comes
        await tx.execute(f"UPDATE session_locks SET expires = {holder.db.now} + 1 WHERE id = ?", sid)
    await ticks.tick()
    await until(lambda: _more_than(remaining, 2))  # renewed: a whole lock_timeout again
    assert not await other.try_lock(sid, "someone-else")
    await holder.close()  # a replica that dies stops renewing, without unlocking
    assert not await other.try_lock(sid, "someone-else")
    await until(lambda: other.try_lock(sid, "someone-else"), 15)  # within lock_timeout
    await other.unlock(sid, "someone-else")


async def _more_than(remaining: Callable[[], Any], seconds: float) -> bool:
    return bool(await remaining() > seconds)


async def test_two_appends_to_one_conversation_at_once_are_ordered_across_replicas(
    make_store: MakeStore, request: pytest.FixtureRequest
) -> None:
    from gateway.openai.response_store import ResponseStore

    sql_only(request)
    a, b = ResponseStore(make_store()), ResponseStore(make_store())
    cid = "conv_" + new_id()
    await a.create_conversation(cid, "alice", None, [])
    batches = [[{"id": f"{n}-{i}"} for i in range(3)] for n in range(12)]
    async with asyncio.timeout(60):
        await asyncio.gather(*((a, b)[n % 2].append(cid, "alice", batch) for n, batch in enumerate(batches)))
    items = [item["id"] for item in (await b.conversation(cid, "alice"))["items"]]
    assert sorted(items) == sorted(item["id"] for batch in batches for item in batch)  # none lost
    for start in range(0, len(items), 3):  # each batch whole, never interleaved
        assert len({item.split("-")[0] for item in items[start : start + 3]}) == 1


def test_the_gateway_selects_an_sql_store_from_settings(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from gateway import Settings
    from gateway.app import make_store

    settings = Settings(
        session_store=f"sqlite:///{tmp_path}/s.db", session_idle_timeout=42, max_sessions=7, max_session_bytes=8192
    )
    store = make_store(settings)
    assert isinstance(store, SQLStore)
    assert (store.idle_timeout, store.max_sessions, store.max_session_bytes) == (42, 7, 8192)
    with pytest.raises(ValidationError, match="sqlite:///PATH or postgresql://"):
        Settings(session_store="mysql://db/sessions")


async def test_calls_cancelled_at_any_point_leave_the_store_usable(
    make_store: MakeStore, request: pytest.FixtureRequest
) -> None:
    # A client that leaves cancels its request's store call wherever it is: BEGIN queued, mid-
    # transaction or committing. The next transaction must still start clean.
    sql_only(request)
    store = make_store()
    async with asyncio.timeout(60):
        for yields in range(30):
            task = asyncio.create_task(store.save(new_id(), {"a": 1}, ()))
            for _ in range(yields):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sid = new_id()
        await store.save(sid, {"b": 2}, ())
        assert await store.load(sid) == {"b": 2}
