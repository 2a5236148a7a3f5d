"""`/chat_stream` sessions in SQL (`--session-store sqlite:///...|postgresql://...`), across replicas and restarts."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from gateway import ChatStream, Settings, create_app
from gateway.sessions import SQLStore
from tests.fakes import FakeEngine
from tests.live import serve
from tests.sessions.support import fresh_postgres_database

SECRET = "sql-sessions-test-secret-0123456789"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sessions.db"
    return await fresh_postgres_database(request.getfixturevalue("postgres"))


@asynccontextmanager
async def replicas(store_url: str, count: int = 2) -> AsyncIterator[list[str]]:
    """`count` whole gateways (lifespans on: each opens and closes its own store) sharing `store_url`."""
    settings = Settings(session_store=store_url, session_secret=[SECRET], secure_cookies=False)
    async with AsyncExitStack() as stack:
        urls = []
        for _ in range(count):
            app = create_app(settings, chat_stream=ChatStream(engine=FakeEngine(answer="ok")))
            urls.append(await stack.enter_async_context(serve(app)))
        yield urls


async def messages(client: httpx.AsyncClient) -> list[str]:
    r = await client.get("/get_prompt")
    assert r.status_code == 200
    return [m["content"] for m in r.json()["messages"]]


async def test_a_conversation_moves_between_replicas_and_survives_their_restart(store_url: str) -> None:
    async with replicas(store_url) as (url_a, url_b), httpx.AsyncClient(base_url=url_a, timeout=30) as a:
        r = await a.post("/chat_stream", json={"user_input": "first on A"})
        assert r.status_code == 200 and "event: done" in r.text
        cookies = a.cookies
        async with httpx.AsyncClient(base_url=url_b, cookies=cookies, timeout=30) as b:
            r = await b.post("/chat_stream", json={"user_input": "second on B"})
            assert r.status_code == 200 and "event: done" in r.text
            assert await messages(b) == ["first on A", "ok", "second on B", "ok"]
    async with replicas(store_url, 1) as [url], httpx.AsyncClient(base_url=url, cookies=cookies, timeout=30) as c:
        assert await messages(c) == ["first on A", "ok", "second on B", "ok"]


async def test_a_database_that_cannot_be_opened_fails_the_start(tmp_path: Path) -> None:
    from gateway.app import check_store, make_store

    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    store = make_store(Settings(session_store=f"sqlite:///{blocked}/sessions.db"))
    with pytest.raises(RuntimeError, match="check --session-store"):
        await check_store(store)
    await store.close()


HOLDER = """
import asyncio, sys
from gateway.sessions import SQLStore

async def main() -> None:
    store = SQLStore.from_url(sys.argv[1], lock_timeout=float(sys.argv[2]))
    assert await store.try_lock("shared", "other-process")
    print("locked", flush=True)
    await asyncio.Event().wait()  # holds (and renews) the lock until killed

asyncio.run(main())
"""


async def test_a_lock_held_by_another_process_holds_until_that_process_dies_then_lapses(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sessions.db"
    store = SQLStore.from_url(url)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, url, "3", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        async with asyncio.timeout(60):
            assert await holder.stdout.readline() == b"locked\n"
        deadline = asyncio.get_running_loop().time() + 4  # past its lock timeout: the holder renews it
        while asyncio.get_running_loop().time() < deadline:
            assert not await store.try_lock("shared", "this-process")
            await asyncio.sleep(0.1)
    finally:
        holder.kill()
        await holder.wait()
    async with asyncio.timeout(15):  # a dead holder's lock lapses after lock_timeout
        while not await store.try_lock("shared", "this-process"):
            await asyncio.sleep(0.05)
    await store.unlock("shared", "this-process")
    await store.close()


async def test_stores_opening_one_new_sqlite_file_at_once_all_open(tmp_path: Path) -> None:
    # Regression (an intermittent failure of test_store_contract): SQLite refuses at once, without
    # its busy timeout, a connection turning a new file to WAL while others open it ("database is
    # locked"); about one round in ten of four failed.
    for round_ in range(40):
        url = f"sqlite:///{tmp_path}/round-{round_}.db"
        stores = [SQLStore.from_url(url) for _ in range(4)]
        try:
            await asyncio.gather(*(store.save(f"session-{i}", {"k": i}, ()) for i, store in enumerate(stores)))
            assert [await store.load(f"session-{i}") for i, store in enumerate(stores)] == [{"k": i} for i in range(4)]
        finally:
            for store in stores:
                await store.close()
