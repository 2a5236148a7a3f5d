"""Scenario 3: a disconnect storm. Open many streams, cut them all at once, time the clean-up.

What should hold: the engine and admission are back to 0 within a second, and
every cut stream fires exactly one `client_disconnected_while_streaming`
callback (read from the gateway's `chatstream:requests_total`).
"""

from __future__ import annotations

import asyncio
import time

from benchmarks import peers
from benchmarks.client import Connection, Metrics, SSEDecoder, make_prompt, read_metrics
from benchmarks.scenarios.checks import below
from benchmarks.scenarios.context import Context, Figures
from benchmarks.ui import UI


async def run(ctx: Context) -> None:
    plan = ctx.plan
    n = plan.storm_streams
    if plan.quick:
        flags = peers.GatewayFlags(concurrency=n + 8, queue_size=n, max_new_tokens=5000)
        server = ctx.null_gateway("gateway-storm", flags, token_delay=0.02)
    else:
        extra = ["--engine-arg", f"max_num_seqs={n + 8}"]
        server = ctx.gateway(
            "gateway-storm", peers.GatewayFlags(concurrency=n + 8, queue_size=n, max_new_tokens=1024, extra=extra)
        )
    with server as gw:  # no warm-up: every /chat_stream answer here is long by design
        figures = await _storm(gw, n, ctx.ui)
    ctx.figures["3"] = figures
    t = figures["seconds_to_idle"]
    ctx.check(3, "time until engine and admission are back to 0", t, "< 1 s", below(t, 1.0), "s")
    got = figures["callbacks_by_state"].get("client_disconnected_while_streaming", 0)
    met = got == n == figures["streams_cut"]
    ctx.check(3, "client_disconnected_while_streaming callbacks", float(got), f"exactly {n}", met)


def _states(metrics: Metrics) -> dict[str, float]:
    """Requests ended on `/chat_stream` so far, by completion state."""
    return metrics.by_label("chatstream:requests_total", "state", route="chat_stream")


async def _storm(gw: peers.Server, n: int, ui: UI) -> Figures:
    """Open `n` streams, wait until every one has had a delta, cut them all at once, time the clean-up."""
    probe = Connection(gw.url)
    before = _states(await read_metrics(probe))
    conns = [Connection(gw.url) for _ in range(n)]
    streaming = 0
    all_streaming = asyncio.Event()

    async def stream(conn: Connection, i: int) -> None:
        nonlocal streaming
        response = await conn.request("POST", "/chat_stream", json_body={"user_input": make_prompt(i)})
        decoder, seen = SSEDecoder(), False
        async for chunk in response.chunks():
            if not seen and any(e.name == "delta" for e in decoder.feed(chunk)):
                seen = True
                streaming += 1
                if streaming == n:
                    all_streaming.set()

    tasks = [asyncio.create_task(stream(c, i)) for i, c in enumerate(conns)]
    with ui.step(f"storm: {n} streams open", n) as advance:
        deadline = time.monotonic() + 180
        reported = 0
        while not all_streaming.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            advance(streaming - reported)
            reported = streaming
    cut = streaming
    cut_at = time.perf_counter()
    for conn in conns:
        conn.abort()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    admission_zero = engine_zero = None
    samples = 0
    while time.perf_counter() - cut_at < 30 and (admission_zero is None or engine_zero is None):
        m = await read_metrics(probe)
        samples += 1
        now = m.read_at - cut_at
        if (
            admission_zero is None
            and m.value("chatstream:num_requests_running") == 0
            and m.value("chatstream:num_requests_waiting") == 0
        ):
            admission_zero = now
        if engine_zero is None and m.value("chatstream:engine_num_requests_running") == 0:
            engine_zero = now
        await asyncio.sleep(0.005)
    deadline = time.monotonic() + 10
    while True:  # callbacks may land after the gauges drop: wait for all of them, briefly
        after = _states(await read_metrics(probe))
        fired = {k: int(v - before.get(k, 0)) for k, v in after.items() if v - before.get(k, 0)}
        if sum(fired.values()) >= n or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    probe.close()
    idle = None if admission_zero is None or engine_zero is None else max(admission_zero, engine_zero)
    return {
        "streams": n,
        "streams_cut": cut,
        "seconds_to_admission_zero": admission_zero,
        "seconds_to_engine_zero": engine_zero,
        "seconds_to_idle": idle,
        "metrics_samples": samples,
        "callbacks_by_state": fired,
    }
