"""Readings of a gateway's `/metrics` page (the Prometheus text format), parsed by prometheus_client."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from benchmarks.client.http import Connection


class Metrics:
    """One reading of `/metrics`: every sample, looked up by sample name and labels.

    `read_at` (time.perf_counter) is when the page arrived: parsing takes about
    a millisecond, which would otherwise blur a clean-up timed by polling.
    """

    def __init__(self, text: str, read_at: float) -> None:
        self.read_at = read_at
        self._samples: list[Sample] = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str) -> float | None:
        """The value of an unlabelled sample (a gauge such as `chatstream:num_requests_running`), if present."""
        return next((s.value for s in self._samples if s.name == name and not s.labels), None)

    def by_label(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """`name`'s samples that carry `labels`, keyed by their value of `label`."""
        return {
            s.labels[label]: s.value
            for s in self._samples
            if s.name == name and label in s.labels and labels.items() <= s.labels.items()
        }


async def read_metrics(conn: Connection) -> Metrics:
    response = await conn.request("GET", "/metrics")
    body = await response.read()
    return Metrics(body.decode(), time.perf_counter())
