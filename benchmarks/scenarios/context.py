"""What every scenario works with: the plan, the progress display, the peers it starts and what it records."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import peers
from benchmarks.client import LoadResult, Target, fixed_concurrency
from benchmarks.plan import Plan
from benchmarks.records import SLO, RequestRecord, summarise
from benchmarks.scenarios.checks import Check
from benchmarks.ui import UI

Figures = dict[str, Any]


def us_per_token(seconds: float, tokens: int) -> float | None:
    """CPU `seconds` spread over `tokens` streamed tokens, in µs (None: no token came)."""
    return seconds / tokens * 1e6 if tokens else None


@dataclass
class Share:
    """What one target got over its turns (`Context.take_turns`): its requests, their seconds, the CPU spent."""

    records: list[RequestRecord] = field(default_factory=list)
    seconds: float = 0.0  # the sum of its turns' durations
    server_cpu: peers.CPUTimes = field(default_factory=peers.CPUTimes)  # as the caller's `server_cpu` reads it
    client_cpu: float = 0.0  # this process's CPU while its turns ran


class Context:
    """One suite run: scenarios start their servers through it and leave their figures and checks in it.

    `figures` is keyed by scenario number as a string (the keys of results.json's
    "scenarios"); a scenario may fill another's entry when it measured it on
    the way (the quick sweep does scenario 4 on its own gateway).
    """

    def __init__(self, plan: Plan, ui: UI) -> None:
        self.plan = plan
        self.ui = ui
        self.model = str(Path(plan.model).resolve())
        self.figures: dict[str, Figures] = {}
        self.checks: list[Check] = []
        self._logs = plan.out / "logs"
        self.env = peers.peer_env()

    def check(
        self, scenario: int, figure: str, value: float | None, target: str, met: bool | None, unit: str = ""
    ) -> None:
        self.checks.append(Check(scenario, figure, value, target, met, unit))

    @contextlib.contextmanager
    def server(
        self, name: str, command: list[str], port: int, timeout: float = 300.0, source: Path | None = None
    ) -> Iterator[peers.Server]:
        """A peer running for the block (logs under `<out>/logs/<name>.log`).

        `source`: a checkout whose gateway runs instead of this one: the peer starts in it (`python -m`
        puts the working directory first on the path) with only it on PYTHONPATH.
        """
        self.ui.note(f"starting {name}")
        env = self.env if source is None else {**self.env, "PYTHONPATH": str(source.resolve())}
        with peers.running(name, command, port, self._logs, env, timeout=timeout, cwd=source) as server:
            self.ui.note(f"{name} ready at {server.url} (pid {server.pid})")
            yield server

    def gateway(
        self, name: str, flags: peers.GatewayFlags, *, prefix_caching: bool = True, source: Path | None = None
    ) -> contextlib.AbstractContextManager[peers.Server]:
        """The gateway on the real engine; `source`: another checkout's gateway (the plan's baseline)."""
        command = peers.gateway_command(self.model, flags, prefix_caching=prefix_caching)
        return self.server(name, command, flags.port, source=source)

    def null_gateway(
        self, name: str, flags: peers.GatewayFlags, *, token_delay: float = 0.0, source: Path | None = None
    ) -> contextlib.AbstractContextManager[peers.Server]:
        """The gateway over the zero-cost engine, which starts in seconds; `source`: another checkout's."""
        command = peers.null_gateway_command(flags, token_delay=token_delay)
        return self.server(name, command, flags.port, timeout=60, source=source)

    async def run_fixed(self, target: Target, concurrency: int, n: int, max_tokens: int, label: str) -> Figures:
        """`n` requests from `concurrency` users (closed loop), summarised against the plan's SLO."""
        result = await self.load_fixed(target, concurrency, n, max_tokens, f"{label} c={concurrency}")
        return self.summarise(result.records, result.duration)

    async def load_fixed(self, target: Target, concurrency: int, n: int, max_tokens: int, label: str) -> LoadResult:
        """`n` requests from `concurrency` users (closed loop), each request's record kept."""
        with self.ui.step(label, n) as advance:
            result = await fixed_concurrency(target, concurrency, n, max_tokens, advance)
        await target.close()
        return result

    async def take_turns(
        self,
        targets: Mapping[str, tuple[peers.Server, Target]],
        turns: int,
        concurrency: int,
        per_turn: int,
        max_tokens: int,
        *,
        server_cpu: Callable[[peers.Server], peers.CPUTimes],
        first: int = 0,
        settle_s: float = 0.0,
    ) -> dict[str, Share]:
        """`turns` loads of `per_turn` requests on every target, the targets taking turns (A B C, B C A, ...).

        Run one after the other, the figures of the last target would be taken minutes after the
        first's, on a machine whose speed drifts (the shared CPU, its neighbours); taken in turns,
        a slow minute falls on every target alike. The order starts at target `first` (a caller
        with several calls rotates on from call to call); before each turn, `settle_s` seconds
        for the previous turn's server to go idle.
        """
        names = list(targets)
        shares = {name: Share() for name in names}
        for k in range(turns):
            start = (first + k) % len(names)
            for name in names[start:] + names[:start]:
                server, target = targets[name]
                share = shares[name]
                await asyncio.sleep(settle_s)
                server_cpu0, client_cpu0 = server_cpu(server), time.process_time()
                label = f"{target.name} c={concurrency}" + (f" ({k + 1}/{turns})" if turns > 1 else "")
                result = await self.load_fixed(target, concurrency, per_turn, max_tokens, label)
                share.server_cpu = share.server_cpu.plus(server_cpu(server).minus(server_cpu0))
                share.client_cpu += time.process_time() - client_cpu0
                share.records += result.records
                share.seconds += result.duration
        return shares

    def summarise(self, records: list[RequestRecord], duration: float) -> Figures:
        """The figures of `records` over `duration` seconds, against the plan's SLO."""
        return summarise(records, duration, SLO(self.plan.slo_ttft_ms, self.plan.slo_tpot_ms))

    async def warm_up(self, target: Target, max_tokens: int) -> None:
        """A few requests first, so one-off costs (first compilation, caches) stay out of the figures."""
        await self.run_fixed(target, 4, 8, max_tokens, f"{target.name} warm-up")
