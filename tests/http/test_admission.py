"""Admission through HTTP: refused before any work, in the path's error shape, limits named, fair, released once.

A whole gateway (create_app) over the fake engine on a real uvicorn server,
with a keys file naming users, classes and limits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.sessions.stores import MemoryStore
from tests.fakes import FakeEngine
from tests.gateway_app import Gateway, metric, running_gateway, scrape
from tests.sse_client import eventually

KEYS = """\
# key         user    settings
sk-flood      flood   class=bulk
sk-light      light   class=interactive
sk-other      other   class=interactive
sk-one        one     class=capped concurrent_requests=1
sk-rpm        rpm     class=capped requests_per_minute=1
sk-tpm        tpm     class=capped tokens_per_minute=50
sk-admin      ops     class=admin
sk-split      split   class=bulk user_field=yes
"""
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@asynccontextmanager
async def keyed_gateway(engine: FakeEngine, tmp_path: Path, **settings: Any) -> AsyncIterator[Gateway]:
    keys = tmp_path / "keys"
    keys.write_text(KEYS)
    async with running_gateway(engine, keys_file=keys, **settings) as gw:
        yield gw


@asynccontextmanager
async def client_of(gw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        yield client


def load_of(gw: Gateway) -> tuple[int, int]:
    load = gw.app.state.core.admission.load()
    return load.running, load.waiting


async def hold_the_slot(engine: FakeEngine, client: httpx.AsyncClient, key: str) -> asyncio.Task[httpx.Response]:
    """A generation that holds its slot until `engine.gate` is set."""
    engine.gate = asyncio.Event()
    holder = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT, headers=auth(key)))
    await eventually(lambda: len(engine.running) == 1)
    return holder


class RawRequest:
    """A POST whose head is sent and whose body is not (yet): what a refusal must not wait for."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str, path: str, length: int, headers: dict[str, str]) -> RawRequest:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
        lines += [f"Content-Length: {length}", *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        return cls(reader, writer)

    async def response(self) -> tuple[int, dict[str, str], Any]:
        async with asyncio.timeout(10):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").strip().split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
            body = await self.reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), headers, json.loads(body)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_a_full_queue_is_refused_before_the_body_is_read_or_the_session_loaded(
    fake_engine: FakeEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    real_load = MemoryStore.load

    async def counting_load(self: MemoryStore, session_id: str) -> dict[str, Any] | None:
        loads.append(session_id)
        return await real_load(self, session_id)

    monkeypatch.setattr(MemoryStore, "load", counting_load)
    async with keyed_gateway(fake_engine, tmp_path, concurrency=1, queue_size=0) as gw, client_of(gw) as client:
        first = await client.post("/chat_stream", json={"user_input": "make the session"})
        assert first.status_code == 200
        cookie = f"chatstream_session={client.cookies['chatstream_session']}"
        holder = await hold_the_slot(fake_engine, client, "sk-light")
        prompts = list(fake_engine.prompts)
        loads.clear()
        for path, headers in [
            ("/v1/chat/completions", auth("sk-light")),
            ("/v1/completions", auth("sk-other")),
            ("/chat_stream", {"cookie": cookie}),
        ]:
            request = await RawRequest.open(gw.url, path, 1_000_000, headers)  # the body never comes
            status, response_headers, body = await request.response()
            await request.close()
            assert status == 429, body
            assert int(response_headers["retry-after"]) >= 1
        assert loads == []  # the session's store was never asked
        assert fake_engine.prompts == prompts  # nothing more was generated
        fake_engine.gate.set()  # type: ignore[union-attr]
        assert (await holder).status_code == 200


async def test_refusals_are_spelled_in_each_apis_error_shape(fake_engine: FakeEngine, tmp_path: Path) -> None:
    async with keyed_gateway(fake_engine, tmp_path, concurrency=1, queue_size=0) as gw, client_of(gw) as client:
        holder = await hold_the_slot(fake_engine, client, "sk-light")
        openai_shape = await client.post("/v1/chat/completions", json=CHAT, headers=auth("sk-other"))
        assert openai_shape.status_code == 429
        assert openai_shape.json() == {
            "error": {
                "message": "the server is busy; try again shortly",
                "type": "rate_limit_error",
                "param": None,
                "code": "too_many_requests",
            }
        }
        own_shape = await client.post("/chat_stream", json={"user_input": "hi"})
        assert own_shape.status_code == 429
        assert own_shape.json() == {
            "error": {"type": "too_many_requests", "message": "the server is busy; try again shortly"}
        }
        gw.app.state.core.admission.start_draining()
        draining = await client.post("/chat_stream", json={"user_input": "hi"})
        assert draining.status_code == 503 and draining.json()["error"]["type"] == "engine_unavailable"
        assert int(draining.headers["retry-after"]) >= 1
        fake_engine.gate.set()  # type: ignore[union-attr]
        assert (await holder).status_code == 200


@pytest.mark.parametrize(
    ("key", "limit", "second_body"),
    [
        pytest.param("sk-one", "concurrent_requests", CHAT, id="concurrent_requests"),
        pytest.param("sk-rpm", "requests_per_minute", CHAT, id="requests_per_minute"),
        pytest.param("sk-tpm", "tokens_per_minute", CHAT, id="tokens_per_minute"),
    ],
)
async def test_each_keys_limit_refusal_names_the_limit(
    fake_engine: FakeEngine, tmp_path: Path, key: str, limit: str, second_body: dict[str, Any]
) -> None:
    async with keyed_gateway(fake_engine, tmp_path) as gw, client_of(gw) as client:
        if limit == "concurrent_requests":
            holder = await hold_the_slot(fake_engine, client, key)
        else:  # 26 prompt tokens + 27 answer tokens: over the 50 tokens a minute of sk-tpm
            assert (await client.post("/v1/chat/completions", json=CHAT, headers=auth(key))).status_code == 200
        refused = await client.post("/v1/chat/completions", json=second_body, headers=auth(key))
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == f"{limit}_limit" and error["type"] == "rate_limit_error"
        assert f"{limit} limit" in error["message"]
        assert int(refused.headers["retry-after"]) >= 1
        if limit == "concurrent_requests":
            fake_engine.gate.set()  # type: ignore[union-attr]
            assert (await holder).status_code == 200
        other = await client.post("/v1/chat/completions", json=CHAT, headers=auth("sk-other"))
        assert other.status_code == 200  # one key's limit is its own
        text = await scrape(client)
        reason = f"{limit}_limit"
        assert metric(text, "chatstream:user_class_rejected_requests_total", user_class="capped", reason=reason) == 1
        assert metric(text, "chatstream:rejected_requests_total", route="v1/chat/completions", reason=reason) == 1


async def test_a_light_users_arrival_displaces_the_flooders_newest_waiting_request(
    fake_engine: FakeEngine, tmp_path: Path
) -> None:
    async with keyed_gateway(fake_engine, tmp_path, concurrency=1, queue_size=2) as gw, client_of(gw) as client:
        holder = await hold_the_slot(fake_engine, client, "sk-flood")
        flood = [
            asyncio.create_task(client.post("/v1/chat/completions", json=CHAT, headers=auth("sk-flood")))
            for _ in range(2)
        ]
        await eventually(lambda: load_of(gw) == (1, 2))
        light = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT, headers=auth("sk-light")))
        done, _ = await asyncio.wait(flood, return_when=asyncio.FIRST_COMPLETED, timeout=10)
        (displaced,) = [task.result() for task in done]
        assert displaced.status_code == 429
        assert displaced.json()["error"]["code"] == "displaced"
        assert int(displaced.headers["retry-after"]) >= 1
        assert load_of(gw) == (1, 2)
        fake_engine.gate.set()  # type: ignore[union-attr]
        assert (await light).status_code == 200
        assert (await holder).status_code == 200
        assert sorted(r.status_code for r in await asyncio.gather(*flood)) == [200, 429]
        text = await scrape(client)
        assert metric(text, "chatstream:user_class_rejected_requests_total", user_class="bulk", reason="displaced") == 1
        assert metric(text, "chatstream:user_class_queue_time_seconds_count", user_class="interactive") == 1
        assert metric(text, "chatstream:user_class_service_tokens_total", user_class="bulk", kind="output") == 2 * len(
            fake_engine.answer
        )


# Each way a request can end, on a key with concurrent_requests=1: afterwards that key is
# admitted again at once (its one place came back) and nothing is held.
Ending = Callable[[Gateway, FakeEngine, httpx.AsyncClient], Awaitable[None]]


async def refused_by_the_route(gw: Gateway, engine: FakeEngine, client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", content=b"{not json", headers=auth("sk-one"))
    assert r.status_code == 400


async def unknown_model(gw: Gateway, engine: FakeEngine, client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=auth("sk-one"))
    assert r.status_code == 404


async def priority_not_allowed(gw: Gateway, engine: FakeEngine, client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json={**CHAT, "priority": 1}, headers=auth("sk-one"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "priority_not_allowed"


async def left_before_the_body(gw: Gateway, engine: FakeEngine, client: httpx.AsyncClient) -> None:
    request = await RawRequest.open(gw.url, "/v1/chat/completions", 100, auth("sk-one"))
    await eventually(lambda: load_of(gw) == (0, 1))
    await request.close()


async def left_while_queued(gw: Gateway, engine: FakeEngine, client: httpx.AsyncClient) -> None:
    holder = await hold_the_slot(engine, client, "sk-light")
    queued = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT, headers=auth("sk-one")))
    await eventually(lambda: load_of(gw) == (1, 1))
    queued.cancel()
    await eventually(lambda: load_of(gw) == (1, 0))
    engine.gate.set()  # type: ignore[union-attr]
    await holder


async def timed_out_in_the_queue(gw: Gateway, engine: FakeEngine, client: httpx.AsyncClient) -> None:
    holder = await hold_the_slot(engine, client, "sk-light")
    r = await client.post("/v1/chat/completions", json=CHAT, headers=auth("sk-one"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "queue_timeout"
    engine.gate.set()  # type: ignore[union-attr]
    await holder


async def engine_failed(gw: Gateway, engine: FakeEngine, client: httpx.AsyncClient) -> None:
    engine.fail_after_tokens = 2
    r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth("sk-one"))
    assert '"server_error"' in r.text
    engine.fail_after_tokens = None


async def left_mid_stream(gw: Gateway, engine: FakeEngine, client: httpx.AsyncClient) -> None:
    engine.token_delay = 0.01
    body = {**CHAT, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=auth("sk-one")) as r:
        async for _ in r.aiter_bytes():
            break
    await eventually(lambda: load_of(gw) == (0, 0))
    engine.token_delay = 0.0


async def succeeded(gw: Gateway, engine: FakeEngine, client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=CHAT, headers=auth("sk-one"))
    assert r.status_code == 200


async def chat_stream_refused_by_the_route(gw: Gateway, engine: FakeEngine, client: httpx.AsyncClient) -> None:
    r = await client.post("/chat_stream", json={"user_input": "   "}, headers=auth("sk-one"))
    assert r.status_code == 400


async def chat_stream_session_busy(gw: Gateway, engine: FakeEngine, client: httpx.AsyncClient) -> None:
    assert (await client.post("/chat_stream", json={"user_input": "cookie"})).status_code == 200
    engine.gate = asyncio.Event()
    first = asyncio.create_task(client.post("/chat_stream", json={"user_input": "long"}))
    await eventually(lambda: len(engine.running) == 1)
    busy = await client.post("/chat_stream", json={"user_input": "again"}, headers=auth("sk-one"))
    assert busy.status_code == 409
    engine.gate.set()
    await first


@pytest.mark.parametrize(
    "ending",
    [
        refused_by_the_route,
        unknown_model,
        priority_not_allowed,
        left_before_the_body,
        left_while_queued,
        timed_out_in_the_queue,
        engine_failed,
        left_mid_stream,
        succeeded,
        chat_stream_refused_by_the_route,
        chat_stream_session_busy,
    ],
)
async def test_the_claim_comes_back_exactly_once_however_the_request_ends(
    fake_engine: FakeEngine, tmp_path: Path, ending: Ending
) -> None:
    async with (
        keyed_gateway(fake_engine, tmp_path, concurrency=1, queue_size=1, queue_timeout=0.2) as gw,
        client_of(gw) as client,
    ):
        await ending(gw, fake_engine, client)
        await eventually(lambda: load_of(gw) == (0, 0))
        fake_engine.gate = None
        for _ in range(2):  # the key's one place is back, and a second release took no other
            again = await client.post("/v1/chat/completions", json=CHAT, headers=auth("sk-one"))
            assert again.status_code == 200, again.text
        assert load_of(gw) == (0, 0)
        assert gw.app.state.core.admission.fairness()["users"] == []  # nobody holds a place


async def test_the_admin_key_sees_the_fair_share_state_and_nothing_secret(
    fake_engine: FakeEngine, tmp_path: Path
) -> None:
    async with keyed_gateway(fake_engine, tmp_path) as gw, client_of(gw) as client:
        assert (await client.post("/chat_stream", json={"user_input": "a session"})).status_code == 200
        session_id = client.cookies["chatstream_session"]
        holder = await hold_the_slot(fake_engine, client, "sk-flood")
        turn = asyncio.create_task(client.post("/chat_stream", json={"user_input": "second turn"}))
        await eventually(lambda: len(fake_engine.running) == 2)
        assert (await client.get("/admin/fairness")).status_code == 401
        assert (await client.get("/admin/fairness", headers=auth("sk-light"))).status_code == 403
        r = await client.get("/admin/fairness", headers=auth("sk-admin"))
        assert r.status_code == 200
        state = r.json()
        assert state["running"] == 2 and state["capacity"] == gw.app.state.core.admission.capacity
        users = {u["user"]: u for u in state["users"]}
        assert users["flood"]["class"] == "bulk" and users["flood"]["running"] == 1
        (session,) = [u for name, u in users.items() if name.startswith("session:")]
        assert session["class"] == "session" and session["running"] == 1
        assert "sk-" not in r.text and session_id.split(".")[0] not in r.text
        fake_engine.gate.set()  # type: ignore[union-attr]
        assert (await holder).status_code == 200 and (await turn).status_code == 200


async def test_without_an_admin_key_there_is_no_admin_endpoint(fake_engine: FakeEngine) -> None:
    async with running_gateway(fake_engine, api_key=["sk-plain"]) as gw, client_of(gw) as client:
        assert (await client.get("/admin/fairness", headers=auth("sk-plain"))).status_code == 403
    async with running_gateway(fake_engine) as gw, client_of(gw) as client:
        assert (await client.get("/admin/fairness")).status_code == 404


async def test_the_user_is_the_key_else_the_session_else_the_client(fake_engine: FakeEngine, tmp_path: Path) -> None:
    async with keyed_gateway(fake_engine, tmp_path) as gw, client_of(gw) as client, client_of(gw) as cookieless:
        assert (await client.post("/chat_stream", json={"user_input": "a session"})).status_code == 200
        fake_engine.gate = asyncio.Event()
        requests = [
            client.post("/chat_stream", json={"user_input": "with a cookie"}),
            cookieless.post("/chat_stream", json={"user_input": "with a key"}, headers=auth("sk-light")),
            cookieless.post("/chat_stream", json={"user_input": "no cookie, no key"}),
            client.post("/v1/chat/completions", json={**CHAT, "user": "alice"}, headers=auth("sk-split")),
            client.post("/v1/chat/completions", json={**CHAT, "user": "bob"}, headers=auth("sk-other")),
        ]
        tasks = [asyncio.create_task(r) for r in requests]
        await eventually(lambda: len(fake_engine.running) == len(tasks))
        users = {u["user"]: u["class"] for u in gw.app.state.core.admission.fairness()["users"]}
        sessions = [name for name in users if name.startswith("session:")]
        assert len(sessions) == 1 and users[sessions[0]] == "session"
        assert users["light"] == "interactive"  # a key on /chat_stream is an authenticated user
        assert users["client:127.0.0.1"] == "anonymous"
        assert users["split/alice"] == "bulk"  # `user` names a user under a key with user_field=yes
        assert users["other"] == "interactive" and "other/bob" not in users
        fake_engine.gate.set()
        assert [t.status_code for t in await asyncio.gather(*tasks)] == [200] * len(tasks)


async def test_a_full_queue_tells_a_session_with_a_generation_in_flight_that_it_is_busy(
    fake_engine: FakeEngine, tmp_path: Path
) -> None:
    """The second tab of a conversation whose answer holds the only place hears 409 (as with room), not 429."""
    async with (
        keyed_gateway(fake_engine, tmp_path, concurrency=1, queue_size=0) as gw,
        client_of(gw) as tab,
        client_of(gw) as stranger,
    ):
        assert (await tab.post("/chat_stream", json={"user_input": "first"})).status_code == 200
        fake_engine.gate = asyncio.Event()
        first = asyncio.create_task(tab.post("/chat_stream", json={"user_input": "long answer"}))
        await eventually(lambda: load_of(gw) == (1, 0))
        second_tab = await tab.post("/chat_stream", json={"user_input": "again"})
        assert second_tab.status_code == 409 and second_tab.json()["error"]["type"] == "session_busy"
        other = await stranger.post("/chat_stream", json={"user_input": "me too"})
        assert other.status_code == 429 and other.json()["error"]["type"] == "too_many_requests"
        fake_engine.gate.set()
        assert (await first).status_code == 200
