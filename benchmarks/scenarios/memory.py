"""Scenario 6: the gateway's resident memory over many requests from new sessions (zero-cost engine).

Every request is a new visitor and `--max-sessions` is set above the count,
so all sessions stay in memory: the growth is what a session costs.
"""

from __future__ import annotations

from benchmarks import peers
from benchmarks.client import ChatStreamTarget
from benchmarks.scenarios.context import Context

TOKENS = 16  # short answers: the sessions, not the streams, are measured


async def run(ctx: Context) -> None:
    plan = ctx.plan
    sessions = plan.memory_requests + plan.memory_warmup
    extra = ["--max-sessions", str(sessions * 2)]
    flags = peers.GatewayFlags(concurrency=256, queue_size=1024, max_new_tokens=TOKENS, extra=extra)
    with ctx.null_gateway("gateway-memory", flags) as gw:
        target = ChatStreamTarget("gateway-memory", gw.url)
        await ctx.run_fixed(target, plan.memory_users, plan.memory_warmup, TOKENS, "memory warm-up")
        rss0 = gw.rss_bytes()
        figures = await ctx.run_fixed(target, plan.memory_users, plan.memory_requests, TOKENS, "memory")
        rss1 = gw.rss_bytes()
    growth = (rss1 - rss0) / 2**20
    ctx.figures["6"] = {
        "engine": "null (zero-cost) engine",
        "requests": plan.memory_requests,
        "sessions": plan.memory_requests,
        "rss_before_mb": rss0 / 2**20,
        "rss_after_mb": rss1 / 2**20,
        "growth_mb": growth,
        "growth_bytes_per_session": (rss1 - rss0) / plan.memory_requests,
        "load": figures,
    }
    figure = f"RSS growth over {plan.memory_requests} requests / sessions"
    ctx.check(6, figure, growth, "< 50 MB", growth < 50, "MB")
