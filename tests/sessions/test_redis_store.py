"""RedisStore against a real redis-server (gateway.sessions.redis_store)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.exceptions

from gateway.sessions.redis_store import RedisStore
from prompts import ChatPrompt
from tests.servers import RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_server.url, idle_timeout=60, lock_timeout=0.6, socket_timeout=0.5)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def other_replica(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_server.url, idle_timeout=60, lock_timeout=0.6, socket_timeout=0.5)
    try:
        yield store
    finally:
        await store.close()


def new_id() -> str:
    return uuid.uuid4().hex


async def test_values_and_chat_prompts_round_trip(store: RedisStore) -> None:
    prompt = ChatPrompt(system="be brief")
    prompt.add_user("hello")
    prompt.add_assistant("hi")
    sid = new_id()
    await store.save(sid, {"chat_prompt": prompt, "params": {"temperature": 0.5}}, ())
    loaded = await store.load(sid)
    assert loaded is not None
    assert loaded["params"] == {"temperature": 0.5}
    assert isinstance(loaded["chat_prompt"], ChatPrompt)
    assert loaded["chat_prompt"].messages == prompt.messages and loaded["chat_prompt"].system == "be brief"
    await store.delete(sid)
    assert await store.load(sid) is None


async def test_two_replicas_changing_different_keys_keep_both(store: RedisStore, other_replica: RedisStore) -> None:
    sid = new_id()
    await store.save(sid, {"a": 1, "gone": True}, ())
    await other_replica.save(sid, {"b": 2}, ["gone"])
    await store.save(sid, {"a": 3}, ())
    assert await other_replica.load(sid) == {"a": 3, "b": 2}


async def test_loading_refreshes_the_idle_ttl(store: RedisStore) -> None:
    sid = new_id()
    await store.save(sid, {"a": 1}, ())
    key = f"{store.prefix}session:{sid}"
    await store.client.pexpire(key, 1000)
    await store.load(sid)
    assert await store.client.pttl(key) > 50_000  # back to the 60 s idle timeout
    await store.client.pexpire(key, 1)
    await asyncio.sleep(0.05)
    assert await store.load(sid) is None


async def test_the_lock_holds_across_replicas_and_only_its_owner_releases_it(
    store: RedisStore, other_replica: RedisStore
) -> None:
    sid = new_id()
    assert await store.try_lock(sid, "owner-1")
    assert not await other_replica.try_lock(sid, "owner-2")
    await other_replica.unlock(sid, "owner-2")  # not its lock: nothing happens
    assert not await other_replica.try_lock(sid, "owner-2")
    await store.unlock(sid, "owner-1")
    assert await other_replica.try_lock(sid, "owner-2")
    await other_replica.unlock(sid, "owner-2")


async def test_a_lock_outlives_lock_timeout_while_held_and_lapses_when_its_holder_dies(
    redis_server: RedisServer, other_replica: RedisStore
) -> None:
    holder = RedisStore.from_url(redis_server.url, lock_timeout=0.6, socket_timeout=0.5)
    sid = new_id()
    assert await holder.try_lock(sid, "long-generation")
    await asyncio.sleep(2.0)  # more than three lock timeouts: renewed while held
    assert not await other_replica.try_lock(sid, "someone-else")
    await holder.close()  # a replica that dies stops renewing, without unlocking
    async with asyncio.timeout(10):
        while not await other_replica.try_lock(sid, "someone-else"):
            await asyncio.sleep(0.1)
    await other_replica.unlock(sid, "someone-else")


async def test_an_outage_fails_fast_and_the_store_recovers_when_redis_returns(
    redis_server: RedisServer, store: RedisStore
) -> None:
    sid = new_id()
    await store.save(sid, {"a": 1}, ())
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)  # a hung server: only socket timeouts help
    try:
        async with asyncio.timeout(10):  # bounds a hang; the store gives up after its socket timeouts
            with pytest.raises(redis.exceptions.TimeoutError):
                await store.load(sid)
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    redis_server.stop()
    try:
        async with asyncio.timeout(10):
            with pytest.raises(redis.exceptions.ConnectionError):
                await store.save(sid, {"a": 2}, ())
    finally:
        redis_server.start()
    # Same store object, same pool: it reconnects by itself (this Redis keeps nothing on disk).
    await store.save(sid, {"a": 3}, ())
    assert await store.load(sid) == {"a": 3}


def test_the_gateway_selects_redis_from_settings(redis_server: RedisServer) -> None:
    from gateway.app import make_store
    from gateway.settings import Settings

    store = make_store(Settings(session_store=redis_server.url, session_idle_timeout=42))
    assert isinstance(store, RedisStore)
    assert store.idle_timeout == 42
