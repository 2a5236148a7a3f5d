"""A replica killed between two turns: its conversations continue on the other, through nginx and vllm-router."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.routing.cluster import SHORT_ANSWERS, Cluster, chat_turn
from tests.routing.test_vllm_router import Conversation

pytestmark = pytest.mark.engine


async def test_a_conversation_whose_replica_is_killed_continues_on_the_other_with_its_history(
    cluster: Cluster,
) -> None:
    await cluster.ready()
    async with (
        asyncio.timeout(400),
        httpx.AsyncClient(base_url=cluster.nginx.url, timeout=60) as browser,
        httpx.AsyncClient(base_url=cluster.router.url, timeout=60) as api,
    ):
        # One conversation through vllm-router, and one through nginx pinned to the same replica.
        through_router = Conversation(api, cluster.model)
        await through_router.turn("before the crash")
        victim = through_router.replicas[0]
        pin = {"x-chatstream-replica": victim}
        await browser.post("/set_generation_params", json=SHORT_ANSWERS, headers=pin)
        before = await chat_turn(browser, "before the crash")
        assert before.headers["x-chatstream-replica"] == victim
        replica = cluster.replica(victim)
        replica.kill()
        try:
            after = await chat_turn(browser, "after the crash")
            prompt = (await browser.get("/get_prompt")).json()
            await through_router.turn("after the crash")
        finally:
            await asyncio.to_thread(replica.start)
    assert after.headers["x-chatstream-replica"] != victim
    assert [m["content"] for m in prompt["messages"] if m["role"] == "user"] == ["before the crash", "after the crash"]
    assert through_router.replicas[1] != victim
    # The survivor was given the whole conversation: the first turn and its 4-token answer too.
    assert through_router.prompt_tokens[1] >= through_router.prompt_tokens[0] + 4
    await cluster.ready()
