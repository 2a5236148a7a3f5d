"""Scenario 8: the fair share. Ten light users beside one flooder, and beside a crowd of ten equals.

Twenty-one API keys through `/v1/chat/completions` (each key its own user):
ten light users each send one short request at a time; beside them either a
crowd of ten more light users (the same load, shared between equals) or one
flooder that keeps `fair_flood_factor` x the slots in flight with long
answers. What should hold: the light users' TTFT p99 beside the flooder is at
most 1.5x their TTFT p99 beside the crowd, and no light request is refused.
With a baseline checkout (`--baseline`), the same two phases against it, in
the same run: the first-come-first-served figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from benchmarks import peers
from benchmarks.client import OpenAIChatTarget, make_prompt
from benchmarks.records import RequestRecord, summarise
from benchmarks.scenarios.checks import at_most, ratio
from benchmarks.scenarios.context import Context, Figures

FLOOD_KEY = "sk-bench-flood"


def _keys(kind: str, n: int) -> list[str]:
    return [f"sk-bench-{kind}-{i}" for i in range(n)]


async def run(ctx: Context) -> None:
    plan = ctx.plan
    light, crowd = _keys("light", plan.fair_light_users), _keys("crowd", plan.fair_light_users)
    api_keys = [arg for key in [FLOOD_KEY, *light, *crowd] for arg in ("--api-key", key)]

    def flags() -> peers.GatewayFlags:
        return peers.GatewayFlags(
            concurrency=plan.fair_slots,
            queue_size=plan.fair_queue,
            max_new_tokens=plan.fair_flood_tokens,
            extra=api_keys,
        )

    figures: Figures = {"slots": plan.fair_slots, "queue": plan.fair_queue, "api_keys": len(api_keys) // 2}
    if plan.quick:
        with ctx.null_gateway("gateway-fair-null", flags(), token_delay=0.005) as gw:
            figures["fair"] = await _phases(ctx, gw.url, "null", light, crowd)
        figures["engine"] = "null (zero-cost) engine, 5 ms per token"
    else:
        with ctx.gateway("gateway-fair", flags()) as gw:
            figures["fair"] = await _phases(ctx, gw.url, ctx.model, light, crowd)
        if plan.baseline is not None:
            figures["baseline_source"] = str(plan.baseline)
            try:  # the baseline failing to start keeps this gateway's figures
                with ctx.gateway("baseline-fifo", flags(), source=plan.baseline) as gw:
                    figures["baseline"] = await _phases(ctx, gw.url, ctx.model, light, crowd)
            except peers.PeerFailed as exc:
                figures["baseline_failed"] = str(exc)[-500:]
        figures["engine"] = "vLLM, tiny model"
    ctx.figures["8"] = figures
    fair = figures["fair"]
    r = fair["light_ttft_p99_ratio"]
    ctx.check(8, "light users' TTFT p99, beside a flooder / beside a crowd", r, "<= 1.5", at_most(r, 1.5), "x")
    refused = fair["light_refused"]
    ctx.check(8, "light requests refused beside the flooder", float(refused), "0", refused == 0)
    if "baseline" in figures:
        b = figures["baseline"]["light_ttft_p99_ratio"]
        ctx.check(8, "the same ratio, baseline (first come, first served)", b, "(comparison)", None, "x")


async def _phases(ctx: Context, url: str, model: str, light: list[str], crowd: list[str]) -> Figures:
    """The light users beside the crowd, then beside the flooder, on one gateway."""
    plan = ctx.plan
    await ctx.warm_up(OpenAIChatTarget("warm-up", url, model, api_key=light[0]), plan.fair_light_tokens)
    crowd_figures = await _phase(ctx, url, model, light, [(key, 1) for key in crowd], plan.fair_light_tokens, "crowd")
    flood_users = plan.fair_flood_factor * plan.fair_slots
    flood_figures = await _phase(ctx, url, model, light, [(FLOOD_KEY, flood_users)], plan.fair_flood_tokens, "flood")
    p_crowd = crowd_figures["light"]["ttft_ms"]["p99"]
    p_flood = flood_figures["light"]["ttft_ms"]["p99"]
    return {
        "beside_crowd": crowd_figures,
        "beside_flooder": flood_figures,
        "light_ttft_p99_crowd_ms": p_crowd,
        "light_ttft_p99_flooder_ms": p_flood,
        "light_ttft_p99_ratio": ratio(p_flood, p_crowd),
        "light_refused": sum(flood_figures["light"]["refused_by_status"].values()),
    }


async def _phase(
    ctx: Context,
    url: str,
    model: str,
    light: list[str],
    others: list[tuple[str, int]],
    other_tokens: int,
    label: str,
) -> Figures:
    """`others` (key, users) load the gateway; after the warm-up the light users run for `fair_seconds`."""
    plan = ctx.plan
    stop_others = False
    other_records: list[RequestRecord] = []
    other_targets = [OpenAIChatTarget(f"{label}-{i}", url, model, api_key=key) for i, (key, _) in enumerate(others)]
    background = [
        asyncio.create_task(_closed_loop(target, users, other_tokens, lambda: stop_others, other_records))
        for target, (_, users) in zip(other_targets, others, strict=True)
    ]
    light_records: list[RequestRecord] = []
    light_targets = [OpenAIChatTarget(f"light-{i}", url, model, api_key=key) for i, key in enumerate(light)]
    with ctx.ui.step(f"{label}: warm-up {plan.fair_warmup:g} s, then light users {plan.fair_seconds:g} s", 1) as done:
        await asyncio.sleep(plan.fair_warmup)  # the background load builds its queue first
        started = time.perf_counter()
        deadline = started + plan.fair_seconds
        await asyncio.gather(
            *(
                _closed_loop(t, 1, plan.fair_light_tokens, lambda: time.perf_counter() > deadline, light_records)
                for t in light_targets
            )
        )
        duration = time.perf_counter() - started
        done(1)
    stop_others = True
    for task in background:  # the background's long answers are not waited for: cut them as a client would
        task.cancel()
    for task in background:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for target in [*other_targets, *light_targets]:
        await target.close()
    return {
        "light": summarise(light_records, duration),
        "others": summarise(other_records, duration),
        "other_tokens": other_tokens,
        "other_users": sum(users for _, users in others),
    }


async def _closed_loop(
    target: OpenAIChatTarget, users: int, max_tokens: int, stop: Callable[[], bool], records: list[RequestRecord]
) -> None:
    """`users` users of `target` each send a request as soon as the last ended, until `stop()` (at least once)."""

    async def one_user(index: int) -> None:
        user = target.new_user()
        i = 0
        while True:
            user.new_conversation()
            records.append(await target.chat(user, make_prompt(index * 100_000 + i, words=12), max_tokens))
            i += 1
            if stop():
                return

    await asyncio.gather(*(one_user(i) for i in range(users)))
