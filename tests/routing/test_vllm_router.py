"""vllm-router 0.1.17 (deploy/vllm-router/run-router.sh) in front of two replicas, on the OpenAI route.

Conversations are named by X-Session-ID; the client sends the whole history
each turn (the API is stateless), so "with its history" means the replica
that takes over is given, and counts, every earlier turn. The failover when a
replica dies: test_failover.py (both routers).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid

import httpx
import pytest

from tests.routing.cluster import Cluster, busy, refusals

pytestmark = pytest.mark.engine


class Conversation:
    """One OpenAI-API conversation through the router: its session id and messages so far."""

    def __init__(self, client: httpx.AsyncClient, model: str) -> None:
        self.client = client
        self.model = model
        self.session = uuid.uuid4().hex
        self.messages: list[dict[str, str]] = []
        self.replicas: list[str] = []
        self.prompt_tokens: list[int] = []

    async def turn(self, text: str) -> httpx.Response:
        self.messages.append({"role": "user", "content": text})
        r = await self.client.post("/v1/chat/completions", json=self.body(), headers={"x-session-id": self.session})
        assert r.status_code == 200, r.text
        self.messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
        self.replicas.append(r.headers["x-chatstream-replica"])
        self.prompt_tokens.append(r.json()["usage"]["prompt_tokens"])
        return r

    def body(self) -> dict[str, object]:
        return {"model": self.model, "messages": self.messages, "max_tokens": 4}


async def test_every_turn_with_a_session_id_lands_on_one_replica_including_the_first(cluster: Cluster) -> None:
    await cluster.ready()
    async with asyncio.timeout(120), httpx.AsyncClient(base_url=cluster.router.url, timeout=60) as client:
        conversations = [Conversation(client, cluster.model) for _ in range(4)]
        for conversation, turn in itertools.product(conversations, range(3)):
            await conversation.turn(f"turn {turn}")
    for conversation in conversations:
        assert len(set(conversation.replicas)) == 1, conversation.replicas
    # New sessions go to the replica with fewer sessions: four of them use both.
    assert {c.replicas[0] for c in conversations} == {"gateway-1", "gateway-2"}


async def test_a_turn_whose_replica_is_busy_is_served_by_the_other_with_the_full_history(cluster: Cluster) -> None:
    """gateway-2 answers a full queue with 503 (--overload-status 503): the router fails the turn over."""
    await cluster.ready()
    async with asyncio.timeout(180), httpx.AsyncClient(base_url=cluster.router.url, timeout=60) as client:
        # New sessions go to the replica with fewer sessions: a few reach gateway-2.
        for _ in range(4):
            conversation = Conversation(client, cluster.model)
            await conversation.turn("before the rush")
            if conversation.replicas == ["gateway-2"]:
                break
        assert conversation.replicas == ["gateway-2"]
        busy_replica = cluster.replica("gateway-2")
        before = await refusals(busy_replica)
        async with busy(busy_replica):
            await conversation.turn("during the rush")
        await conversation.turn("after the rush")
        assert await refusals(busy_replica) == before + 1
    assert conversation.replicas == ["gateway-2", "gateway-1", "gateway-1"]
    # gateway-1 was given the whole conversation: the first turn and its 4-token answer too.
    assert conversation.prompt_tokens[1] >= conversation.prompt_tokens[0] + 4
