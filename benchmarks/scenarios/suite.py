"""The suite: the plan's scenarios, one after the other, each with its timing and its failure kept apart."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from benchmarks import peers
from benchmarks.plan import Plan
from benchmarks.scenarios import (
    concurrency_sweep,
    disconnect_storm,
    fairness,
    frontend,
    gateway_ceiling,
    memory,
    multi_turn,
    overload,
    responses_chain,
    routing,
)
from benchmarks.scenarios.checks import Check
from benchmarks.scenarios.context import Context, Figures
from benchmarks.ui import UI

# In the order they run, which is the order of the committed runs (so their timings compare).
# The sweep runs first: in quick mode it measures scenario 4 on its own gateway.
SCENARIOS: dict[int, Callable[[Context], Awaitable[None]]] = {
    1: concurrency_sweep.run,
    5: gateway_ceiling.run,
    6: memory.run,
    2: overload.run,
    3: disconnect_storm.run,
    4: multi_turn.run,
    7: frontend.run,
    8: fairness.run,
    9: routing.run,
    10: responses_chain.run,
}


@dataclass
class SuiteResult:
    """Figures by scenario number (and "profile"), the checks, and each scenario's wall time (s)."""

    figures: dict[str, Figures]
    checks: list[Check]
    seconds: dict[str, float] = field(default_factory=dict)


async def run_suite(plan: Plan, ui: UI) -> SuiteResult:
    """Run the plan's scenarios; a peer that fails to start fails its scenario only."""
    ctx = Context(plan, ui)
    result = SuiteResult(ctx.figures, ctx.checks)
    for number, run in SCENARIOS.items():
        if number not in plan.scenarios:
            continue
        started = time.monotonic()
        try:
            await run(ctx)
        except peers.PeerFailed as exc:
            ui.note(f"scenario {number} failed: {exc}")
            ctx.figures[str(number)] = {"failed": str(exc)[-2000:]}
        result.seconds[str(number)] = time.monotonic() - started
    return result
