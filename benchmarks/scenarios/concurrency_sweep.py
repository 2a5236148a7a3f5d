"""Scenario 1: the same closed-loop load at rising concurrency against every target, one at a time.

Targets: the engine in this process (no HTTP), the gateway's `/chat_stream`
and `/v1/chat/completions`, vLLM's own OpenAI server, the original
ChatStream. With `profile` on, py-spy samples the gateway during one extra
run at c=64.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

from benchmarks import peers, pyspy
from benchmarks.client import ChatStreamTarget, Connection, HTTPError, OpenAIChatTarget, PlainTextTarget, Target
from benchmarks.client.engine import engine_target
from benchmarks.scenarios import multi_turn
from benchmarks.scenarios.checks import at_least, at_most, ratio
from benchmarks.scenarios.context import Context, Figures

# Figures of one target: one summary per concurrency level ("1", "8", ...), or {"skipped": why}.
Levels = dict[str, Any]


async def run(ctx: Context) -> None:
    plan = ctx.plan
    results: dict[str, Levels] = {}
    targets = plan.sweep_targets
    # A peer that fails to start costs its own lines, not the other targets' figures.
    if "engine" in targets:
        try:
            ctx.ui.note("starting the in-process engine")
            async with engine_target(ctx.model) as engine:
                results["engine"] = await _levels(ctx, engine)
        except Exception as exc:  # vLLM raises its own error types when an engine cannot start
            results["engine"] = {"skipped": f"the in-process engine failed: {exc}"[:500]}
    if any(t.startswith("gateway") for t in targets):
        flags = peers.GatewayFlags(concurrency=256, queue_size=1024, max_new_tokens=plan.max_tokens)
        try:
            with ctx.gateway("gateway", flags) as gw:
                await _gateway(ctx, gw, results)
        except peers.PeerFailed as exc:
            results["gateway-chat_stream"] = {"skipped": str(exc)[:500]}
    if "vllm-server" in targets:
        port = peers.free_port()
        try:
            with ctx.server("vllm-server", peers.vllm_server_command(ctx.model, port), port) as vs:
                results["vllm-server"] = await _levels(ctx, OpenAIChatTarget("vllm-server", vs.url, ctx.model))
        except peers.PeerFailed as exc:
            results["vllm-server"] = {"skipped": str(exc)[:500]}
    if "original" in targets:
        port = peers.free_port()
        try:
            python = peers.ensure_original_venv()
            command = peers.original_command(python, ctx.model, port, max_new_tokens=plan.max_tokens)
            with ctx.server("original", command, port) as orig:
                results["original"] = await _levels(ctx, PlainTextTarget("original", orig.url))
        except (peers.PeerFailed, subprocess.CalledProcessError) as exc:
            results["original"] = {"skipped": str(exc)[:500]}
    ctx.figures["1"] = {"max_tokens": plan.max_tokens, "targets": results}
    _checks(ctx, results)


async def _levels(ctx: Context, target: Target) -> Levels:
    """A warm-up, then every concurrency level of the plan."""
    await ctx.warm_up(target, ctx.plan.max_tokens)
    levels: Levels = {}
    for c in ctx.plan.sweep:
        n = ctx.plan.requests_at(c, target.name)
        s = levels[str(c)] = await ctx.run_fixed(target, c, n, ctx.plan.max_tokens, target.name)
        ctx.ui.note(
            f"{target.name} c={c}: {s['output_throughput']:.0f} tok/s, TTFT p50 {s['ttft_ms']['p50'] or 0:.0f} ms"
            f" p99 {s['ttft_ms']['p99'] or 0:.0f} ms, refused {s['refused_by_status']}, errors {s['errors']}"
        )
    return levels


async def _gateway(ctx: Context, gw: peers.Server, results: dict[str, Levels]) -> None:
    """Both routes of one gateway process, and what else the quick plan measures on it while it runs."""
    plan, targets = ctx.plan, ctx.plan.sweep_targets
    if "gateway-chat_stream" in targets:
        results["gateway-chat_stream"] = await _levels(ctx, ChatStreamTarget("gateway-chat_stream", gw.url))
    if "gateway-openai" in targets:
        if await _has_openai_route(gw.url, ctx.model):
            results["gateway-openai"] = await _levels(ctx, OpenAIChatTarget("gateway-openai", gw.url, ctx.model))
        else:
            ctx.ui.note("the gateway has no /v1/chat/completions: gateway-openai skipped")
            results["gateway-openai"] = {"skipped": "the gateway served no /v1/chat/completions"}
    if plan.profile:
        ctx.figures["profile"] = await _profile(ctx, gw)
    if plan.quick and 4 in plan.scenarios:  # spares the quick run a second start of the real engine
        ctx.figures["4"] = {"prefix_caching_on": await multi_turn.conversations(ctx, gw, "gateway (prefix on)")}


async def _has_openai_route(url: str, model: str) -> bool:
    conn = Connection(url)
    try:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        response = await conn.request("POST", "/v1/chat/completions", json_body=body)
        await response.read()
        return response.status == 200
    except HTTPError:
        return False
    finally:
        conn.close()


async def _profile(ctx: Context, gw: peers.Server) -> Figures:
    """py-spy on the gateway process during one extra c=64 run (not counted in the sweep)."""
    spy = pyspy.find_pyspy()
    if spy is None:
        return {"skipped": "py-spy is not installed"}
    raw = ctx.plan.out / "profile-gateway.txt"
    with pyspy.recording(spy, gw.pid, raw):
        await asyncio.sleep(1.0)  # py-spy attaches before the load starts
        target = ChatStreamTarget("gateway-chat_stream", gw.url)
        figures = await ctx.run_fixed(target, 64, 640, ctx.plan.max_tokens, "profiling gateway")
    return {"output_throughput_while_profiled": figures["output_throughput"], **pyspy.summarise_profile(raw)}


def _checks(ctx: Context, results: dict[str, Levels]) -> None:
    top = str(64 if 64 in ctx.plan.sweep else max(ctx.plan.sweep))

    def at_top(name: str) -> Figures | None:
        level = results.get(name, {}).get(top)
        return level if isinstance(level, dict) else None

    def tput(name: str) -> float | None:
        level = at_top(name)
        return None if level is None else float(level["output_throughput"])

    def ttft50(name: str) -> float | None:
        level = at_top(name)
        return None if level is None else level["ttft_ms"]["p50"]

    gw, gw_oa = tput("gateway-chat_stream"), tput("gateway-openai")
    eng, vs, orig = tput("engine"), tput("vllm-server"), tput("original")
    c = f"c={top}"
    r = ratio(gw, eng)
    ctx.check(1, f"gateway /chat_stream / in-process engine tokens/s, {c}", r, ">= 0.9", at_least(r, 0.9), "x")
    r = ratio(gw, vs)
    ctx.check(1, f"gateway /chat_stream / vLLM server tokens/s, {c}", r, ">= 1.5", at_least(r, 1.5), "x")
    r = ratio(gw_oa, vs)
    ctx.check(1, f"gateway /v1/chat/completions / vLLM server tokens/s, {c}", r, ">= 1.5", at_least(r, 1.5), "x")
    r = ratio(ttft50("gateway-openai"), ttft50("vllm-server"))
    ctx.check(1, f"gateway OpenAI TTFT p50 / vLLM server TTFT p50, {c}", r, "<= 1.0", at_most(r, 1.0), "x")
    r = ratio(gw, orig)
    ctx.check(1, f"gateway /chat_stream / original ChatStream tokens/s, {c}", r, ">= 20", at_least(r, 20), "x")
