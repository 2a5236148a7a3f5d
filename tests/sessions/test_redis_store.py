"""RedisStore on a real redis-server: TTLs, index, renewals, outages (shared promises: test_store_contract)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.exceptions

from gateway import ChatStream, Settings, create_app
from gateway.core.errors import SessionTooLarge
from gateway.sessions.redis_store import RedisStore
from tests.fakes import FakeEngine
from tests.live import serve
from tests.servers import RedisServer
from tests.sessions.support import ManualSleep
from tests.sse_client import answer_of, eventually, parse_sse


@pytest.fixture
def prefix() -> str:
    """Each test's own keys (the session index is one key per prefix)."""
    return f"test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def ticks() -> ManualSleep:
    return ManualSleep()


@pytest.fixture
async def store(redis_server: RedisServer, prefix: str, ticks: ManualSleep) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_server.url, idle_timeout=60, prefix=prefix, socket_timeout=0.5, sleep=ticks)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def other_replica(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_server.url, idle_timeout=60, prefix=prefix, socket_timeout=0.5)
    try:
        yield store
    finally:
        await store.close()


def new_id() -> str:
    return uuid.uuid4().hex


async def until_gone(store: RedisStore, key: str) -> None:
    """Redis expires keys by its own clock: wait (bounded) until `key` is gone."""
    async with asyncio.timeout(10):
        while await store.client.exists(key):
            await asyncio.sleep(0.005)


async def test_loading_refreshes_the_idle_ttl(store: RedisStore) -> None:
    sid = new_id()
    await store.save(sid, {"a": 1}, ())
    key = f"{store.prefix}session:{sid}"
    await store.client.pexpire(key, 1000)
    await store.load(sid)
    assert await store.client.pttl(key) > 50_000  # back to the 60 s idle timeout
    await store.client.pexpire(key, 1)
    await until_gone(store, key)
    assert await store.load(sid) is None


async def test_undecodable_data_is_a_fresh_session_and_is_left_to_expire(store: RedisStore) -> None:
    # Regression (issue 13): the load refreshed the TTL and then failed to decode, so the
    # session answered 503 for as long as its user kept retrying.
    sid = new_id()
    key = f"{store.prefix}session:{sid}"
    await store.client.hset(key, "chat_prompt", b"{written by another version")
    await store.client.pexpire(key, 5000)
    assert await store.load(sid) is None
    assert 0 < await store.client.pttl(key) <= 5000  # not refreshed: it goes when it was due


async def test_a_session_over_max_session_bytes_is_refused_and_the_stored_one_kept(
    redis_server: RedisServer, prefix: str
) -> None:
    small = RedisStore.from_url(redis_server.url, prefix=prefix, max_session_bytes=100)
    try:
        sid = new_id()
        await small.save(sid, {"a": "x" * 50}, ())
        with pytest.raises(SessionTooLarge):
            await small.save(sid, {"b": "y" * 60}, ())
        await small.save(sid, {"b": "y" * 60}, ["a"])  # what is removed makes room
        assert await small.load(sid) == {"b": "y" * 60}
    finally:
        await small.close()


async def test_max_sessions_drops_the_least_recently_used_whichever_replica_saved_them(
    redis_server: RedisServer, prefix: str
) -> None:
    # Regression (issue 13): the Redis store had no bound at all.
    one = RedisStore.from_url(redis_server.url, prefix=prefix, max_sessions=3)
    two = RedisStore.from_url(redis_server.url, prefix=prefix, max_sessions=3)
    try:
        await one.save("a", {"n": 1}, ())
        await two.save("b", {"n": 2}, ())
        await one.save("c", {"n": 3}, ())
        assert await two.load("a") == {"n": 1}  # used: "b" is now the least recently used
        await two.save("d", {"n": 4}, ())
        assert await one.load("b") is None
        assert [await one.load(s) for s in "acd"] == [{"n": 1}, {"n": 3}, {"n": 4}]
        assert await one.client.zcard(f"{prefix}sessions-by-use") == 3
        await one.delete("a")
        assert await one.client.zcard(f"{prefix}sessions-by-use") == 2
    finally:
        await one.close()
        await two.close()


async def test_sessions_redis_expired_leave_the_index(redis_server: RedisServer, prefix: str) -> None:
    short = RedisStore.from_url(redis_server.url, prefix=prefix, idle_timeout=0.05)
    try:
        await short.save("gone", {"n": 1}, ())
        await until_gone(short, f"{prefix}session:gone")
        async with asyncio.timeout(10):  # its index entry ages past the idle timeout by Redis's clock
            while await short.client.zscore(f"{prefix}sessions-by-use", "gone") is not None:
                await short.save("new", {"n": 2}, ())
        assert await short.client.zrange(f"{prefix}sessions-by-use", 0, -1) == [b"new"]
    finally:
        await short.close()


async def test_a_lock_outlives_lock_timeout_while_held_and_lapses_when_its_holder_dies(
    store: RedisStore, other_replica: RedisStore, ticks: ManualSleep
) -> None:
    sid = new_id()
    key = f"{store.prefix}lock:{sid}"
    assert await store.try_lock(sid, "long-generation")
    for _ in range(3):  # three lock timeouts, each nearly run out when its renewal comes
        await store.client.pexpire(key, 200)
        await ticks.tick()
        async with asyncio.timeout(10):
            while await store.client.pttl(key) <= 200:
                await asyncio.sleep(0.005)
        assert not await other_replica.try_lock(sid, "someone-else")
    await store.close()  # a replica that dies stops renewing, without unlocking
    await other_replica.client.pexpire(key, 1)  # its time runs out
    await until_gone(other_replica, key)
    assert await other_replica.try_lock(sid, "someone-else")
    await other_replica.unlock(sid, "someone-else")


async def test_a_lock_whose_request_ended_without_unlocking_is_no_longer_renewed(
    store: RedisStore, other_replica: RedisStore, ticks: ManualSleep
) -> None:
    sid = new_id()
    key = f"{store.prefix}lock:{sid}"

    async def request_that_forgets_to_unlock() -> None:
        assert await store.try_lock(sid, "leaky")

    await asyncio.create_task(request_that_forgets_to_unlock())
    await ticks.tick()
    async with asyncio.timeout(10):  # the renewer saw its request gone and stopped
        while store._renewal.tasks:
            await asyncio.sleep(0.005)
    assert not await other_replica.try_lock(sid, "next")  # still held until its time runs out
    await store.client.pexpire(key, 1)
    await until_gone(store, key)
    assert await other_replica.try_lock(sid, "next")
    await other_replica.unlock(sid, "next")


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


async def test_redis_gone_before_an_answer_is_saved_is_an_error_event_and_the_saved_turns_stay(
    redis_server: RedisServer, prefix: str
) -> None:
    # Regression: the client got `done` for an answer that Redis never received. Redis refuses
    # writes as a replica left read-only by a failover does (a hung Redis may still apply a
    # write that timed out, once it resumes: that answer "may not" have been saved).
    engine = FakeEngine()
    store = RedisStore.from_url(redis_server.url, prefix=prefix, socket_timeout=0.5)
    settings = Settings(session_secret=["redis-test-secret-0123456789"], secure_cookies=False)
    app = create_app(settings, chat_stream=ChatStream(engine=engine), store=store)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        assert (await client.post("/chat_stream", json={"user_input": "first"})).status_code == 200
        engine.gate, engine.gate_after = asyncio.Event(), 1
        async with client.stream("POST", "/chat_stream", json={"user_input": "second"}) as response:
            await eventually(lambda: engine.at_gate == 1)
            await store.client.config_set("min-replicas-to-write", 1)  # every write: NOREPLICAS
            try:
                engine.gate.set()
                body = (await response.aread()).decode()
            finally:
                await store.client.config_set("min-replicas-to-write", 0)
        events = parse_sse(body)
        assert answer_of(events) == engine.answer and [e.event for e in events][-1] == "error"
        assert events[-1].data["error"]["type"] == "session_store_unavailable"
        saved = (await client.get("/get_prompt")).json()["messages"]
        assert [m["content"] for m in saved] == ["first", engine.answer]
    await store.close()


def test_the_gateway_selects_redis_from_settings(redis_server: RedisServer) -> None:
    from gateway.app import make_store

    settings = Settings(session_store=redis_server.url, session_idle_timeout=42, max_sessions=7, max_session_bytes=8192)
    store = make_store(settings)
    assert isinstance(store, RedisStore)
    assert (store.idle_timeout, store.max_sessions, store.max_session_bytes) == (42, 7, 8192)


async def test_a_session_that_cannot_be_decoded_is_answered_as_a_fresh_one(
    redis_server: RedisServer, prefix: str
) -> None:
    # Regression (issue 13): 503 on every request of that session, for as long as it was retried.
    store = RedisStore.from_url(redis_server.url, prefix=prefix)
    settings = Settings(session_secret=["redis-test-secret-0123456789"], secure_cookies=False)
    app = create_app(settings, chat_stream=ChatStream(engine=FakeEngine()), store=store)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        assert (await client.post("/chat_stream", json={"user_input": "hello"})).status_code == 200
        [key] = await store.client.keys(f"{prefix}session:*")
        await store.client.hset(key, "chat_prompt", b'{"__chat_prompt__": "prompts:ChatPrompt", "data": 7}')
        for _ in range(2):
            r = await client.get("/get_prompt")
            assert r.status_code == 200 and r.json()["messages"] == []
        r = await client.post("/chat_stream", json={"user_input": "starting afresh"})
        assert r.status_code == 200 and "event: done" in r.text
        assert (await client.get("/get_prompt")).json()["messages"][0]["content"] == "starting afresh"
