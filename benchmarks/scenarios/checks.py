"""A figure set beside its target, and the comparisons the scenarios make."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


# A figure a run could not measure (a peer that did not start, no samples) is None: so is any
# ratio or comparison built on it, and the report shows "-" rather than a verdict.


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def at_least(value: float | None, bound: float) -> bool | None:
    return None if value is None else value >= bound


def at_most(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


def below(value: float | None, bound: float) -> bool | None:
    return None if value is None else value < bound
