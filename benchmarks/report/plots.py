"""The PNG plots of a run (matplotlib, Agg backend: no display on a server)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # matplotlib takes a while to import: only `write_plots` loads it
    from matplotlib.figure import Figure

PLOTS = {
    "throughput": "sweep_throughput.png",
    "ttft": "sweep_ttft.png",
    "turns": "multi_turn_ttft.png",
    "overload": "overload_ttft.png",
    "routing": "routing_ttft.png",
}


def _series(points: dict[str, float | None]) -> tuple[list[int], list[float]]:
    """(x, y) by ascending numeric key ("1", "8", ... or turn numbers), leaving out points with no value."""
    xs, ys = [], []
    for key, value in sorted(points.items(), key=lambda kv: int(kv[0])):
        if value is not None:
            xs.append(int(key))
            ys.append(value)
    return xs, ys


def write_plots(result: dict[str, Any], out: Path) -> list[str]:
    """Every plot the run has figures for, written into `out`; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []

    def save(fig: Figure, plot: str) -> None:
        fig.tight_layout()
        fig.savefig(out / PLOTS[plot], dpi=110)
        plt.close(fig)
        written.append(PLOTS[plot])

    scenarios = result["scenarios"]
    sweep = scenarios.get("1", {}).get("targets", {})
    measured = {t: levels for t, levels in sweep.items() if "skipped" not in levels}
    if measured:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for target, levels in measured.items():
            ax.plot(*_series({c: s["output_throughput"] for c, s in levels.items()}), marker="o", label=target)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="concurrency",
            ylabel="output tokens/s",
            title="Throughput vs concurrency",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        save(fig, "throughput")

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
        for ax, q in zip(axes, ("p50", "p99"), strict=True):
            for target, levels in measured.items():
                ax.plot(*_series({c: s["ttft_ms"][q] for c, s in levels.items()}), marker="o", label=target)
            ax.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="TTFT (ms)", title=f"TTFT {q}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend()
        save(fig, "ttft")

    turns = {k: v for k, v in scenarios.get("4", {}).items() if isinstance(v, dict) and "by_turn" in v}
    if turns:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, data in turns.items():
            by_turn = {t: d["ttft_ms"]["p50"] for t, d in data["by_turn"].items()}
            ax.plot(*_series(by_turn), marker="o", label=key.replace("_", " "))
        ax.set(xlabel="turn", ylabel="TTFT p50 (ms)", title="Multi-turn: TTFT by turn")
        ax.grid(True, alpha=0.3)
        ax.legend()
        save(fig, "turns")

    runs = scenarios.get("9", {}).get("runs", {})
    if runs:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, run in runs.items():
            by_turn = {t: d["ttft_ms"]["p50"] for t, d in run["by_turn"].items()}
            ax.plot(*_series(by_turn), marker="o", label=label, linestyle="-" if "affine" in label else "--")
        ax.set(xlabel="turn", ylabel="TTFT p50 (ms)", yscale="log", title="Two replicas: TTFT by turn")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        save(fig, "routing")

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
        save(fig, "overload")
    return written
