"""Progress bars and the terminal table (rich)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Logs of non-interactive runs (CI, `make bench-full > log`) keep whole lines.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


class UI:
    """One progress display for a whole run; `step()` opens a bar for one load level."""

    def __init__(self, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )

    def __enter__(self) -> UI:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    @contextmanager
    def step(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        task = self._progress.add_task(description, total=total)
        try:
            yield lambda n: self._progress.advance(task, n)
        finally:
            self._progress.update(task, completed=total)

    def note(self, text: str) -> None:
        self._progress.console.log(text)


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col not in ("target", "figure", "scenario") else "left")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    console.print(table)
