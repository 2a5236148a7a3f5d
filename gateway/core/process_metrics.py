"""Figures a process keeps in its own memory, and how one front end of several publishes them.

Two families of /metrics are not prometheus_client metrics: the inter-token
latency histogram (`LoopHistogram`, observed once per streamed token, where
prometheus_client's `Histogram` costs a lock and two value updates, in
multiprocess mode two mmap writes) and the engine's figures (`EngineFigures`,
read from the engine's latest report at scrape time).

With several front-end processes (`--api-processes N`) every other family is
kept in prometheus_client's files, one per process, that /metrics of any
process merges (PROMETHEUS_MULTIPROC_DIR). `SharedFiles` writes these two there
too, at a bounded rate (`Metrics.publishing`) and before its own process renders
/metrics, never per token:

- the histogram as this process's absolute counts (only the buckets that
  changed): the files' sum over processes is the gateway's histogram;
- the engine's figures, which vLLM's engine core sends to one front end at a
  time (each step's report goes to the first front end with outputs in that
  step): the prefix-cache counters as this process's share (the sum over
  processes is the engine's total), the scheduler gauges with the engine's own
  time of the report, so /metrics shows the newest report whichever front end
  received it (prometheus_client's `mostrecent` mode, as vLLM's own gauges).

They are written with prometheus_client's value class under the keys its own
`Histogram`, `Counter` and `Gauge` would use, so the files' reader takes them
as any other.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import values
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from gateway.core.engine import EngineStats

_NAN = float("nan")
# The time of a gauge no report has set yet: older than any report (the files' reader
# takes a gauge's newest value, and never one at time 0).
_NEVER = 5e-324

_ENGINE_GAUGES: tuple[tuple[str, str, Callable[[EngineStats], float]], ...] = (
    ("chatstream:engine_num_requests_running", "Requests the engine runs.", lambda s: s.running),
    ("chatstream:engine_num_requests_waiting", "Requests the engine queues.", lambda s: s.waiting),
    (
        "chatstream:kv_cache_usage_perc",
        "Engine KV-cache usage (1 = full).",
        lambda s: _NAN if s.kv_cache_usage is None else s.kv_cache_usage,
    ),
)
_ENGINE_COUNTERS: tuple[tuple[str, str, Callable[[EngineStats], int]], ...] = (
    (
        "chatstream:engine_prefix_cache_queries",
        "Prompt tokens the engine looked up in its prefix cache.",
        lambda s: s.prefix_cache_queries,
    ),
    (
        "chatstream:engine_prefix_cache_hits",
        "Prompt tokens the engine found in its prefix cache.",
        lambda s: s.prefix_cache_hits,
    ),
)


class LoopHistogram:
    """A histogram observed only from the event loop's thread: one list update per observation.

    prometheus_client's `Histogram` takes a lock and updates two values per
    observation; the inter-token latency is observed once per streamed token,
    where that was a tenth of the gateway's own CPU per token.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """`times` observations of `value`."""
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times

    def bucket_names(self) -> tuple[str, ...]:
        """The buckets' `le` labels, +Inf last."""
        return (*map(floatToGoString, self.bounds), "+Inf")

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip(self.bucket_names(), self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)


class EngineFigures:
    """The engine's scheduler gauges and prefix-cache counters, read from its latest report at scrape time."""

    def __init__(self, engine_stats: Callable[[], EngineStats | None]) -> None:
        self.engine_stats = engine_stats

    def collect(self) -> Iterator[Metric]:
        stats = self.engine_stats()
        for name, documentation, gauge in _ENGINE_GAUGES:
            yield GaugeMetricFamily(name, documentation, _NAN if stats is None else gauge(stats))
        for name, documentation, counter in _ENGINE_COUNTERS:
            yield CounterMetricFamily(name, documentation, 0 if stats is None else counter(stats))


class SharedFiles:
    """Writes this process's in-memory figures into its prometheus_client files.

    `value_class` is prometheus_client's class of values kept in this process's
    files (by default the one its metrics use; a test gives each stand-in
    process its own). One `SharedFiles` per process: it writes absolute figures.
    """

    def __init__(self, value_class: Any = None) -> None:
        self._value = value_class or values.ValueClass

    def publisher(self, figures: LoopHistogram | EngineFigures) -> Callable[[], None]:
        """What copies `figures` as of now to this process's files."""
        if isinstance(figures, LoopHistogram):
            return self._histogram(figures)
        return self._engine(figures.engine_stats)

    def _histogram(self, histogram: LoopHistogram) -> Callable[[], None]:
        """What copies `histogram`'s counts and sum to the files (the buckets that changed)."""
        name, documentation = histogram.name, histogram.documentation
        buckets = [
            self._value("histogram", name, name + "_bucket", ("le",), (le,), documentation)
            for le in histogram.bucket_names()
        ]
        total = self._value("histogram", name, name + "_sum", (), (), documentation)
        published = [0] * len(buckets)

        def publish() -> None:
            counts = histogram.counts
            if counts == published:
                return
            for i, count in enumerate(counts):
                if count != published[i]:
                    buckets[i].set(count)
                    published[i] = count
            total.set(histogram.sum)

        return publish

    def _engine(self, engine_stats: Callable[[], EngineStats | None]) -> Callable[[], None]:
        """What copies the engine's latest report received here to the files."""
        gauges = [
            (self._value("gauge", name, name, (), (), doc, multiprocess_mode="mostrecent"), read)
            for name, doc, read in _ENGINE_GAUGES
        ]
        counters = [
            (self._value("counter", name, name + "_total", (), (), doc), read) for name, doc, read in _ENGINE_COUNTERS
        ]
        for value, _ in gauges:
            value.set(_NAN, timestamp=_NEVER)
        last: list[EngineStats | None] = [None]

        def publish() -> None:
            stats, before = engine_stats(), last[0]
            if stats is None or stats is before:
                return
            last[0] = stats
            if before is None or stats.reported_at != before.reported_at:
                for value, read in gauges:
                    value.set(read(stats), timestamp=stats.reported_at or _NEVER)
            for value, read in counters:
                if before is None or read(stats) != read(before):
                    value.set(read(stats))

        return publish
