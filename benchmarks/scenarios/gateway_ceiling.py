"""Scenario 5: the gateway's own ceiling, over the zero-cost engine: CPU per streamed token, tokens/s per core.

It also prices the client: the same load read with httpx instead of the raw
client, since on two shared cores the client's CPU is taken from the server.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from benchmarks import peers
from benchmarks.client import ChatStreamTarget, SSEDecoder, make_prompt
from benchmarks.scenarios.context import Context


async def run(ctx: Context) -> None:
    plan = ctx.plan
    flags = peers.GatewayFlags(concurrency=256, queue_size=1024, max_new_tokens=plan.ceiling_tokens)
    with ctx.null_gateway("gateway-null-engine", flags) as gw:
        target = ChatStreamTarget("gateway-null", gw.url)
        await ctx.warm_up(target, plan.ceiling_tokens)
        server_cpu0, client_cpu0 = gw.cpu_seconds(), time.process_time()
        figures = await ctx.run_fixed(
            target, plan.ceiling_users, plan.ceiling_requests, plan.ceiling_tokens, "null engine"
        )
        server_cpu = gw.cpu_seconds() - server_cpu0
        client_cpu = time.process_time() - client_cpu0
        tokens = figures["total_output_tokens"]
        httpx_cost = await _client_cost_httpx(gw.url, plan.ceiling_users, max(8, plan.ceiling_requests // 4))
    wall = figures["duration_s"]
    result = {
        "load": figures,
        "tokens": tokens,
        "gateway_cpu_s": server_cpu,
        "client_cpu_s": client_cpu,
        "gateway_us_per_token": server_cpu / tokens * 1e6 if tokens else None,
        "gateway_tokens_per_s_per_core": tokens / server_cpu if server_cpu else None,
        "gateway_cpu_utilisation": server_cpu / wall if wall else None,
        "client_cpu_utilisation": client_cpu / wall if wall else None,
        "client_us_per_token_raw": client_cpu / tokens * 1e6 if tokens else None,
        "client_us_per_token_httpx": httpx_cost,
    }
    ctx.figures["5"] = result
    ctx.check(5, "gateway CPU per streamed token", result["gateway_us_per_token"], "(measure)", None, "µs")
    ctx.check(5, "gateway tokens/s per core", result["gateway_tokens_per_s_per_core"], "(measure)", None, "tok/s")


async def _client_cost_httpx(url: str, users: int, n: int) -> float | None:
    """Client CPU µs per token when the same load is read with httpx instead of raw streams."""
    tokens = 0
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=users * 2, max_keepalive_connections=users * 2)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def user() -> None:
            nonlocal tokens
            for i in counter:
                client.cookies.clear()  # a new visitor, as in the raw client's run
                async with client.stream("POST", "/chat_stream", json={"user_input": make_prompt(i)}) as r:
                    decoder = SSEDecoder()
                    async for chunk in r.aiter_raw():
                        for event, data in decoder.feed(chunk):
                            if event == "done":
                                tokens += int(json.loads(data)["usage"]["completion_tokens"])

        cpu0 = time.process_time()
        await asyncio.gather(*(user() for _ in range(users)))
        cpu = time.process_time() - cpu0
    return cpu / tokens * 1e6 if tokens else None
