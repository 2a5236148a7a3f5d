"""The rows of the tables both the terminal summary and report.md show, and the terminal summary itself."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.ui import print_table

Result = dict[str, Any]

CHECK_COLUMNS = ["scenario", "figure", "value", "target", "verdict"]
SWEEP_COLUMNS = [
    "target",
    "concurrency",
    "output tok/s",
    "req/s",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "TPOT p50 ms",
    "goodput req/s",
    "requests",
]


FRONTEND_COLUMNS = [
    "server",
    "concurrency",
    "output tok/s",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "ITL p50 ms",
    "ITL p99 ms",
    "front-end µs/token",
    "of it kernel",
    "requests",
    "slices",
]


def fmt(value: Any, digits: int = 1) -> str:
    """A figure for a reader: thousands separated, `digits` decimals for floats, "-" where none was measured."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "-"}[met]


def check_rows(checks: list[dict[str, Any]]) -> list[list[str]]:
    """Every check, by scenario number."""
    checks = sorted(checks, key=lambda c: int(c["scenario"]))
    return [
        [
            str(c["scenario"]),
            c["figure"],
            fmt(c["value"], 2) + (f" {c['unit']}" if c["unit"] else ""),
            c["target"],
            _verdict(c["met"]),
        ]
        for c in checks
    ]


def sweep_rows(sweep: Result) -> list[list[str]]:
    """One row per target and concurrency level of scenario 1 (one row for a target that was skipped)."""
    rows = []
    for target, levels in sweep.get("targets", {}).items():
        if "skipped" in levels:
            rows.append([target, "-", "-", "-", "-", "-", "-", "-", levels["skipped"]])
            continue
        for c, s in levels.items():
            refused = ", ".join(f"{k}: {v}" for k, v in s["refused_by_status"].items()) or "0"
            rows.append(
                [
                    target,
                    c,
                    fmt(s["output_throughput"], 0),
                    fmt(s["request_throughput"], 2),
                    fmt(s["ttft_ms"]["p50"], 0),
                    fmt(s["ttft_ms"]["p99"], 0),
                    fmt(s["tpot_ms"]["p50"], 1),
                    fmt(s["goodput"], 2),
                    f"{s['completed']}/{s['requests']} ok; refused {refused}; errors {s['errors']}",
                ]
            )
    return rows


def pair_rows(sweep: Result, a: str, b: str, levels: Sequence[int]) -> list[list[str]]:
    """Target `a` beside target `b` at the given concurrencies: tokens/s, their ratio, TTFT p50/p99."""
    targets = sweep.get("targets", {})
    rows = []
    for c in levels:
        sa, sb = targets.get(a, {}).get(str(c)), targets.get(b, {}).get(str(c))
        if not isinstance(sa, dict) or not isinstance(sb, dict):
            continue
        ratio = sa["output_throughput"] / sb["output_throughput"] if sb["output_throughput"] else None
        rows.append(
            [
                str(c),
                fmt(sa["output_throughput"], 0),
                fmt(sb["output_throughput"], 0),
                fmt(ratio, 2),
                f"{fmt(sa['ttft_ms']['p50'], 0)} / {fmt(sa['ttft_ms']['p99'], 0)}",
                f"{fmt(sb['ttft_ms']['p50'], 0)} / {fmt(sb['ttft_ms']['p99'], 0)}",
            ]
        )
    return rows


ROUTING_COLUMNS = [
    "router",
    "routing",
    "turn-1 TTFT p50 ms",
    "last-turn TTFT mean ms",
    "last-turn TTFT p50 / p90 ms",
    "output tok/s",
    "prefix-cache hit rate",
    "moved turns",
    "refused by replicas",
    "first turns by replica",
    "client lag p99 ms",
]
FAILOVER_COLUMNS = [
    "router",
    "conversations on the killed replica",
    "continued on the other",
    "finished every turn",
    "failed attempts after the kill",
    "seconds to continue p50 / max",
]


def routing_rows(routing: Result) -> list[list[str]]:
    """One row per router and routing of scenario 9."""
    rows = []
    for label, run in routing.get("runs", {}).items():
        kind, routing_name = label.rsplit(" ", 1)
        by_turn = run["by_turn"]
        last = by_turn[max(by_turn, key=int)]["ttft_ms"]
        summary = run["summary"]
        rows.append(
            [
                kind,
                routing_name,
                fmt(by_turn["1"]["ttft_ms"]["p50"], 0),
                fmt(last["mean"], 0),
                f"{fmt(last['p50'], 0)} / {fmt(last['p90'], 0)}",
                fmt(summary["output_throughput"], 1),
                "-" if run["prefix_cache_hit_rate"] is None else f"{run['prefix_cache_hit_rate']:.1%}",
                str(run["moved_turns"]),
                fmt(run["refused_by_replicas"], 0),
                ", ".join(f"{k}: {v}" for k, v in sorted(run["conversations_by_first_replica"].items())),
                fmt(run["client_loop_lag_ms"]["p99"], 1),
            ]
        )
    return rows


def failover_rows(routing: Result) -> list[list[str]]:
    """One row per router of scenario 9's failover phase."""
    failover = routing.get("failover", {})
    rows = []
    for kind in ("nginx", "vllm-router"):
        f = failover.get(kind)
        if not isinstance(f, dict):
            continue
        seconds = f["seconds_to_continue"]
        rows.append(
            [
                kind,
                str(f["conversations_on_killed_replica"]),
                str(f["continued_on_the_other"]),
                str(f["finished_all_turns"]),
                ", ".join(f"{k}: {v}" for k, v in f["failed_attempts_after_kill"].items()) or "0",
                f"{fmt(seconds['p50'], 1)} / {fmt(seconds['max'], 1)}",
            ]
        )
    return rows


def print_summary(result: Result) -> None:
    """The sweep and the checks, as terminal tables."""
    if "1" in result["scenarios"] and "targets" in result["scenarios"]["1"]:
        print_table("Scenario 1: concurrency sweep", SWEEP_COLUMNS, sweep_rows(result["scenarios"]["1"]))
    if "runs" in result["scenarios"].get("9", {}):
        print_table("Scenario 9: routing", ROUTING_COLUMNS, routing_rows(result["scenarios"]["9"]))
    print_table("Figures against targets", CHECK_COLUMNS, check_rows(result["checks"]))


def frontend_rows(frontend: dict[str, Any]) -> list[list[str]]:
    """Scenario 7: every server at every level."""
    rows = []
    for server, levels in frontend.get("servers", {}).items():
        for level, s in levels.items():
            rows.append(
                [
                    server,
                    level,
                    fmt(s["output_throughput"], 0),
                    fmt(s["ttft_ms"]["p50"], 0),
                    fmt(s["ttft_ms"]["p99"], 0),
                    fmt(s["itl_ms"]["p50"], 1),
                    fmt(s["itl_ms"]["p99"], 1),
                    fmt(s["frontend_us_per_token"], 1),
                    fmt(s.get("frontend_system_us_per_token"), 1),  # results from before the split: -
                    f"{s['completed']}/{s['requests']}",
                    str(s.get("slices", 1)),  # results from before the levels were sliced: 1
                ]
            )
    return rows
