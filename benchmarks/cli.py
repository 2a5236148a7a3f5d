"""`python -m benchmarks` / `chatstream-gateway bench`: the scenario suite, or one load against one target.

python -m benchmarks suite --quick --model models/tiny --out DIR     # what `make bench` runs
python -m benchmarks suite --model models/tiny --out DIR             # all eight scenarios (`make bench-full`)
python -m benchmarks suite --scenarios 2,8 --baseline /tmp/main --out DIR  # admission, beside another checkout
python -m benchmarks load --target openai --url http://127.0.0.1:8000 --model NAME --concurrency 1,16,64
python -m benchmarks load --target chat_stream --url URL --rate 5 --num-requests 200
python -m benchmarks load --target chat_stream --url URL --turns 20 --conversations 8 --concurrency 4
python -m benchmarks load --target engine --model models/tiny --concurrency 1,8,64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks import client, records, report
from benchmarks import plan as plans
from benchmarks.client.engine import engine_target
from benchmarks.scenarios import run_suite
from benchmarks.ui import UI, print_table


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


async def _suite(args: argparse.Namespace) -> int:
    scenarios = _ints(args.scenarios) if args.scenarios else plans.SCENARIOS
    make = plans.quick_plan if args.quick else plans.full_plan
    plan = make(args.model, Path(args.out), scenarios)
    if args.no_profile:
        plan = dataclasses.replace(plan, profile=False)
    if args.baseline:
        plan = dataclasses.replace(plan, baseline=Path(args.baseline))
    plan.out.mkdir(parents=True, exist_ok=True)
    load_start = list(os.getloadavg())
    started = time.monotonic()
    with UI(enabled=not args.no_progress) as ui:
        suite = await run_suite(plan, ui)
    result: dict[str, Any] = {
        "environment": report.environment(),
        "load_average_start": load_start,
        "duration_s": time.monotonic() - started,
        "scenario_seconds": suite.seconds,
        "plan": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(plan).items()},
        "scenarios": suite.figures,
        "checks": [c.as_dict() for c in suite.checks],
        "definitions": records.__doc__,
    }
    report.write_json(result, plan.out)
    plots = report.write_plots(result, plan.out)
    report.write_markdown(result, plots, plan.out)
    report.print_summary(result)
    print(f"results in {plan.out}", file=sys.stderr)
    return 0


@contextlib.asynccontextmanager
async def _target(args: argparse.Namespace) -> AsyncIterator[client.Target]:
    """The target `--target` names, closed (or, for the engine, stopped) afterwards."""
    if args.target == "engine":
        if not args.model:
            raise SystemExit("--target engine needs --model DIR")
        async with engine_target(args.model) as engine:
            yield engine
        return
    if not args.url:
        raise SystemExit(f"--target {args.target} needs --url")
    target: client.Target
    if args.target == "chat_stream":
        target = client.ChatStreamTarget("chat_stream", args.url)
    elif args.target == "openai":
        target = client.OpenAIChatTarget("openai", args.url, args.model or "")
    else:
        target = client.PlainTextTarget("plain_text", args.url)
    try:
        yield target
    finally:
        await target.close()


async def _load(args: argparse.Namespace) -> int:
    slo = records.SLO(args.ttft_slo, args.tpot_slo)
    concurrencies = _ints(args.concurrency)
    runs: dict[str, Any] = {}
    async with _target(args) as target:
        with UI(enabled=not args.no_progress) as ui:
            if args.turns > 1:
                c = concurrencies[0]
                with ui.step(f"{args.conversations} x {args.turns} turns", args.conversations * args.turns) as adv:
                    res = await client.multi_turn(target, args.conversations, args.turns, c, args.max_tokens, adv)
                runs[f"multi-turn c={c}"] = records.summarise(res.records, res.duration, slo)
                for turn in range(1, args.turns + 1):
                    recs = [r for r in res.records if r.turn == turn]
                    runs[f"turn {turn}"] = records.summarise(recs, res.duration, slo)
            elif args.rate:
                with ui.step(f"poisson {args.rate} req/s", args.num_requests) as adv:
                    res = await client.poisson(
                        target, args.rate, args.num_requests, args.max_tokens, adv, concurrencies[0] or None
                    )
                runs[f"rate={args.rate}"] = records.summarise(res.records, res.duration, slo)
            else:
                for c in concurrencies:
                    n = args.num_requests or max(16, 2 * c)
                    with ui.step(f"c={c}", n) as adv:
                        res = await client.fixed_concurrency(target, c, n, args.max_tokens, adv)
                    runs[f"c={c}"] = records.summarise(res.records, res.duration, slo)
    rows = [
        [
            name,
            f"{s['completed']}/{s['requests']}",
            f"{s['output_throughput']:.0f}",
            f"{s['request_throughput']:.2f}",
            f"{s['goodput']:.2f}",
            f"{s['ttft_ms']['p50'] or 0:.0f}",
            f"{s['ttft_ms']['p99'] or 0:.0f}",
            f"{s['itl_ms']['p50'] or 0:.1f}",
            f"{s['tpot_ms']['p50'] or 0:.1f}",
            json.dumps(s["refused_by_status"]),
            str(s["errors"]),
        ]
        for name, s in runs.items()
    ]
    cols = [
        "run",
        "ok",
        "tok/s",
        "req/s",
        "goodput",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "TPOT p50",
        "refused",
        "errors",
    ]
    print_table(f"{args.target} load (ms)", cols, rows)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        body = {"environment": report.environment(), "args": vars(args), "runs": runs}
        (out / "load.json").write_text(json.dumps(body, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatstream-gateway bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    suite = commands.add_parser("suite", help="run the scenarios, starting every server itself")
    suite.add_argument("--model", default="models/tiny", help="model directory served by every peer")
    suite.add_argument("--out", required=True, help="directory for results.json, report.md and the PNGs")
    suite.add_argument("--quick", action="store_true", help="small sizes, a few targets: proves the harness works")
    suite.add_argument("--scenarios", default="", help="comma-separated scenario numbers (default all)")
    suite.add_argument("--no-profile", action="store_true", help="skip the py-spy pass over the gateway")
    suite.add_argument("--no-progress", action="store_true", help="no progress bars")
    suite.add_argument(
        "--baseline",
        help="a checkout of another gateway version (e.g. main) that scenarios 2, 5, 7 and 8 also measure, in one run",
    )

    one = commands.add_parser("load", help="drive one running target with one load shape")
    one.add_argument("--target", choices=["chat_stream", "openai", "plain", "engine"], required=True)
    one.add_argument("--url", help="base URL of the server (not for --target engine)")
    one.add_argument("--model", help="model name for OpenAI requests; model directory for --target engine")
    one.add_argument("--concurrency", default="8", help="users at once; a comma list is a sweep [8]")
    one.add_argument("--num-requests", type=int, default=0, help="requests per level [max(16, 2 x concurrency)]")
    one.add_argument("--rate", type=float, default=0.0, help="Poisson arrivals per second (open loop)")
    one.add_argument("--turns", type=int, default=1, help="turns per conversation (multi-turn when > 1)")
    one.add_argument("--conversations", type=int, default=8, help="conversations in a multi-turn run")
    one.add_argument("--max-tokens", type=int, default=64, help="output tokens per answer (OpenAI, engine)")
    one.add_argument("--ttft-slo", type=float, default=None, help="goodput: TTFT bound in ms")
    one.add_argument("--tpot-slo", type=float, default=None, help="goodput: TPOT bound in ms")
    one.add_argument("--out", help="directory for load.json")
    one.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runner = _suite if args.command == "suite" else _load
    return asyncio.run(runner(args))
