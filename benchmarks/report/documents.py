"""The files a run leaves for readers: results.json (every figure) and report.md (from `templates/report.md.j2`)."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2

from benchmarks.report.plots import PLOTS
from benchmarks.report.tables import (
    CHECK_COLUMNS,
    FAILOVER_COLUMNS,
    FRONTEND_COLUMNS,
    ROUTING_COLUMNS,
    SWEEP_COLUMNS,
    Result,
    check_rows,
    failover_rows,
    fmt,
    frontend_rows,
    pair_rows,
    routing_rows,
    sweep_rows,
)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("benchmarks.report", "templates"),
        autoescape=False,  # Markdown, not HTML: a `<` in a figure name is text
        undefined=jinja2.StrictUndefined,  # a misspelt figure fails the run instead of printing nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = fmt
    env.filters["num"] = format
    env.filters["json"] = json.dumps  # jinja's own `tojson` sorts keys and escapes for HTML
    return env


def _turn_rows(multi_turn: Result) -> list[list[str]]:
    return [
        [
            key.replace("_", " "),
            turn,
            fmt(d["prompt_tokens"], 0),
            fmt(d["ttft_ms"]["p50"], 1),
            fmt(d["ttft_ms"]["p99"], 1),
        ]
        for key, data in multi_turn.items()
        if isinstance(data, dict) and "by_turn" in data
        for turn, d in data["by_turn"].items()
    ]


def _chain_rows(chain: Result) -> list[list[str]]:
    return [
        [key.replace("_", " "), turn, fmt(data["prompt_tokens_by_turn"][turn], 0), fmt(ttft, 1)]
        for key, data in chain.items()
        if isinstance(data, dict) and "ttft_ms_by_turn" in data
        for turn, ttft in data["ttft_ms_by_turn"].items()
    ]


def _fair_rows(fairness: Result) -> list[list[str]]:
    rows = []
    for name, label in (("fair", "this gateway"), ("baseline", f"baseline ({fairness.get('baseline_source')})")):
        runs = fairness.get(name)
        if not runs:
            continue
        crowd, flood = runs["beside_crowd"]["light"], runs["beside_flooder"]["light"]
        refused = sum(flood["refused_by_status"].values())
        rows.append(
            [
                label,
                f"{fmt(crowd['ttft_ms']['p50'], 0)} / {fmt(crowd['ttft_ms']['p99'], 0)}",
                f"{fmt(flood['ttft_ms']['p50'], 0)} / {fmt(flood['ttft_ms']['p99'], 0)}",
                fmt(runs["light_ttft_p99_ratio"], 2),
                f"{flood['requests']} ({refused})",
                str(runs["beside_flooder"]["others"]["completed"]),
            ]
        )
    return rows


def markdown(result: Result, plots: list[str]) -> str:
    """report.md: every figure of `result` for a reader, with the `plots` that were written."""
    scenarios = result["scenarios"]
    profile = scenarios.get("profile") or {}
    return (
        _environment()
        .get_template("report.md.j2")
        .render(
            result=result,
            plots=plots,
            PLOTS=PLOTS,
            check_columns=CHECK_COLUMNS,
            checks=check_rows(result["checks"]),
            sweep_columns=SWEEP_COLUMNS,
            sweep=sweep_rows(scenarios.get("1", {})),
            pair_rows=pair_rows,
            turns=_turn_rows(scenarios.get("4", {})),
            routing_columns=ROUTING_COLUMNS,
            routing=routing_rows(scenarios.get("9", {})),
            failover_columns=FAILOVER_COLUMNS,
            failover=failover_rows(scenarios.get("9", {})),
            frontend_columns=FRONTEND_COLUMNS,
            frontend=frontend_rows(scenarios.get("7", {})),
            fair_rows=_fair_rows(scenarios.get("8", {})),
            chain_rows=_chain_rows(scenarios.get("10", {})),
            profile_rows=[[f"`{e['function']}`", f"{e['share']:.1%}"] for e in profile.get("top_self", [])],
        )
    )


def write_markdown(result: Result, plots: list[str], out: Path) -> Path:
    path = out / "report.md"
    path.write_text(markdown(result, plots))
    return path


def write_json(result: Result, out: Path) -> Path:
    path = out / "results.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path
