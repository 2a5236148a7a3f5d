"""The six scenarios of the suite: each records its figures (JSON-able) and its checks against targets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import load, peers
from benchmarks.httpclient import Connection, HTTPError, sse_events
from benchmarks.plan import Plan
from benchmarks.records import SLO, distribution, percentile, summarise
from benchmarks.targets import ChatStreamTarget, EngineTarget, OpenAIChatTarget, PlainTextTarget, Target
from benchmarks.ui import UI

Figures = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Check:
    """One figure against its target: `met` is None where there is nothing to compare."""

    scenario: int
    figure: str
    value: float | None
    target: str
    met: bool | None
    unit: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "figure": self.figure,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
        }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _at_least(value: float | None, bound: float) -> bool | None:
    return None if value is None else value >= bound


def _at_most(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


class Suite:
    """Runs the scenarios of a plan, one server at a time, and collects figures and checks."""

    def __init__(self, plan: Plan, ui: UI) -> None:
        self.plan = plan
        self.ui = ui
        self.logs = plan.out / "logs"
        self.figures: dict[str, Figures] = {}
        self.checks: list[Check] = []
        self.model = str(Path(plan.model).resolve())

    # --- servers ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _server(self, name: str, command: list[str], port: int, timeout: float = 300.0) -> Iterator[peers.Server]:
        self.ui.note(f"starting {name}")
        with peers.running(name, command, port, self.logs, timeout=timeout, model=self.model) as server:
            self.ui.note(f"{name} ready at {server.url} (pid {server.pid})")
            yield server

    def _gateway(self, name: str, **kwargs: Any) -> contextlib.AbstractContextManager[peers.Server]:
        port = peers.free_port()
        return self._server(name, peers.gateway_command(self.model, port, **kwargs), port)

    def _null_gateway(self, name: str, **kwargs: Any) -> contextlib.AbstractContextManager[peers.Server]:
        port = peers.free_port()
        return self._server(name, peers.null_gateway_command(port, **kwargs), port, timeout=60)

    @asynccontextmanager
    async def _engine(self) -> AsyncIterator[EngineTarget]:
        from gateway.core.vllm_engine import VLLMEngine

        self.ui.note("starting the in-process engine")
        engine = VLLMEngine(self.model, {"enable_prefix_caching": True})
        await engine.start()
        try:
            yield EngineTarget("engine", engine)
        finally:
            await engine.stop()

    async def _run_fixed(self, target: Target, concurrency: int, n: int, max_tokens: int, label: str) -> Figures:
        with self.ui.step(f"{label} c={concurrency}", n) as advance:
            result = await load.fixed_concurrency(target, concurrency, n, max_tokens, advance)
        await target.close()
        return summarise(result.records, result.duration, SLO(self.plan.slo_ttft_ms, self.plan.slo_tpot_ms))

    async def _warm_up(self, target: Target, max_tokens: int) -> None:
        await self._run_fixed(target, 4, 8, max_tokens, f"{target.name} warm-up")

    # --- 1. sweep ------------------------------------------------------------------------

    async def _sweep_one(self, target: Target, results: dict[str, Any]) -> None:
        await self._warm_up(target, self.plan.max_tokens)
        levels: dict[str, Figures] = {}
        for c in self.plan.sweep:
            n = self.plan.requests_at(c, target.name)
            levels[str(c)] = await self._run_fixed(target, c, n, self.plan.max_tokens, target.name)
            s = levels[str(c)]
            self.ui.note(
                f"{target.name} c={c}: {s['output_throughput']:.0f} tok/s, TTFT p50 {s['ttft_ms']['p50'] or 0:.0f} ms"
                f" p99 {s['ttft_ms']['p99'] or 0:.0f} ms, refused {s['refused_by_status']}, errors {s['errors']}"
            )
        results[target.name] = levels

    async def scenario_sweep(self) -> None:
        plan = self.plan
        results: dict[str, Any] = {}
        targets = plan.sweep_targets
        # A peer that fails to start costs its own lines, not the other targets' figures.
        if "engine" in targets:
            try:
                async with self._engine() as engine_target:
                    await self._sweep_one(engine_target, results)
            except Exception as exc:  # vLLM raises its own error types when an engine cannot start
                results["engine"] = {"skipped": f"the in-process engine failed: {exc}"[:500]}
        if any(t.startswith("gateway") for t in targets):
            try:
                with self._gateway("gateway", concurrency=256, queue_size=1024, max_new_tokens=plan.max_tokens) as gw:
                    await self._sweep_gateway(gw, results)
            except peers.PeerFailed as exc:
                results["gateway-chat_stream"] = {"skipped": str(exc)[:500]}
        if "vllm-server" in targets:
            port = peers.free_port()
            try:
                with self._server("vllm-server", peers.vllm_server_command(self.model, port), port) as vs:
                    await self._sweep_one(OpenAIChatTarget("vllm-server", vs.url, self.model), results)
            except peers.PeerFailed as exc:
                results["vllm-server"] = {"skipped": str(exc)[:500]}
        if "original" in targets:
            port = peers.free_port()
            try:
                peers.ensure_original_venv()
                command = peers.original_command(self.model, port, max_new_tokens=plan.max_tokens)
                with self._server("original", command, port) as orig:
                    await self._sweep_one(PlainTextTarget("original", orig.url), results)
            except (peers.PeerFailed, subprocess.CalledProcessError) as exc:
                results["original"] = {"skipped": str(exc)[:500]}
        self.figures["1"] = {"max_tokens": plan.max_tokens, "targets": results}
        self._sweep_checks(results)

    async def _sweep_gateway(self, gw: peers.Server, results: dict[str, Any]) -> None:
        plan, targets = self.plan, self.plan.sweep_targets
        if "gateway-chat_stream" in targets:
            await self._sweep_one(ChatStreamTarget("gateway-chat_stream", gw.url), results)
        if "gateway-openai" in targets:
            if await _has_openai_route(gw.url, self.model):
                await self._sweep_one(OpenAIChatTarget("gateway-openai", gw.url, self.model), results)
            else:
                self.ui.note("the gateway has no /v1/chat/completions: gateway-openai skipped")
                results["gateway-openai"] = {"skipped": "the gateway served no /v1/chat/completions"}
        if plan.profile:
            self.figures["profile"] = await self._profile(gw)
        if plan.quick and 4 in plan.scenarios:
            self.figures["4"] = {"prefix_caching_on": await self._conversations(gw, "gateway (prefix on)")}

    def _sweep_checks(self, results: dict[str, Any]) -> None:
        top = str(64 if 64 in self.plan.sweep else max(self.plan.sweep))

        def tput(name: str) -> float | None:
            level = results.get(name, {}).get(top)
            return None if not isinstance(level, dict) else float(level["output_throughput"])

        def ttft50(name: str) -> float | None:
            level = results.get(name, {}).get(top)
            return None if not isinstance(level, dict) else level["ttft_ms"]["p50"]

        gw, gw_oa = tput("gateway-chat_stream"), tput("gateway-openai")
        eng, vs, orig = tput("engine"), tput("vllm-server"), tput("original")
        c = f"c={top}"
        r = _ratio(gw, eng)
        self.checks.append(
            Check(1, f"gateway /chat_stream / in-process engine tokens/s, {c}", r, ">= 0.9", _at_least(r, 0.9), "x")
        )
        r = _ratio(gw, vs)
        self.checks.append(
            Check(1, f"gateway /chat_stream / vLLM server tokens/s, {c}", r, ">= 1.5", _at_least(r, 1.5), "x")
        )
        r = _ratio(gw_oa, vs)
        self.checks.append(
            Check(1, f"gateway /v1/chat/completions / vLLM server tokens/s, {c}", r, ">= 1.5", _at_least(r, 1.5), "x")
        )
        a, b = ttft50("gateway-openai"), ttft50("vllm-server")
        r = _ratio(a, b)
        self.checks.append(
            Check(1, f"gateway OpenAI TTFT p50 / vLLM server TTFT p50, {c}", r, "<= 1.0", _at_most(r, 1.0), "x")
        )
        r = _ratio(gw, orig)
        self.checks.append(
            Check(1, f"gateway /chat_stream / original ChatStream tokens/s, {c}", r, ">= 20", _at_least(r, 20), "x")
        )

    async def _profile(self, gw: peers.Server) -> Figures:
        """py-spy on the gateway process during one extra c=64 run (not counted in the sweep)."""
        spy = shutil.which("py-spy") or str(Path(peers.__file__).parents[1] / ".venv" / "bin" / "py-spy")
        if not Path(spy).exists():
            return {"skipped": "py-spy is not installed"}
        raw = self.plan.out / "profile-gateway.txt"
        proc = subprocess.Popen(
            [spy, "record", "--pid", str(gw.pid), "--format", "raw", "--rate", "100", "--nonblocking", "-o", str(raw)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(1.0)
            target = ChatStreamTarget("gateway-chat_stream", gw.url)
            figures = await self._run_fixed(target, 64, 640, self.plan.max_tokens, "profiling gateway")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        return {"output_throughput_while_profiled": figures["output_throughput"], **summarise_profile(raw)}

    # --- 2. overload -----------------------------------------------------------------------

    async def scenario_overload(self) -> None:
        plan = self.plan
        kwargs: dict[str, Any] = {
            "concurrency": plan.overload_slots,
            "queue_size": plan.overload_queue,
            "max_new_tokens": plan.max_tokens,
        }
        # The zero-cost engine (tokens 10 ms apart) shows the gateway's own refusal path with
        # the CPU to itself; on the real engine the engine's processes share the two cores.
        with self._null_gateway("gateway-overload-null", token_delay=0.01, **kwargs) as gw:
            null = await self._overload(gw)
        if plan.quick:
            figures = {**null, "engine": "null (zero-cost) engine, 10 ms per token"}
        else:
            with self._gateway("gateway-overload", **kwargs) as gw:
                figures = {**await self._overload(gw), "engine": "vLLM, tiny model"}
            figures["null_engine"] = null
        self.figures["2"] = figures
        r = _ratio(figures["admitted_ttft_p99_overload_ms"], figures["admitted_ttft_p99_capacity_ms"])
        self.checks.append(Check(2, "admitted TTFT p99, 4x overload / at capacity", r, "<= 2", _at_most(r, 2.0), "x"))
        p429 = figures["refusal_ms"]["p99"]
        self.checks.append(Check(2, "time to a 429, p99", p429, "< 10 ms", None if p429 is None else p429 < 10, "ms"))
        if not plan.quick:
            p429 = null["refusal_ms"]["p99"]
            met = None if p429 is None else p429 < 10
            self.checks.append(Check(2, "time to a 429, p99, zero-cost engine", p429, "< 10 ms", met, "ms"))
        other = figures["neither"]
        self.checks.append(Check(2, "requests neither a complete stream nor a 429/503", float(other), "0", other == 0))

    async def _overload(self, gw: peers.Server) -> Figures:
        """At capacity (slots + queue users, closed loop), then Poisson arrivals at 4x the rate served."""
        plan = self.plan
        target = ChatStreamTarget("gateway-overload", gw.url)
        await self._warm_up(target, plan.max_tokens)
        capacity = plan.overload_slots + plan.overload_queue
        base = await load.fixed_concurrency(target, capacity, capacity * (3 if plan.quick else 8), plan.max_tokens)
        await target.close()
        base_rate = sum(1 for r in base.records if r.ok) / base.duration
        rate = plan.overload_factor * base_rate
        n = max(10, int(rate * plan.overload_seconds))
        with self.ui.step(f"overload {rate:.1f} req/s", n) as advance:
            async with loop_lag() as lags:
                over = await load.poisson(target, rate, n, plan.max_tokens, advance)
        await target.close()
        base_ok = [r.ttft for r in base.records if r.ok and r.ttft is not None]
        over_ok = [r.ttft for r in over.records if r.ok and r.ttft is not None]
        refused = [r for r in over.records if r.status in (429, 503)]
        complete = [r for r in over.records if r.ok and r.output_tokens == plan.max_tokens]
        other = [r for r in over.records if r not in complete and r.status not in (429, 503)]
        p_base, p_over = percentile(base_ok, 99), percentile(over_ok, 99)
        return {
            "slots": plan.overload_slots,
            "queue": plan.overload_queue,
            "capacity_rate_rps": base_rate,
            "offered_rate_rps": rate,
            "at_capacity": summarise(base.records, base.duration),
            "overload": summarise(over.records, over.duration),
            "admitted_ttft_p99_capacity_ms": None if p_base is None else p_base * 1000,
            "admitted_ttft_p99_overload_ms": None if p_over is None else p_over * 1000,
            "refusal_ms": distribution([r.e2e for r in refused]),
            "client_loop_lag_ms": distribution(lags),
            "complete_streams": len(complete),
            "refused_429_503": len(refused),
            "neither": len(other),
            "neither_examples": [{"status": r.status, "error": r.error, "tokens": r.output_tokens} for r in other[:5]],
        }

    # --- 3. disconnect storm ----------------------------------------------------------------

    async def scenario_storm(self) -> None:
        plan = self.plan
        n = plan.storm_streams
        if plan.quick:
            server_cm = self._null_gateway(
                "gateway-storm", concurrency=n + 8, queue_size=n, max_new_tokens=5000, token_delay=0.02
            )
        else:
            server_cm = self._gateway(
                "gateway-storm",
                concurrency=n + 8,
                queue_size=n,
                max_new_tokens=1024,
                extra=["--engine-arg", f"max_num_seqs={n + 8}"],
            )
        with server_cm as gw:  # no warm-up: every /chat_stream answer here is long by design
            figures = await _storm(gw, n, self.ui)
        self.figures["3"] = figures
        t = figures["seconds_to_idle"]
        self.checks.append(
            Check(3, "time until engine and admission are back to 0", t, "< 1 s", None if t is None else t < 1.0, "s")
        )
        got = figures["callbacks_by_state"].get("client_disconnected_while_streaming", 0)
        self.checks.append(
            Check(
                3,
                "client_disconnected_while_streaming callbacks",
                float(got),
                f"exactly {n}",
                got == n == figures["streams_cut"],
            )
        )

    # --- 4. multi-turn ------------------------------------------------------------------------

    async def _conversations(self, gw: peers.Server, label: str) -> Figures:
        plan = self.plan
        target = ChatStreamTarget(label, gw.url)
        total = plan.conversations * plan.turns
        with self.ui.step(f"{label}: {plan.conversations} x {plan.turns} turns", total) as advance:
            result = await load.multi_turn(
                target, plan.conversations, plan.turns, plan.conversation_users, plan.turn_tokens, advance
            )
        await target.close()
        by_turn: dict[str, Any] = {}
        for turn in range(1, plan.turns + 1):
            recs = [r for r in result.records if r.turn == turn and r.ok]
            by_turn[str(turn)] = {
                "n": len(recs),
                "ttft_ms": distribution([r.ttft for r in recs if r.ttft is not None]),
                "prompt_tokens": (sum(r.prompt_tokens for r in recs) / len(recs)) if recs else None,
            }
        return {"summary": summarise(result.records, result.duration), "by_turn": by_turn}

    async def scenario_multi_turn(self) -> None:
        plan = self.plan
        if plan.quick:
            if "4" not in self.figures:  # the sweep's gateway did not run: start one
                with self._gateway("gateway-turns", max_new_tokens=plan.turn_tokens) as gw:
                    self.figures["4"] = {"prefix_caching_on": await self._conversations(gw, "prefix caching on")}
        else:
            figures: Figures = {}
            for on in (True, False):
                key = "prefix_caching_on" if on else "prefix_caching_off"
                with self._gateway(f"gateway-turns-{key}", max_new_tokens=plan.turn_tokens, prefix_caching=on) as gw:
                    await self._warm_up(ChatStreamTarget("warm", gw.url), plan.turn_tokens)
                    figures[key] = await self._conversations(gw, key.replace("_", " "))
            self.figures["4"] = figures
        last = str(plan.turns)
        for key, verdict in (("prefix_caching_on", True), ("prefix_caching_off", False)):
            by_turn = self.figures["4"].get(key, {}).get("by_turn")
            if not by_turn:
                continue
            r = _ratio(by_turn[last]["ttft_ms"]["p50"], by_turn["1"]["ttft_ms"]["p50"])
            if verdict:
                self.checks.append(
                    Check(4, f"TTFT p50 turn {last} / turn 1, prefix caching on", r, "<= 1.5", _at_most(r, 1.5), "x")
                )
            else:
                self.checks.append(
                    Check(4, f"TTFT p50 turn {last} / turn 1, prefix caching off", r, "(for comparison)", None, "x")
                )

    # --- 5. gateway-only ceiling ---------------------------------------------------------------

    async def scenario_ceiling(self) -> None:
        plan = self.plan
        with self._null_gateway(
            "gateway-null-engine", concurrency=256, queue_size=1024, max_new_tokens=plan.ceiling_tokens
        ) as gw:
            target = ChatStreamTarget("gateway-null", gw.url)
            await self._warm_up(target, plan.ceiling_tokens)
            server_cpu0, client_cpu0 = gw.cpu_seconds(), time.process_time()
            figures = await self._run_fixed(
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
        self.figures["5"] = result
        self.checks.append(
            Check(5, "gateway CPU per streamed token", result["gateway_us_per_token"], "(measure)", None, "µs")
        )
        self.checks.append(
            Check(5, "gateway tokens/s per core", result["gateway_tokens_per_s_per_core"], "(measure)", None, "tok/s")
        )

    # --- 6. memory --------------------------------------------------------------------------------

    async def scenario_memory(self) -> None:
        plan = self.plan
        sessions = plan.memory_requests + plan.memory_warmup
        with self._null_gateway(
            "gateway-memory",
            concurrency=256,
            queue_size=1024,
            max_new_tokens=16,
            extra=["--max-sessions", str(sessions * 2)],
        ) as gw:
            target = ChatStreamTarget("gateway-memory", gw.url)
            await self._run_fixed(target, plan.memory_users, plan.memory_warmup, 16, "memory warm-up")
            rss0 = gw.rss_bytes()
            figures = await self._run_fixed(target, plan.memory_users, plan.memory_requests, 16, "memory")
            rss1 = gw.rss_bytes()
        growth = (rss1 - rss0) / 2**20
        self.figures["6"] = {
            "engine": "null (zero-cost) engine",
            "requests": plan.memory_requests,
            "sessions": plan.memory_requests,
            "rss_before_mb": rss0 / 2**20,
            "rss_after_mb": rss1 / 2**20,
            "growth_mb": growth,
            "growth_bytes_per_session": (rss1 - rss0) / plan.memory_requests,
            "load": figures,
        }
        self.checks.append(
            Check(
                6, f"RSS growth over {plan.memory_requests} requests / sessions", growth, "< 50 MB", growth < 50, "MB"
            )
        )

    # --- all ------------------------------------------------------------------------------------

    async def run(self) -> None:
        steps: dict[int, Callable[[], Any]] = {
            1: self.scenario_sweep,
            5: self.scenario_ceiling,
            6: self.scenario_memory,
            2: self.scenario_overload,
            3: self.scenario_storm,
            4: self.scenario_multi_turn,
        }
        for number, step in steps.items():
            if number in self.plan.scenarios:
                started = time.monotonic()
                try:
                    await step()
                except peers.PeerFailed as exc:
                    self.ui.note(f"scenario {number} failed: {exc}")
                    self.figures[str(number)] = {"failed": str(exc)[-2000:]}
                self.figures.setdefault("timings_s", {})[str(number)] = time.monotonic() - started


@asynccontextmanager
async def loop_lag(interval: float = 0.005) -> AsyncIterator[list[float]]:
    """How late the client's own event loop wakes up (s): a busy client inflates the latencies it measures."""
    lags: list[float] = []

    async def tick() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(interval)
            lags.append(time.perf_counter() - before - interval)

    task = asyncio.create_task(tick())
    try:
        yield lags
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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


async def _metrics(conn: Connection) -> dict[str, float]:
    response = await conn.request("GET", "/metrics")
    return peers.parse_prometheus((await response.read()).decode())


def _states(metrics: dict[str, float], route: str = "chat_stream") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key.startswith("chatstream:requests_total{") and f'route="{route}"' in key:
            state = key.split('state="', 1)[1].split('"', 1)[0]
            out[state] = value
    return out


async def _storm(gw: peers.Server, n: int, ui: UI) -> Figures:
    """Open `n` streams, wait until every one has had a delta, cut them all at once, time the clean-up."""
    probe = Connection(gw.url)
    before = _states(await _metrics(probe))
    conns = [Connection(gw.url) for _ in range(n)]
    streaming = 0
    all_streaming = asyncio.Event()

    async def stream(conn: Connection, i: int) -> None:
        nonlocal streaming
        response = await conn.request("POST", "/chat_stream", json_body={"user_input": load.make_prompt(i)})
        buffer, seen = bytearray(), False
        async for chunk in response.chunks():
            if not seen and any(e == "delta" for e, _ in sse_events(buffer, chunk)):
                seen = True
                streaming += 1
                if streaming == n:
                    all_streaming.set()
            buffer.clear()

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
        m = await _metrics(probe)
        samples += 1
        now = time.perf_counter() - cut_at
        if (
            admission_zero is None
            and m.get("chatstream:num_requests_running") == 0
            and m.get("chatstream:num_requests_waiting") == 0
        ):
            admission_zero = now
        if engine_zero is None and m.get("chatstream:engine_num_requests_running") == 0:
            engine_zero = now
        await asyncio.sleep(0.005)
    deadline = time.monotonic() + 10
    while True:  # callbacks may land after the gauges drop: wait for all of them, briefly
        after = _states(await _metrics(probe))
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


async def _client_cost_httpx(url: str, users: int, n: int) -> float | None:
    """Client CPU µs per token when the same load is read with httpx instead of raw streams."""
    import httpx

    tokens = 0
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=users * 2, max_keepalive_connections=users * 2)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def user() -> None:
            nonlocal tokens
            for i in counter:
                client.cookies.clear()
                async with client.stream("POST", "/chat_stream", json={"user_input": load.make_prompt(i)}) as r:
                    buffer = bytearray()
                    async for chunk in r.aiter_raw():
                        for event, data in sse_events(buffer, chunk):
                            if event == "done":
                                tokens += int(json.loads(data)["usage"]["completion_tokens"])

        cpu0 = time.process_time()
        await asyncio.gather(*(user() for _ in range(users)))
        cpu = time.process_time() - cpu0
    return cpu / tokens * 1e6 if tokens else None


def summarise_profile(raw: Path, top: int = 15) -> Figures:
    """Self and inclusive sample shares of the busiest functions, from py-spy's collapsed stacks."""
    if not raw.exists():
        return {"skipped": "py-spy wrote no profile (ptrace not permitted?)"}
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            f.split(" (", 1)[0] + " (" + f.split(" (", 1)[1].rsplit(":", 1)[0] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        total += count
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for f in set(frames):
            incl_counts[f] = incl_counts.get(f, 0) + count

    def top_of(counts: dict[str, int]) -> list[dict[str, Any]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [{"function": f, "share": c / total} for f, c in ranked]

    return {"samples": total, "file": raw.name, "top_self": top_of(self_counts), "top_inclusive": top_of(incl_counts)}
