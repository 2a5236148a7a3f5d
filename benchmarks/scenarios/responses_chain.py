"""Scenario 10: a long chain through the Responses API's `previous_response_id`, on one replica.

Each turn sends only its new input; the gateway renders the stored chain
before it, the same tokens as the turn before rendered plus the new turn, so
vLLM's prefix cache serves the history. What should hold: with prefix caching
on, the last turn's TTFT stays near the first turn's although its prompt
holds the whole chain; with it off, the ratio shows what the cache saves.
The quick plan runs the zero-cost engine (it proves the harness: stored
chains, streamed events), the full plan the real one, caching on and off.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import httpx

from benchmarks import peers
from benchmarks.scenarios.checks import at_most, ratio
from benchmarks.scenarios.context import Context, Figures


async def run(ctx: Context) -> None:
    plan = ctx.plan
    flags = peers.GatewayFlags(max_new_tokens=plan.chain_tokens)
    figures: Figures = {}
    if plan.quick:
        with ctx.null_gateway("gateway-chain-null", flags) as gw:
            await chains(ctx, gw, "warm-up", count=1, turns=1)
            figures["zero_cost_engine"] = await chains(ctx, gw, "zero-cost engine")
    else:
        for on in (True, False):
            key = "prefix_caching_on" if on else "prefix_caching_off"
            with ctx.gateway(f"gateway-chain-{key}", flags, prefix_caching=on) as gw:
                await chains(ctx, gw, "warm-up", count=1, turns=2)
                figures[key] = await chains(ctx, gw, key.replace("_", " "))
    ctx.figures["10"] = figures
    last = str(plan.chain_turns)
    for key, data in figures.items():
        r = ratio(data["ttft_ms_by_turn"][last], data["ttft_ms_by_turn"]["1"])
        figure = f"Responses chain: TTFT p50 turn {last} / turn 1, {key.replace('_', ' ')}"
        if key == "prefix_caching_on":
            ctx.check(10, figure, r, "<= 1.5", at_most(r, 1.5), "x")
        else:
            ctx.check(10, figure, r, "(for comparison)", None, "x")


async def chains(
    ctx: Context, gw: peers.Server, label: str, *, count: int | None = None, turns: int | None = None
) -> Figures:
    """`count` chains of `turns` streamed turns, one after the other: TTFT p50 and prompt tokens by turn."""
    plan = ctx.plan
    count, turns = count or plan.chain_count, turns or plan.chain_turns
    ttfts: dict[int, list[float]] = {t: [] for t in range(1, turns + 1)}
    prompts: dict[int, list[int]] = {t: [] for t in range(1, turns + 1)}
    with ctx.ui.step(f"{label}: {count} chains x {turns} turns", count * turns) as advance:
        async with httpx.AsyncClient(base_url=gw.url, timeout=120) as client:
            for chain in range(count):
                previous: str | None = None
                for turn in range(1, turns + 1):
                    body: dict[str, Any] = {
                        "input": f"Chain {chain}, turn {turn}: go on.",
                        "stream": True,
                        "max_output_tokens": plan.chain_tokens,
                    }
                    if previous is not None:
                        body["previous_response_id"] = previous
                    ttft, response = await _turn(client, body)
                    previous = response["id"]
                    ttfts[turn].append(ttft * 1000)
                    prompts[turn].append(response["usage"]["input_tokens"])
                    advance(1)
    return {
        "chains": count,
        "turns": turns,
        "ttft_ms_by_turn": {str(t): statistics.median(v) for t, v in ttfts.items()},
        "prompt_tokens_by_turn": {str(t): statistics.median(v) for t, v in prompts.items()},
    }


async def _turn(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """One streamed turn: (seconds to its first text delta, the finished response)."""
    started = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", "/v1/responses", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "response.output_text.delta" and first is None:
                first = time.perf_counter() - started
            elif event["type"] in ("response.completed", "response.incomplete"):
                response: dict[str, Any] = event["response"]
                return (first if first is not None else time.perf_counter() - started), response
            elif event["type"] in ("response.failed", "error"):
                raise peers.PeerFailed(f"a chain turn failed: {line[:300]}")
    raise peers.PeerFailed("a chain turn's stream ended without its response")
