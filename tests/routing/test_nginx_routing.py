"""deploy/nginx/chatstream.conf in front of two replicas: affinity from the first turn, spill-over, balance by load.

The failover when a replica dies: test_failover.py (both routers).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from tests.gateway_app import replica_pin
from tests.routing.cluster import SHORT_ANSWERS, Cluster, busy, chat_turn, logged_after, nginx_log, refusals

pytestmark = pytest.mark.engine


@asynccontextmanager
async def browser(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    """A client of nginx that keeps cookies, as a browser does."""
    async with httpx.AsyncClient(base_url=cluster.nginx.url, timeout=120) as client:
        yield client


async def test_every_turn_of_a_conversation_lands_on_one_replica_including_the_first(cluster: Cluster) -> None:
    mark = len(nginx_log(cluster.nginx))
    async with asyncio.timeout(300):
        for conversation in range(3):
            async with browser(cluster) as client:
                first = await chat_turn(client, f"conversation {conversation} begins")
                served = first.headers["x-chatstream-replica"]
                assert replica_pin(first) == served  # the first turn already pins
                await client.post("/set_generation_params", json=SHORT_ANSWERS)
                for turn in range(3):
                    r = await chat_turn(client, f"turn {turn}")
                    assert r.headers["x-chatstream-replica"] == served
                    assert replica_pin(r) is None  # already pinned there
    turns = await logged_after(cluster.nginx, mark, 12, is_turn)
    # Each first turn was unpinned; every later one was pinned, and went straight there.
    assert [bool(e["pin"]) for e in turns] == [False, True, True, True] * 3
    assert all(e["upstream_status"] == "200" for e in turns)


async def test_an_api_client_that_echoes_the_replica_header_stays_on_one_replica(cluster: Cluster) -> None:
    body = {"model": str(cluster.model), "max_tokens": 4}
    messages: list[dict[str, str]] = []
    replicas: list[str] = []
    async with asyncio.timeout(120), httpx.AsyncClient(base_url=cluster.nginx.url, timeout=60) as client:
        for turn in range(3):
            messages.append({"role": "user", "content": f"question {turn}"})
            headers = {"x-chatstream-replica": replicas[-1]} if replicas else {}
            client.cookies.clear()  # an API client without a cookie jar
            r = await client.post("/v1/chat/completions", json={**body, "messages": messages}, headers=headers)
            assert r.status_code == 200, r.text
            replicas.append(r.headers["x-chatstream-replica"])
            messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
    assert len(set(replicas)) == 1


@pytest.mark.parametrize(
    ("name", "refused_with"),
    [pytest.param("gateway-1", "429", id="queue-full-429"), pytest.param("gateway-2", "503", id="queue-full-503")],
)
async def test_a_turn_whose_replica_is_busy_is_served_by_the_other_with_the_full_history(
    cluster: Cluster, name: str, refused_with: str
) -> None:
    busy_replica = cluster.replica(name)
    mark = len(nginx_log(cluster.nginx))
    async with asyncio.timeout(300), browser(cluster) as client:
        await client.post("/set_generation_params", json=SHORT_ANSWERS, headers={"x-chatstream-replica": name})
        first = await chat_turn(client, "before the rush")
        assert first.headers["x-chatstream-replica"] == name
        before = await refusals(busy_replica)
        async with busy(busy_replica):
            second = await chat_turn(client, "during the rush")
        other = second.headers["x-chatstream-replica"]
        assert other != name
        assert replica_pin(second) == other  # the conversation now lives where its whole prefix is
        assert await refusals(busy_replica) == before + 1
        third = await chat_turn(client, "after the rush")
        assert third.headers["x-chatstream-replica"] == other
        prompt = (await client.get("/get_prompt")).json()
    assert [m["content"] for m in prompt["messages"] if m["role"] == "user"] == [
        "before the rush",
        "during the rush",
        "after the rush",
    ]
    spilled = await logged_after(cluster.nginx, mark, 1, lambda e: e["pin"] == name and e["replica"] == other)
    assert [e["upstream_status"] for e in spilled] == [f"{refused_with}, 200"]


async def test_new_conversations_go_to_the_replica_with_fewer_streams(cluster: Cluster) -> None:
    """Both engines paused: the first new conversation holds one replica, so the second takes the other at once."""
    clients = [httpx.AsyncClient(base_url=cluster.nginx.url, timeout=120) for _ in range(2)]
    mark = len(nginx_log(cluster.nginx))
    try:
        async with asyncio.timeout(120):
            with cluster.replicas[0].engine_paused(), cluster.replicas[1].engine_paused():
                first = asyncio.create_task(clients[0].post("/chat_stream", json={"user_input": "one"}))
                while sum([await load(r.url) for r in cluster.replicas]) < 1:
                    await asyncio.sleep(0.05)
                second = asyncio.create_task(clients[1].post("/chat_stream", json={"user_input": "two"}))
                while sum([await load(r.url) for r in cluster.replicas]) < 2:
                    await asyncio.sleep(0.05)
            one, two = await first, await second
    finally:
        for client in clients:
            await client.aclose()
    assert one.status_code == two.status_code == 200
    assert {one.headers["x-chatstream-replica"], two.headers["x-chatstream-replica"]} == {"gateway-1", "gateway-2"}
    # Neither was refused first: the second went to the idle replica, not by chance after a 429/503.
    assert [e["upstream_status"] for e in await logged_after(cluster.nginx, mark, 2, is_turn)] == ["200", "200"]


def is_turn(entry: dict[str, str]) -> bool:
    return entry["request"].startswith("POST /chat_stream")


async def load(url: str) -> int:
    """Generations a replica holds."""
    async with httpx.AsyncClient(timeout=10) as client:
        return int((await client.get(f"{url}/get_load")).json()["in_flight"])
