"""The routing tests' cluster: two replicas sharing a Redis, behind nginx and vllm-router (see conftest.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from tests.gateway_app import metric
from tests.servers import Gateway, Nginx, RedisServer, VllmRouter

# Long enough that a random-weight answer always has some text: an answer without any is
# withdrawn with its question (the conversation stays as it was), which would read as a lost turn.
SHORT_ANSWERS = {"max_new_tokens": 16}


@dataclass
class Cluster:
    redis: RedisServer
    replicas: list[Gateway]
    nginx: Nginx
    router: VllmRouter
    model: str  # the name the OpenAI routes serve

    def replica(self, name: str) -> Gateway:
        """The replica started with `--replica-id name` (gateway-1 or gateway-2)."""
        return self.replicas[int(name.removeprefix("gateway-")) - 1]

    async def ready(self) -> None:
        """Both replicas answer and vllm-router routes to both (after a test restarted one)."""
        async with asyncio.timeout(60):
            while self.router.healthy_workers() < len(self.replicas):
                await asyncio.sleep(0.2)


@asynccontextmanager
async def busy(replica: Gateway) -> AsyncIterator[None]:
    """`replica`'s one slot taken (by a request sent to it directly) until the block ends."""
    held: asyncio.Task[httpx.Response] | None = None
    async with httpx.AsyncClient(base_url=replica.url, timeout=120) as client:
        try:
            with replica.engine_paused():
                held = asyncio.create_task(client.post("/chat_stream", json={"user_input": "hold the slot"}))
                async with asyncio.timeout(30):
                    while (await client.get("/get_load")).json()["in_flight"] < 1:
                        await asyncio.sleep(0.05)
                yield
        finally:
            if held is not None:  # the engine runs again: the held answer completes
                assert (await held).status_code == 200


async def refusals(replica: Gateway) -> float:
    """How many requests `replica` refused because its queue was full (a client of its own: no cookies shared)."""
    async with httpx.AsyncClient(timeout=10) as client:
        metrics = (await client.get(f"{replica.url}/metrics")).text
    return sum(
        metric(metrics, "chatstream:rejected_requests_total", route=route, reason="too_many_requests")
        for route in ("chat_stream", "v1/chat/completions")
    )


def nginx_log(nginx: Nginx) -> list[dict[str, str]]:
    """nginx's access log, one dict per request: its `key="value"` fields and `request`."""
    entries = []
    for line in nginx.access_log.read_text().splitlines():
        fields = dict(re.findall(r'(\w+)="([^"]*)"', line))
        fields["request"] = line.split('"')[1]
        entries.append(fields)
    return entries


async def logged_after(
    nginx: Nginx, mark: int, count: int, where: Callable[[dict[str, str]], bool]
) -> list[dict[str, str]]:
    """The entries past the first `mark` lines of the log that `where` selects, once there are `count`.

    nginx writes a request's line when the request ends, which may be just after
    the client has read its response: read too soon, the log lacks the last one.
    """
    async with asyncio.timeout(30):
        while len(found := [e for e in nginx_log(nginx)[mark:] if where(e)]) < count:
            await asyncio.sleep(0.05)
    return found


async def chat_turn(client: httpx.AsyncClient, text: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """One `/chat_stream` turn through `client` (its cookie jar carries the session and the pin)."""
    r = await client.post("/chat_stream", json={"user_input": text}, headers=headers)
    assert r.status_code == 200, r.text
    assert "event: done" in r.text
    return r
