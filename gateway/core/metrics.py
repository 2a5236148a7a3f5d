"""Prometheus metrics, named after vLLM's where the meaning is the same.

Each app gets its own registry, so several gateways (or tests) in one process
never share counters.

With several front-end processes (`--api-processes N`, gateway.processes) the
parent sets `PROMETHEUS_MULTIPROC_DIR`, as vLLM's own API server does:
prometheus_client then keeps every counter and histogram in a file per
process, and any process's /metrics adds them all up (the request, token,
refusal and latency figures are gateway-wide). The admission gauges are read
from the one admission controller. What stays per process, figures of the
process that answers the scrape: the inter-token latency histogram (kept in
memory: it is observed once per token) and the engine's own figures (vLLM
reports them to one front end at a time).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.core.admission import Load
from gateway.core.engine import EngineStats
from gateway.core.errors import GatewayError
from gateway.core.principal import ANONYMOUS

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The gateway's counters, gauges and histograms, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # What /metrics renders: the registry, or (several processes) every process's files
        # plus this process's collectors that keep no files (`_LOCAL`).
        self._exposed = r
        shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if shared_dir:
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed, shared_dir)  # type: ignore[no-untyped-call]
        self.ttft = Histogram(
            "chatstream:time_to_first_token_seconds",
            "Time from arrival to the first token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = LoopHistogram(
            "chatstream:inter_token_latency_seconds", "Time between consecutive tokens.", _ITL_BUCKETS
        )
        self._register_local(self.itl)
        self.e2e = Histogram(
            "chatstream:e2e_request_latency_seconds",
            "Time from arrival to the end of the request.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "chatstream:request_queue_time_seconds",
            "Time spent waiting for an admission slot.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("chatstream:prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("chatstream:generation_tokens", "Tokens generated.", registry=r)
        self.requests = Counter(
            "chatstream:requests", "Admitted requests by route and completion state.", ["route", "state"], registry=r
        )
        self.rejections = Counter(
            "chatstream:rejected_requests",
            "Requests refused before the queue, by route and reason.",
            ["route", "reason"],
            registry=r,
        )
        # Per user class (a key's class from the keys file, `session` or `anonymous`): a small,
        # fixed label set, never a raw key or session id.
        self.class_queue_time = Histogram(
            "chatstream:user_class_queue_time_seconds",
            "Time spent waiting for an admission slot, by user class.",
            ["user_class"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.class_rejections = Counter(
            "chatstream:user_class_rejected_requests",
            "Requests refused by admission (or displaced, or timed out in the queue), by user class and reason.",
            ["user_class", "reason"],
            registry=r,
        )
        self.class_service_tokens = Counter(
            "chatstream:user_class_service_tokens",
            "Tokens served (kind: prompt or output), by user class.",
            ["user_class", "kind"],
            registry=r,
        )

    def _register_local(self, collector: Collector) -> None:
        self.registry.register(collector)
        if self._exposed is not self.registry:
            self._exposed.register(collector)

    def watch(self, load: Callable[[], Load], engine_stats: Callable[[], EngineStats | None]) -> None:
        """Read the gauges from their owners at scrape time, so they can never drift."""
        self._register_local(_Gauges(load, engine_stats))
        self._register_local(_PrefixCacheCounters(engine_stats))

    def count_refusal(self, route: str, error: GatewayError, user_class: str = ANONYMOUS.user_class) -> None:
        """A request refused before it reached the queue."""
        self.rejections.labels(route, error.type).inc()
        if error.status in (429, 503):  # admission's own refusals, not bad input
            self.class_rejections.labels(user_class, error.type).inc()

    def count_service(self, user_class: str, prompt_tokens: int, output_tokens: int) -> None:
        self.class_service_tokens.labels(user_class, "prompt").inc(prompt_tokens)
        self.class_service_tokens.labels(user_class, "output").inc(output_tokens)

    def render(self) -> bytes:
        return generate_latest(self._exposed)


class _Gauges:
    """The admission and engine gauges, read from their owners at scrape time (never kept in files)."""

    def __init__(self, load: Callable[[], Load], engine_stats: Callable[[], EngineStats | None]) -> None:
        self.load = load
        self.engine_stats = engine_stats

    def collect(self) -> Iterator[Metric]:
        load = self.load()
        yield GaugeMetricFamily("chatstream:num_requests_running", "Requests holding a generation slot.", load.running)
        yield GaugeMetricFamily("chatstream:num_requests_waiting", "Requests waiting for a slot.", load.waiting)
        yield GaugeMetricFamily("chatstream:admission_capacity", "Generation slots.", load.capacity)
        stats = self.engine_stats()
        nan = float("nan")
        running = nan if stats is None else stats.running
        waiting = nan if stats is None else stats.waiting
        usage = nan if stats is None or stats.kv_cache_usage is None else stats.kv_cache_usage
        yield GaugeMetricFamily("chatstream:engine_num_requests_running", "Requests the engine runs.", running)
        yield GaugeMetricFamily("chatstream:engine_num_requests_waiting", "Requests the engine queues.", waiting)
        yield GaugeMetricFamily("chatstream:kv_cache_usage_perc", "Engine KV-cache usage (1 = full).", usage)


class _PrefixCacheCounters:
    """The engine's prefix-cache totals as counters, read at scrape time (the hit rate is hits / queries)."""

    def __init__(self, engine_stats: Callable[[], EngineStats | None]) -> None:
        self.engine_stats = engine_stats

    def collect(self) -> Iterator[Metric]:
        stats = self.engine_stats()
        queries = stats.prefix_cache_queries if stats is not None else 0
        hits = stats.prefix_cache_hits if stats is not None else 0
        yield CounterMetricFamily(
            "chatstream:engine_prefix_cache_queries", "Prompt tokens the engine looked up in its prefix cache.", queries
        )
        yield CounterMetricFamily(
            "chatstream:engine_prefix_cache_hits", "Prompt tokens the engine found in its prefix cache.", hits
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

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)
