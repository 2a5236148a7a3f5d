"""py-spy: record a running process, and read its raw (collapsed-stack) output into shares per function."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def find_pyspy() -> Path | None:
    """py-spy on the PATH, or beside this Python (a virtual environment that is not activated)."""
    found = shutil.which("py-spy")
    path = Path(found) if found else Path(sys.executable).parent / "py-spy"
    return path if path.exists() else None


@contextmanager
def recording(pyspy: Path, pid: int, raw: Path, rate: int = 100) -> Iterator[None]:
    """Sample `pid` into `raw` while the block runs (`--nonblocking`: the process is never paused)."""
    command = [str(pyspy), "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate), "--nonblocking"]
    proc = subprocess.Popen([*command, "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        # SIGINT, not SIGTERM: py-spy writes its file on an interrupt
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _frame(text: str) -> str:
    """`function (file.py:LINE)` without the line, so one function's samples add up."""
    if " (" not in text:
        return text
    function, _, location = text.partition(" (")
    return f"{function} ({location.rsplit(':', 1)[0]})"


def summarise_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares of the busiest functions, from py-spy's collapsed stacks."""
    if not raw.exists():
        return {"skipped": "py-spy wrote no profile (ptrace not permitted?)"}
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        self_counts[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count

    def top_of(counts: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": f, "share": c / total} for f, c in counts.most_common(top)]

    return {"samples": total, "file": raw.name, "top_self": top_of(self_counts), "top_inclusive": top_of(inclusive)}
