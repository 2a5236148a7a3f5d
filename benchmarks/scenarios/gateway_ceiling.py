"""Scenario 5: the gateway's own ceiling, over the zero-cost engine: CPU per streamed token, tokens/s per core.

`/chat_stream` and the OpenAI chat route (streaming with `include_usage`), and
with a baseline checkout (`--baseline`) the same two against it, in the same
run: both gateways run throughout and the routes take their passes in turn
(`Plan.ceiling_passes`). It also prices the client: the same load read with
httpx instead of the raw client, since on two shared cores the client's CPU
is taken from the server; and it measures the floor under every figure
(benchmarks/floor.py): one loop turn and one socket write per token, nothing
else, which no gateway over this engine can go below.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx

from benchmarks import floor, peers
from benchmarks.client import ChatStreamTarget, OpenAIChatTarget, SSEDecoder, Target, make_prompt
from benchmarks.scenarios.checks import at_least, ratio
from benchmarks.scenarios.context import Context, Figures, us_per_token


async def run(ctx: Context) -> None:
    plan = ctx.plan

    def flags() -> peers.GatewayFlags:  # a free port of its own for each gateway
        return peers.GatewayFlags(concurrency=256, queue_size=1024, max_new_tokens=plan.ceiling_tokens)

    with contextlib.ExitStack() as running:
        gw = running.enter_context(ctx.null_gateway("gateway-null-engine", flags()))
        routes = _routes("gateway", gw)
        failed = None
        if plan.baseline is not None:
            try:  # the baseline failing to start keeps this gateway's figures
                base = running.enter_context(ctx.null_gateway("baseline-null-engine", flags(), source=plan.baseline))
            except peers.PeerFailed as exc:
                failed = str(exc)[-500:]
            else:
                routes |= _routes("baseline", base)
        figures = await _passes(ctx, routes)
        result = figures["gateway /chat_stream"]
        result["openai"] = figures["gateway OpenAI"]
        result["passes"] = plan.ceiling_passes
        n = max(8, plan.ceiling_requests // 4)
        result["client_us_per_token_httpx"] = await _client_cost_httpx(gw.url, plan.ceiling_users, n)
    # With the servers stopped: the floor's own process has the machine, as each gateway had in its passes.
    result["floor"] = await asyncio.to_thread(floor.measure, plan.ceiling_users, plan.ceiling_tokens * 8)
    if plan.baseline is not None:
        result["baseline_source"] = str(plan.baseline)
        if failed is not None:
            result["baseline_failed"] = failed
        else:
            result["baseline"] = {**figures["baseline /chat_stream"], "openai": figures["baseline OpenAI"]}
    ctx.figures["5"] = result
    ctx.check(5, "gateway CPU per streamed token", result["gateway_us_per_token"], "(measure)", None, "µs")
    ctx.check(5, "gateway tokens/s per core", result["gateway_tokens_per_s_per_core"], "(measure)", None, "tok/s")
    openai = result["openai"]["gateway_us_per_token"]
    ctx.check(5, "gateway CPU per streamed token, OpenAI route", openai, "(measure)", None, "µs")
    ctx.check(
        5, "floor: one loop turn and one socket write a token", result["floor"]["us_per_token"], "(measure)", None, "µs"
    )
    if "baseline" in result:
        for route, now, before in (
            ("/chat_stream", result, result["baseline"]),
            ("OpenAI", result["openai"], result["baseline"]["openai"]),
        ):
            gain = ratio(now["gateway_tokens_per_s_per_core"], before["gateway_tokens_per_s_per_core"])
            ctx.check(5, f"{route}: tokens/s per core / baseline's", gain, ">= 3.0", at_least(gain, 3.0), "x")


def _routes(label: str, server: peers.Server) -> dict[str, tuple[peers.Server, Target]]:
    """`label`'s two routes on `server`, by the names the figures are kept under."""
    return {
        f"{label} /chat_stream": (server, ChatStreamTarget(f"{label}-null-engine /chat_stream", server.url)),
        f"{label} OpenAI": (server, OpenAIChatTarget(f"{label}-null-engine OpenAI", server.url, "null")),
    }


async def _passes(ctx: Context, routes: dict[str, tuple[peers.Server, Target]]) -> dict[str, Figures]:
    """Every route's passes, the routes taking turns; the figures of each over all its passes."""
    plan = ctx.plan
    for _, target in routes.values():
        await ctx.warm_up(target, plan.ceiling_tokens)
    shares = await ctx.take_turns(
        routes,
        plan.ceiling_passes,
        plan.ceiling_users,
        plan.ceiling_requests,
        plan.ceiling_tokens,
        server_cpu=lambda server: server.cpu_times(),
    )
    return {
        name: _figures(ctx.summarise(share.records, share.seconds), share.server_cpu, share.client_cpu)
        for name, share in shares.items()
    }


def _figures(load: Figures, server_cpu: peers.CPUTimes, client_cpu: float) -> Figures:
    tokens = load["total_output_tokens"]
    wall = load["duration_s"]
    cpu = server_cpu.total
    return {
        "load": load,
        "tokens": tokens,
        "gateway_cpu_s": cpu,
        "client_cpu_s": client_cpu,
        "gateway_us_per_token": us_per_token(cpu, tokens),
        # The kernel's part is mostly the socket writes, one a token: it moves with the machine
        # more than the gateway's own Python does (benchmarks/results/2026-11-30-frontend).
        "gateway_user_us_per_token": us_per_token(server_cpu.user, tokens),
        "gateway_system_us_per_token": us_per_token(server_cpu.system, tokens),
        "gateway_tokens_per_s_per_core": tokens / cpu if cpu else None,
        "gateway_cpu_utilisation": cpu / wall if wall else None,
        "client_cpu_utilisation": client_cpu / wall if wall else None,
        "client_us_per_token_raw": us_per_token(client_cpu, tokens),
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
    return us_per_token(cpu, tokens)
