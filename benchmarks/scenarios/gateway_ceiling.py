"""Scenario 5: the gateway's own ceiling, over the zero-cost engine: CPU per streamed token, tokens/s per core.

`/chat_stream` and the OpenAI chat route (streaming with `include_usage`), and
with a baseline checkout (`--baseline`) the same two against it, in the same
run. It also prices the client: the same load read with httpx instead of the
raw client, since on two shared cores the client's CPU is taken from the server.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from benchmarks import peers
from benchmarks.client import ChatStreamTarget, OpenAIChatTarget, SSEDecoder, Target, make_prompt
from benchmarks.scenarios.checks import at_least, ratio
from benchmarks.scenarios.context import Context, Figures


async def run(ctx: Context) -> None:
    plan = ctx.plan
    result = await _measure(ctx, "gateway-null-engine", None, httpx_cost=True)
    if plan.baseline is not None:
        result["baseline_source"] = str(plan.baseline)
        try:  # the baseline failing to start keeps this gateway's figures
            result["baseline"] = await _measure(ctx, "baseline-null-engine", plan.baseline, httpx_cost=False)
        except peers.PeerFailed as exc:
            result["baseline_failed"] = str(exc)[-500:]
    ctx.figures["5"] = result
    ctx.check(5, "gateway CPU per streamed token", result["gateway_us_per_token"], "(measure)", None, "µs")
    ctx.check(5, "gateway tokens/s per core", result["gateway_tokens_per_s_per_core"], "(measure)", None, "tok/s")
    openai = result["openai"]["gateway_us_per_token"]
    ctx.check(5, "gateway CPU per streamed token, OpenAI route", openai, "(measure)", None, "µs")
    if "baseline" in result:
        for route, now, before in (
            ("/chat_stream", result, result["baseline"]),
            ("OpenAI", result["openai"], result["baseline"]["openai"]),
        ):
            gain = ratio(now["gateway_tokens_per_s_per_core"], before["gateway_tokens_per_s_per_core"])
            ctx.check(5, f"{route}: tokens/s per core / baseline's", gain, ">= 3.0", at_least(gain, 3.0), "x")


async def _measure(ctx: Context, name: str, source: Path | None, *, httpx_cost: bool) -> Figures:
    """/chat_stream (the figures at the top level) and the OpenAI route (under "openai") on one gateway."""
    plan = ctx.plan
    flags = peers.GatewayFlags(concurrency=256, queue_size=1024, max_new_tokens=plan.ceiling_tokens)
    with ctx.null_gateway(name, flags, source=source) as gw:
        result = await _route(ctx, gw, ChatStreamTarget(f"{name} /chat_stream", gw.url))
        result["openai"] = await _route(ctx, gw, OpenAIChatTarget(f"{name} OpenAI", gw.url, "null"))
        if httpx_cost:
            n = max(8, plan.ceiling_requests // 4)
            result["client_us_per_token_httpx"] = await _client_cost_httpx(gw.url, plan.ceiling_users, n)
    return result


async def _route(ctx: Context, gw: peers.Server, target: Target) -> Figures:
    plan = ctx.plan
    await ctx.warm_up(target, plan.ceiling_tokens)
    server_cpu0, client_cpu0 = gw.cpu_seconds(), time.process_time()
    figures = await ctx.run_fixed(target, plan.ceiling_users, plan.ceiling_requests, plan.ceiling_tokens, target.name)
    server_cpu = gw.cpu_seconds() - server_cpu0
    client_cpu = time.process_time() - client_cpu0
    tokens = figures["total_output_tokens"]
    wall = figures["duration_s"]
    return {
        "load": figures,
        "tokens": tokens,
        "gateway_cpu_s": server_cpu,
        "client_cpu_s": client_cpu,
        "gateway_us_per_token": server_cpu / tokens * 1e6 if tokens else None,
        "gateway_tokens_per_s_per_core": tokens / server_cpu if server_cpu else None,
        "gateway_cpu_utilisation": server_cpu / wall if wall else None,
        "client_cpu_utilisation": client_cpu / wall if wall else None,
        "client_us_per_token_raw": client_cpu / tokens * 1e6 if tokens else None,
    }


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
