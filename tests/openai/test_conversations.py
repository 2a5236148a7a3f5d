"""The Conversations API over the fake engine: items in order, responses appending to them, ownership.

Every conversation object and item list is checked against OpenAI's published schemas.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

from gateway.sessions import RedisStore
from tests.fakes import FakeEngine
from tests.gateway_app import running_gateway
from tests.openai.test_responses import ANSWER, error_of, respond
from tests.openai_spec import validate
from tests.servers import RedisServer


async def items_of(client: httpx.AsyncClient, conversation_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/conversations/{conversation_id}/items?order=asc&limit=100")
    assert r.status_code == 200, r.text
    listed: dict[str, Any] = r.json()
    validate("ConversationItemList", listed)
    data: list[dict[str, Any]] = listed["data"]
    return data


def texts(items: list[dict[str, Any]]) -> list[str]:
    return [item["content"][0]["text"] for item in items]


async def test_a_conversation_is_created_answered_in_and_listed_in_order(
    alice: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    r = await alice.post(
        "/v1/conversations", json={"items": [{"role": "system", "content": "Rules."}], "metadata": {"a": "1"}}
    )
    conversation = r.json()
    validate("ConversationResource", conversation)
    assert conversation["id"].startswith("conv_") and conversation["metadata"] == {"a": "1"}
    first = await respond(alice, input="one", conversation=conversation["id"])
    assert first["conversation"] == {"id": conversation["id"]}
    await respond(alice, input="two", conversation={"id": conversation["id"]})
    assert fake_engine.prompt_text() == (
        f"<system>Rules.</system><user>one</user><assistant>{ANSWER}</assistant><user>two</user><assistant>"
    )
    assert texts(await items_of(alice, conversation["id"])) == ["Rules.", "one", ANSWER, "two", ANSWER]


async def test_items_are_added_read_and_deleted_one_by_one(alice: httpx.AsyncClient) -> None:
    conversation = (await alice.post("/v1/conversations", json={})).json()
    path = f"/v1/conversations/{conversation['id']}"
    added = (await alice.post(f"{path}/items", json={"items": [{"role": "user", "content": "x"}]})).json()
    validate("ConversationItemList", added)
    item = added["data"][0]
    got = (await alice.get(f"{path}/items/{item['id']}")).json()
    validate("ConversationItem", got)
    assert got == item
    after_delete = (await alice.delete(f"{path}/items/{item['id']}")).json()
    validate("ConversationResource", after_delete)
    assert await items_of(alice, conversation["id"]) == []
    error_of(await alice.get(f"{path}/items/{item['id']}"), 404)


async def test_metadata_is_replaced_and_a_deleted_conversation_is_gone(alice: httpx.AsyncClient) -> None:
    conversation = (await alice.post("/v1/conversations", json={"metadata": {"a": "1"}})).json()
    path = f"/v1/conversations/{conversation['id']}"
    updated = (await alice.post(path, json={"metadata": {"b": "2"}})).json()
    validate("ConversationResource", updated)
    assert updated["metadata"] == {"b": "2"} and (await alice.get(path)).json() == updated
    deleted = (await alice.delete(path)).json()
    validate("DeletedConversationResource", deleted)
    assert deleted == {"id": conversation["id"], "object": "conversation.deleted", "deleted": True}
    error_of(await alice.get(path), 404)
    error_of(await alice.post("/v1/responses", json={"input": "x", "conversation": conversation["id"]}), 404)


async def test_another_keys_conversation_is_404_exactly_like_an_unknown_one(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    conversation = (await alice.post("/v1/conversations", json={})).json()
    cid, guessed = conversation["id"], "conv_" + "B" * 32
    for method, suffix, body in [
        ("GET", "", None),
        ("POST", "", {"metadata": {}}),
        ("DELETE", "", None),
        ("GET", "/items", None),
        ("POST", "/items", {"items": [{"role": "user", "content": "x"}]}),
    ]:
        theirs = await bob.request(method, f"/v1/conversations/{cid}{suffix}", json=body)
        nobodys = await bob.request(method, f"/v1/conversations/{guessed}{suffix}", json=body)
        assert error_of(theirs, 404)["message"].replace(cid, guessed) == error_of(nobodys, 404)["message"]
    assert await items_of(alice, cid) == []  # bob added nothing


async def test_two_responses_on_one_conversation_append_whole_turns_in_order(
    alice: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    conversation = (await alice.post("/v1/conversations", json={})).json()
    fake_engine.token_delay = 0.001
    await asyncio.gather(*(respond(alice, input=f"q{i}", conversation=conversation["id"]) for i in range(4)))
    assert_whole_turns(texts(await items_of(alice, conversation["id"])), 4)


def assert_whole_turns(items: list[str], turns: int) -> None:
    assert len(items) == 2 * turns
    # Each response's input and output stay together, whatever order the responses ended in.
    assert all(items[i].startswith("q") and items[i + 1] == ANSWER for i in range(0, 2 * turns, 2))
    assert sorted(items[0::2]) == [f"q{i}" for i in range(turns)]


async def test_concurrent_appends_through_two_gateways_on_redis_never_interleave(
    fake_engine: FakeEngine, redis_server: RedisServer, tmp_path: Path
) -> None:
    # On Redis every read and write yields to the loop: without the store's lock, two appends that
    # read the same items would each write their own list, and one response's turn would be lost.
    keys = tmp_path / "keys"
    keys.write_text("key-alice alice\n")
    headers = {"Authorization": "Bearer key-alice"}
    async with AsyncExitStack() as stack:
        urls = []
        for _ in range(2):
            store = RedisStore.from_url(redis_server.url, prefix=f"conv-test-{tmp_path.name}:")
            stack.push_async_callback(store.close)
            urls.append(
                (await stack.enter_async_context(running_gateway(fake_engine, store=store, keys_file=keys))).url
            )
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30, headers=headers))
            for url in urls
        ]
        conversation = (await clients[0].post("/v1/conversations", json={})).json()
        fake_engine.token_delay = 0.001
        await asyncio.gather(
            *(respond(clients[i % 2], input=f"q{i}", conversation=conversation["id"]) for i in range(6))
        )
        assert_whole_turns(texts(await items_of(clients[1], conversation["id"])), 6)


async def test_bad_conversation_bodies_are_400s(alice: httpx.AsyncClient) -> None:
    error = error_of(await alice.post("/v1/conversations", json={"items": [{"type": "web_search_call"}]}), 400)
    assert "'web_search_call'" in error["message"]
    error = error_of(await alice.post("/v1/conversations", json={"metadata": {"k": "v" * 600}}), 400)
    assert "metadata" in error["message"]
