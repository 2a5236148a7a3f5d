"""Scenario 7: the front end's own cost, the gateway beside vLLM's own server (issue 14).

The same light client (raw asyncio streams), the same tiny model, one server
loaded at a time: the gateway's OpenAI route and `/chat_stream` and vLLM's
OpenAI server, each at every concurrency of the plan (1 to 512), streaming
with `include_usage`; all servers run throughout and take each level in
turn, in slices where a level is long enough to cut (`Plan.frontend_level`):
tokens/s is a server's tokens over the sum of its slices' durations, the
latencies come from all its slices' requests. Besides tokens/s, TTFT and
ITL, each level reads the CPU time of the server's front-end processes: the
server process and every descendant except vLLM's engine core and its
workers (`VLLM::EngineCore`, `VLLM::Worker`), so several API processes
count, the engine never does.
With `--baseline`, another checkout's gateway runs the same levels too.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psutil  # type: ignore[import-untyped]

from benchmarks import peers
from benchmarks.client import ChatStreamTarget, OpenAIChatTarget, Target
from benchmarks.scenarios.checks import at_least, at_most, ratio
from benchmarks.scenarios.context import Context, Figures, us_per_token

_ENGINE_PROCESSES = ("VLLM::EngineCore", "VLLM::Worker", "VLLM::DPCoordinator")


def frontend_cpu_times(pid: int) -> peers.CPUTimes:
    """CPU of `pid` and its descendants, vLLM's engine processes left out."""
    root = psutil.Process(pid)
    total = peers.CPUTimes()
    for process in [root, *root.children(recursive=True)]:
        try:
            cmdline = process.cmdline()
            if cmdline and cmdline[0].startswith(_ENGINE_PROCESSES):
                continue
            times = peers.CPUTimes.of(process)
        except psutil.NoSuchProcess:  # a short-lived helper process ended meanwhile
            continue
        total = total.plus(times)
    return total


async def run(ctx: Context) -> None:
    plan = ctx.plan

    def flags() -> peers.GatewayFlags:  # a free port of its own for each gateway
        return peers.GatewayFlags(
            concurrency=max(plan.frontend_levels),
            queue_size=2 * max(plan.frontend_levels),
            max_new_tokens=plan.frontend_tokens,
        )

    # Every server runs for the whole scenario and the levels alternate between them, so that
    # each server's level runs within a minute of the others' (an idle server costs nothing):
    # run one after the other, the figures of the last would be taken minutes later, on a
    # machine whose speed drifts (the shared CPU, its neighbours).
    with contextlib.ExitStack() as running:
        gw = running.enter_context(ctx.gateway("gateway", flags()))
        targets: list[tuple[peers.Server, Target]] = [
            (gw, OpenAIChatTarget("gateway-openai", gw.url, ctx.model)),
            (gw, ChatStreamTarget("gateway-chat_stream", gw.url)),
        ]
        if plan.baseline is not None:  # another checkout of the gateway, for a before/after in the same run
            try:
                base = running.enter_context(ctx.gateway("baseline", flags(), source=plan.baseline))
            except peers.PeerFailed as exc:  # the baseline failing to start keeps the other figures
                ctx.ui.note(f"baseline failed: {str(exc)[-300:]}")
            else:
                targets.append((base, OpenAIChatTarget("baseline-openai", base.url, ctx.model)))
                targets.append((base, ChatStreamTarget("baseline-chat_stream", base.url)))
        port = peers.free_port()
        vs = running.enter_context(ctx.server("vllm-server", peers.vllm_server_command(ctx.model, port), port))
        targets.append((vs, OpenAIChatTarget("vllm-server", vs.url, ctx.model)))
        servers = await _levels(ctx, targets)
    ctx.figures["7"] = {"max_tokens": plan.frontend_tokens, "servers": servers}
    _checks(ctx, servers)


async def _levels(ctx: Context, targets: list[tuple[peers.Server, Target]]) -> dict[str, dict[str, Figures]]:
    """Every level of the plan on every target, in slices the targets take in turn (`Plan.frontend_level`)."""
    for _, target in targets:
        await ctx.warm_up(target, ctx.plan.frontend_tokens)
    by_name = {target.name: (server, target) for server, target in targets}
    servers: dict[str, dict[str, Figures]] = {name: {} for name in by_name}
    turn = 0  # the order rotates from slice to slice and from level to level
    for c in ctx.plan.frontend_levels:
        per_slice, slices = ctx.plan.frontend_level(c)
        shares = await ctx.take_turns(
            by_name,
            slices,
            c,
            per_slice,
            ctx.plan.frontend_tokens,
            server_cpu=lambda server: frontend_cpu_times(server.pid),
            first=turn,
            settle_s=ctx.plan.frontend_settle_s,
        )
        turn += slices
        for name, share in shares.items():
            s = ctx.summarise(share.records, share.seconds)
            tokens = s["total_output_tokens"]
            s["slices"] = slices
            cpu = share.server_cpu
            s["frontend_cpu_s"] = cpu.total
            s["frontend_us_per_token"] = us_per_token(cpu.total, tokens)
            s["frontend_system_us_per_token"] = us_per_token(cpu.system, tokens)
            servers[name][str(c)] = s
            ctx.ui.note(
                f"{name} c={c}: {s['output_throughput']:.0f} tok/s, TTFT p50 {s['ttft_ms']['p50'] or 0:.0f} ms,"
                f" front end {s['frontend_us_per_token'] or 0:.1f} µs/token"
            )
    return servers


def _checks(ctx: Context, servers: dict[str, dict[str, Figures]]) -> None:
    vllm = servers["vllm-server"]

    def figure(name: str, level: str, *path: str) -> Any:
        value: Any = servers[name].get(level)
        for key in path:
            value = None if value is None else value.get(key)
        return value

    for name in ("gateway-openai", "gateway-chat_stream"):
        route = name.removeprefix("gateway-")
        top = "256" if "256" in vllm else max(vllm, key=int)
        r = ratio(figure(name, top, "frontend_us_per_token"), figure("vllm-server", top, "frontend_us_per_token"))
        ctx.check(7, f"{route}: front-end CPU per token / vLLM's, c={top}", r, "<= 0.5", at_most(r, 0.5), "x")
        for level in vllm:
            r = ratio(figure(name, level, "output_throughput"), figure("vllm-server", level, "output_throughput"))
            ctx.check(7, f"{route}: tokens/s / vLLM's, c={level}", r, ">= 1.0", at_least(r, 1.0), "x")
            for q in ("p50", "p99"):
                r = ratio(figure(name, level, "ttft_ms", q), figure("vllm-server", level, "ttft_ms", q))
                ctx.check(7, f"{route}: TTFT {q} / vLLM's, c={level}", r, "<= 1.0", at_most(r, 1.0), "x")
        low = min(vllm, key=int)
        r = ratio(figure(name, low, "itl_ms", "p50"), figure("vllm-server", low, "itl_ms", "p50"))
        ctx.check(7, f"{route}: ITL p50 / vLLM's, c={low}", r, "<= 1.0", at_most(r, 1.0), "x")
