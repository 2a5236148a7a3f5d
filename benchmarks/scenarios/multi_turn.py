"""Scenario 4: multi-turn conversations through `/chat_stream` and its session cookie.

What should hold: with prefix caching on, a late turn's TTFT stays near the
first turn's although its prompt holds the whole conversation. The full plan
also measures prefix caching off, for comparison.
"""

from __future__ import annotations

from benchmarks import peers
from benchmarks.client import ChatStreamTarget, loop_lag, multi_turn
from benchmarks.records import by_turn, distribution, summarise
from benchmarks.scenarios.checks import at_most, ratio
from benchmarks.scenarios.context import Context, Figures


async def run(ctx: Context) -> None:
    plan = ctx.plan
    if plan.quick:
        if "4" not in ctx.figures:  # the sweep's gateway did not run: start one
            with ctx.gateway("gateway-turns", peers.GatewayFlags(max_new_tokens=plan.turn_tokens)) as gw:
                ctx.figures["4"] = {"prefix_caching_on": await conversations(ctx, gw, "prefix caching on")}
    else:
        figures: Figures = {}
        for on in (True, False):
            key = "prefix_caching_on" if on else "prefix_caching_off"
            flags = peers.GatewayFlags(max_new_tokens=plan.turn_tokens)
            with ctx.gateway(f"gateway-turns-{key}", flags, prefix_caching=on) as gw:
                await ctx.warm_up(ChatStreamTarget("warm", gw.url), plan.turn_tokens)
                figures[key] = await conversations(ctx, gw, key.replace("_", " "))
        ctx.figures["4"] = figures
    last = str(plan.turns)
    for key, on in (("prefix_caching_on", True), ("prefix_caching_off", False)):
        by_turn = ctx.figures["4"].get(key, {}).get("by_turn")
        if not by_turn:
            continue
        r = ratio(by_turn[last]["ttft_ms"]["p50"], by_turn["1"]["ttft_ms"]["p50"])
        figure = f"TTFT p50 turn {last} / turn 1, prefix caching {'on' if on else 'off'}"
        if on:
            ctx.check(4, figure, r, "<= 1.5", at_most(r, 1.5), "x")
        else:
            ctx.check(4, figure, r, "(for comparison)", None, "x")


async def conversations(ctx: Context, gw: peers.Server, label: str) -> Figures:
    """The plan's conversations against `gw`: a summary, and TTFT and prompt size by turn."""
    plan = ctx.plan
    target = ChatStreamTarget(label, gw.url)
    total = plan.conversations * plan.turns
    with ctx.ui.step(f"{label}: {plan.conversations} x {plan.turns} turns", total) as advance:
        async with loop_lag() as lags:
            result = await multi_turn(
                target, plan.conversations, plan.turns, plan.conversation_users, plan.turn_tokens, advance
            )
    await target.close()
    return {
        "summary": summarise(result.records, result.duration),
        "by_turn": by_turn(result.records, plan.turns),
        # A late client sees a whole answer arrive at once: TTFT near e2e, TPOT near 0.
        "client_loop_lag_ms": distribution(lags),
    }
