"""The persistent conversation handler on SQLite and a real PostgreSQL server (gateway.conversations.persistent)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request

from gateway import ChatStream, Settings, create_app
from gateway.conversations.db import open_db
from gateway.conversations.persistent import PersistentConversations
from gateway.core.errors import SessionBusy
from gateway.core.vllm_engine import VLLMEngine
from gateway.http.auth import UserKeys
from prompts import ChatPrompt
from tests.fakes import FakeEngine
from tests.live import serve
from tests.servers import Postgres
from tests.sse_client import iter_events, parse_sse

pytestmark = pytest.mark.engine


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/conversations.db"
    server: Postgres = request.getfixturevalue("postgres")
    return server.url


@dataclass
class Users:
    file: Path
    alice: dict[str, str]  # request headers carrying each user's key
    bob: dict[str, str]


@pytest.fixture
def users(tmp_path: Path) -> Users:
    # Fresh user ids per test: the PostgreSQL database is shared by the module.
    suffix = uuid.uuid4().hex[:8]
    path = tmp_path / "users.txt"
    path.write_text(f"# key user\nkey-alice-{suffix} alice-{suffix}\nkey-bob-{suffix} bob-{suffix}\n")
    return Users(
        path,
        {"authorization": f"Bearer key-alice-{suffix}"},
        {"authorization": f"Bearer key-bob-{suffix}"},
    )


def make_handler(db_url: str, users: Users) -> PersistentConversations:
    return PersistentConversations(UserKeys.from_file(users.file), open_db(db_url), ChatPrompt)


@asynccontextmanager
async def gateway(engine: VLLMEngine, db_url: str, users: Users) -> AsyncIterator[httpx.AsyncClient]:
    """One gateway process's worth of app over the database; leaving the block is a shutdown."""
    handler = make_handler(db_url, users)
    # Greedy and 12 tokens: a few random tokens from the byte-level tiny model can all be
    # partial UTF-8 (no text at all), and a turn with no text is rightly not recorded.
    chat = ChatStream(engine=engine, max_new_tokens=12, temperature=0.0, ignore_eos=True, conversations=handler)
    app = create_app(Settings(secure_cookies=False), chat_stream=chat)
    try:
        async with serve(app, lifespan="off") as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
            yield client
    finally:
        await handler.close()


async def turn(client: httpx.AsyncClient, headers: dict[str, str], text: str, cid: str | None = None) -> httpx.Response:
    if cid is not None:
        headers = {**headers, "x-conversation-id": cid}
    return await client.post("/chat_stream", json={"user_input": text}, headers=headers)


def answer_of(response: httpx.Response) -> str:
    events = parse_sse(response.text)
    assert events[-1][0] == "done", response.text
    return "".join(data["text"] for kind, data in events if kind == "delta")


async def test_conversations_survive_a_gateway_restart(real_engine: VLLMEngine, db_url: str, users: Users) -> None:
    # Each turn is sent as soon as the previous response is complete: this also pins the bug where the
    # lock was released after the response ended, so a quick next turn could get a spurious 409.
    async with asyncio.timeout(120):
        async with gateway(real_engine, db_url, users) as client:
            first = await turn(client, users.alice, "first question")
            assert first.status_code == 200
            cid = first.headers["x-conversation-id"]
            second = await turn(client, users.alice, "second question", cid)
            assert second.status_code == 200, second.text
            assert second.headers["x-conversation-id"] == cid
        async with gateway(real_engine, db_url, users) as client:
            listed = (await client.get("/conversations", headers=users.alice)).json()["conversations"]
            third = await turn(client, users.alice, "after the restart", cid)
            stored = (await client.get(f"/conversations/{cid}", headers=users.alice)).json()
    assert [c["id"] for c in listed] == [cid]
    assert listed[0]["title"] == "first question" and listed[0]["turns"] == 4
    assert stored["messages"] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": answer_of(first)},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": answer_of(second)},
        {"role": "user", "content": "after the restart"},
        {"role": "assistant", "content": answer_of(third)},
    ]


async def test_another_users_conversation_does_not_exist_for_them(
    real_engine: VLLMEngine, db_url: str, users: Users
) -> None:
    async with asyncio.timeout(120), gateway(real_engine, db_url, users) as client:
        created = await turn(client, users.alice, "alice's secret")
        cid = created.headers["x-conversation-id"]
        unknown = uuid.uuid4().hex
        bob_list = await client.get("/conversations", headers=users.bob)
        bob_read = await client.get(f"/conversations/{cid}", headers=users.bob)
        bob_turn = await turn(client, users.bob, "let me in", cid)
        bob_delete = await client.delete(f"/conversations/{cid}", headers=users.bob)
        alice_unknown = await client.get(f"/conversations/{unknown}", headers=users.alice)
        alice_read = await client.get(f"/conversations/{cid}", headers=users.alice)
    assert bob_list.json() == {"conversations": []}
    # The same answer as for an id that exists nowhere: a 404 reveals nothing.
    for refused in (bob_read, bob_turn, bob_delete):
        assert refused.status_code == 404
        assert refused.json() == alice_unknown.json()
    assert alice_unknown.status_code == 404
    assert [m["content"] for m in alice_read.json()["messages"]] == ["alice's secret", answer_of(created)]


async def test_deleting_a_conversation_forgets_it(real_engine: VLLMEngine, db_url: str, users: Users) -> None:
    async with asyncio.timeout(120), gateway(real_engine, db_url, users) as client:
        cid = (await turn(client, users.alice, "to be deleted")).headers["x-conversation-id"]
        deleted = await client.delete(f"/conversations/{cid}", headers=users.alice)
        listed = await client.get("/conversations", headers=users.alice)
        again = await turn(client, users.alice, "still there?", cid)
    assert deleted.json() == {"deleted": True}
    assert listed.json() == {"conversations": []}
    assert again.status_code == 404


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-key"),
        pytest.param("Bearer not-a-key", id="unknown-key"),
        pytest.param("Basic a2V5Og==", id="wrong-scheme"),
    ],
)
async def test_requests_without_a_valid_key_are_refused(
    real_engine: VLLMEngine, tmp_path: Path, users: Users, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    async with asyncio.timeout(60), gateway(real_engine, f"sqlite:///{tmp_path}/c.db", users) as client:
        responses = [
            await client.post("/chat_stream", json={"user_input": "hi"}, headers=headers),
            await client.get("/conversations", headers=headers),
        ]
    for r in responses:
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "invalid_api_key"


def request_for(headers: dict[str, str]) -> Request:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/chat_stream", "headers": raw, "state": {}})


async def test_the_generation_lock_holds_across_replicas(db_url: str, users: Users) -> None:
    # Two handlers over one database are two replicas.
    one, two = make_handler(db_url, users), make_handler(db_url, users)
    try:
        async with asyncio.timeout(30):
            request = request_for(users.alice)
            first = await one.open(request, lock=True)
            cid = request.scope["state"]["conversation_id"]
            first.prompt.add_user("running")
            await first.save()
            with pytest.raises(SessionBusy):
                await two.open(request_for({**users.alice, "x-conversation-id": cid}), lock=True)
            # Reading does not need the lock; deleting does.
            read = await two.open(request_for({**users.alice, "x-conversation-id": cid}), lock=False)
            assert read.prompt.messages == [{"role": "user", "content": "running"}]
            assert await two.db.delete(read.user, cid) == "busy"
            await first.close()
            second = await two.open(request_for({**users.alice, "x-conversation-id": cid}), lock=True)
            await second.close()
    finally:
        await one.close()
        await two.close()


def test_the_serve_flags_select_the_persistent_handler(tmp_path: Path, users: Users) -> None:
    from gateway.app import make_chat_stream
    from tests.fakes import FakeEngine

    settings = Settings(conversation_db=f"sqlite:///{tmp_path}/c.db", keys_file=users.file, system_prompt="be brief")
    handler = make_chat_stream(settings, FakeEngine()).conversations
    assert isinstance(handler, PersistentConversations)
    assert handler.new_prompt().system == "be brief"
    with pytest.raises(ValueError, match="--keys-file"):
        make_chat_stream(Settings(conversation_db=f"sqlite:///{tmp_path}/c.db"), FakeEngine())


@asynccontextmanager
async def fake_gateway(engine: FakeEngine, db_url: str, users: Users) -> AsyncIterator[httpx.AsyncClient]:
    """The handler over the fake engine (the app's lifespan closes the handler)."""
    chat = ChatStream(engine=engine, max_new_tokens=50, conversations=make_handler(db_url, users))
    app = create_app(Settings(secure_cookies=False), chat_stream=chat)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        yield client


async def test_settings_saved_during_an_answer_survive_its_end(db_url: str, users: Users) -> None:
    # Regression (issue 13): the end of a turn rewrote the whole row, parameters included, from the
    # copy taken when the turn began, undoing a Settings change made meanwhile.
    engine = FakeEngine(answer="an answer")
    engine.gate, engine.gate_after = asyncio.Event(), 1
    async with fake_gateway(engine, db_url, users) as client:
        request = client.build_request("POST", "/chat_stream", json={"user_input": "question"}, headers=users.alice)
        answer = await client.send(request, stream=True)
        try:
            cid = answer.headers["x-conversation-id"]
            events = iter_events(answer)
            assert (await anext(events)).event == "delta"
            saved = await client.post(
                "/set_generation_params", json={"temperature": 0.2}, headers={**users.alice, "x-conversation-id": cid}
            )
            assert saved.status_code == 200
            engine.gate.set()
            assert [e.event async for e in events][-1] == "done"
        finally:
            await answer.aclose()
        stored = (await client.get(f"/conversations/{cid}", headers=users.alice)).json()
    assert stored["params"] == {"temperature": 0.2}
    assert [m["content"] for m in stored["messages"]] == ["question", "an answer"]


@pytest.mark.parametrize("refusal", ["too_long", "engine_down"])
async def test_a_refused_first_turn_leaves_no_conversation_behind(db_url: str, users: Users, refusal: str) -> None:
    # Regression (issue 13): a first turn creates its row at once; refused, it left an empty conversation.
    engine = FakeEngine(answer="ok", max_model_len=100)
    async with fake_gateway(engine, db_url, users) as client:
        if refusal == "engine_down":
            engine.dead = True
        text = "x" * 500 if refusal == "too_long" else "hello"
        refused = await client.post("/chat_stream", json={"user_input": text}, headers=users.alice)
        assert refused.status_code in (400, 503)
        assert "x-conversation-id" not in refused.headers
        assert (await client.get("/conversations", headers=users.alice)).json() == {"conversations": []}
        engine.dead = False
        answered = await client.post("/chat_stream", json={"user_input": "hello"}, headers=users.alice)
        assert answered.status_code == 200 and "x-conversation-id" in answered.headers
        assert len((await client.get("/conversations", headers=users.alice)).json()["conversations"]) == 1
