"""Resource bounds: what one client, or a flood of them, can make the gateway hold."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest

from gateway.sessions import MemoryStore
from tests.fakes import FakeEngine
from tests.live import free_port
from tests.reliability.conftest import Gateway, make_settings, raw_request, rounds, running_gateway
from tests.sessions.test_memory_store import Clock

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def gateway(engine: FakeEngine, clock: Clock) -> AsyncIterator[Gateway]:
    settings = make_settings(max_body_bytes=2048, max_input_chars=100, max_history_messages=6)
    # The store's clock is the test's: sessions expire when the test says, not after a real wait.
    store = MemoryStore(idle_timeout=60, max_sessions=20, clock=clock)
    async with running_gateway(engine, settings, store=store) as gw:
        yield gw


async def test_a_body_over_the_limit_is_refused_with_413_whether_declared_or_streamed(gateway: Gateway) -> None:
    big = b'{"user_input": "' + b"a" * 4000 + b'"}'
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        declared = await client.post("/chat_stream", content=big, headers={"content-type": "application/json"})

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 512):
                yield big[i : i + 512]

        streamed = await client.post("/chat_stream", content=chunks(), headers={"content-type": "application/json"})
        params = await client.post("/set_generation_params", content=b'{"temperature": 0.5' + b" " * 4000 + b"}")
    for r in (declared, streamed, params):
        assert r.status_code == 413
        assert r.json()["error"]["type"] == "body_too_large"
    # a lying Content-Length with a larger body is cut at the limit too
    head = b"POST /chat_stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (1000, b"a" * 1000) for _ in range(5)) + b"0\r\n\r\n"
    assert (await raw_request(gateway.url, head, body)).status == 413


async def test_user_input_longer_than_the_limit_is_a_400_and_the_limit_itself_is_served(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        at_limit = await client.post("/chat_stream", json={"user_input": "é" * 100})
        over = await client.post("/chat_stream", json={"user_input": "é" * 101})
    assert at_limit.status_code == 200 and "event: done" in at_limit.text
    assert over.status_code == 400
    assert over.json()["error"]["type"] == "invalid_request"
    assert "é" not in over.text  # the input is not echoed back


@pytest.mark.parametrize("size", [pytest.param(s, id=f"{s}B") for s in (8_192, 65_536, 1_048_576)])
async def test_a_huge_header_neither_crashes_nor_blocks_the_server(gateway: Gateway, size: int) -> None:
    # uvicorn's httptools parser has no header size limit of its own (h11 has 16 KiB):
    # the gateway serves such a request; the proxy in front (nginx: 8 KiB) is the limit.
    head = b"GET /get_load HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Padding: " + b"a" * size + b"\r\n"
    r = await raw_request(gateway.url, head)
    assert r.status in (200, 400, 413, 431)
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert (await client.get("/get_load")).status_code == 200


async def test_the_session_count_stays_at_max_sessions_and_the_oldest_go_first(engine: FakeEngine) -> None:
    cookies: list[httpx.Cookies] = []
    async with running_gateway(engine, make_settings(max_sessions=20)) as gateway:
        for i in range(60):
            async with httpx.AsyncClient(base_url=gateway.url) as client:
                r = await client.post("/chat_stream", json={"user_input": f"user {i}"})
                assert r.status_code == 200
                cookies.append(client.cookies)
        await gateway.wait_idle(engine.num_unfinished)
        assert len(gateway.store) == 20
        async with httpx.AsyncClient(base_url=gateway.url, cookies=cookies[0]) as oldest:
            assert (await oldest.get("/get_prompt")).json()["messages"] == []
        async with httpx.AsyncClient(base_url=gateway.url, cookies=cookies[-1]) as newest:
            assert (await newest.get("/get_prompt")).json()["messages"][0]["content"] == "user 59"


async def test_an_idle_session_expires_after_the_idle_timeout(gateway: Gateway, clock: Clock) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert (await client.post("/chat_stream", json={"user_input": "remember me"})).status_code == 200
        clock.now += 59
        assert len((await client.get("/get_prompt")).json()["messages"]) == 2  # used: its idle timer restarts
        clock.now += 61
        r = await client.get("/get_prompt")
    assert r.json()["messages"] == []
    assert "set-cookie" not in r.headers  # a read starts no session: the next turn gets a fresh id
    assert len(gateway.store) == 0


async def test_reads_without_a_cookie_store_nothing_and_evict_no_conversation(gateway: Gateway) -> None:
    # Regression (issue 13): every cookieless GET /get_prompt stored a new empty session, so
    # max_sessions of them (20 here, 10,000 by default) evicted every real conversation.
    async with httpx.AsyncClient(base_url=gateway.url) as user:
        assert (await user.post("/chat_stream", json={"user_input": "keep me"})).status_code == 200
        async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
            for _ in range(3 * 20):
                for path in ("/get_prompt", "/get_generation_params"):
                    r = await anonymous.get(path)
                    assert r.status_code == 200 and "set-cookie" not in r.headers
                    anonymous.cookies.clear()
        assert len(gateway.store) == 1
        assert (await user.get("/get_prompt")).json()["messages"][0]["content"] == "keep me"


async def test_a_conversation_keeps_at_most_max_history_messages_and_always_the_newest(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        for i in range(10):
            r = await client.post("/chat_stream", json={"user_input": f"question {i}"})
            assert r.status_code == 200 and "event: done" in r.text
        messages = (await client.get("/get_prompt")).json()["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["question 7", "question 8", "question 9"]
    assert messages[0]["role"] == "user" and messages[-1]["role"] == "assistant"


async def test_clearing_conversations_leaves_no_session_lock_behind(gateway: Gateway, engine: FakeEngine) -> None:
    # Regression: clear_context renews the session id while holding the lock, and the
    # unlock went to the new id, so every clear left a lock on the old one for ever.
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        for _ in range(50):
            assert (await client.post("/chat_stream", json={"user_input": "hi"})).status_code == 200
            assert (await client.post("/clear_context")).status_code == 200
        await gateway.wait_idle(engine.num_unfinished)  # includes: no session lock held
        assert (await client.post("/chat_stream", json={"user_input": "still mine"})).status_code == 200


# --- a flood of new sessions, measured in a separate process --------------------------------

READ = b"GET /get_prompt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
_PARAMS = b'{"temperature": 0.5}'
WRITE = (
    b"POST /set_generation_params HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_PARAMS), _PARAMS)
)


async def _pipelined_client(port: int, n: int, request: bytes, batch: int = 100) -> int:
    """Send `n` cookie-less `request`s on one keep-alive connection; count the Set-Cookies they get."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    issued = done = 0
    buf = b""
    try:
        while done < n:
            k = min(batch, n - done)
            writer.write(request * k)
            for _ in range(k):
                while b"\r\n\r\n" not in buf:
                    chunk = await reader.read(65536)
                    assert chunk, "the server closed the connection"
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                    issued += name.lower() == b"set-cookie"
                while len(buf) < length:
                    buf += await reader.read(65536)
                buf = buf[length:]
            done += k
    finally:
        writer.close()
    return issued


async def _flood(port: int, n: int, request: bytes = WRITE, connections: int = 4) -> int:
    counts = await asyncio.gather(*(_pipelined_client(port, n // connections, request) for _ in range(connections)))
    return sum(counts)


async def test_a_flood_of_new_sessions_does_not_grow_memory_past_max_sessions() -> None:
    max_sessions = 1000
    n = rounds(30_000, 100_000)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.flood_server", str(port), str(max_sessions)], cwd=ROOT
    )
    try:
        async with asyncio.timeout(60):
            while True:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    assert server.poll() is None, "the gateway process exited"
                    await asyncio.sleep(0.1)
        process = psutil.Process(server.pid)
        async with asyncio.timeout(900):
            assert await _flood(port, 2 * max_sessions, READ) == 0  # reads create no session at all
            # The store is full from here on, and the process's one-off growth (allocator arenas,
            # caches: ~7 MiB over the first 30,000 requests, then a plateau) is behind us.
            await _flood(port, n)
            before = process.memory_info().rss
            started = time.monotonic()
            issued = await _flood(port, n)
            after = process.memory_info().rss
        growth = (after - before) / 2**20
        print(
            f"\nsession flood: {issued} new sessions in {time.monotonic() - started:.0f} s, "
            f"max_sessions={max_sessions}; "
            f"RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB (growth {growth:.2f} MiB)"
        )
        assert issued == n
        # Each stored session costs ~0.7 KiB here: keeping all of them would add ~20 MiB
        # (30,000) to ~70 MiB (100,000); a bounded store, once warm, adds a fraction of a MiB.
        assert growth < 4
    finally:
        server.terminate()
        server.wait(30)


async def test_a_conversation_forgets_its_oldest_turns_to_stay_within_max_session_bytes(engine: FakeEngine) -> None:
    # Regression (issue 13): a session was bounded by its count of messages only (up to ~16 MB each).
    store = MemoryStore(max_session_bytes=4096)
    async with (
        running_gateway(engine, make_settings(max_input_chars=1000), store=store) as gateway,
        httpx.AsyncClient(base_url=gateway.url) as client,
    ):
        for i in range(20):
            r = await client.post("/chat_stream", json={"user_input": f"question {i} " + "é" * 300})
            assert r.status_code == 200 and "event: done" in r.text
            assert store.stored_bytes <= 4096
        messages = (await client.get("/get_prompt")).json()["messages"]
    assert 2 <= len(messages) < 20
    assert messages[0]["role"] == "user"
    assert messages[-2]["content"].startswith("question 19 ") and messages[-1]["content"] == engine.answer
