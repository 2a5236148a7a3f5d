"""Prometheus metrics, named after vLLM's where the meaning is the same.

Each app gets its own registry, so several gateways (or tests) in one process
never share counters.

With several front-end processes (`--api-processes N`, gateway.processes) the
parent sets `PROMETHEUS_MULTIPROC_DIR`, as vLLM's own API server does:
prometheus_client then keeps every counter and histogram in a file per
process, and any process's /metrics adds them all up. The admission gauges are
read from the one admission controller. The two families each process keeps in
memory (gateway.core.process_metrics: the inter-token latency histogram, observed
once per token, and the engine's reports, which vLLM's engine core sends to one
front end at a time) are written to those files every `PUBLISH_INTERVAL` seconds
and before a process renders /metrics: every figure of /metrics is the
gateway's, whichever process answers (another process's newest inter-token gaps
and engine report show within `PUBLISH_INTERVAL`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.core.admission import Load
from gateway.core.engine import EngineStats
from gateway.core.errors import GatewayError
from gateway.core.principal import ANONYMOUS
from gateway.core.process_metrics import EngineFigures, LoopHistogram, SharedFiles

# Seconds between two copies of a front end's in-memory figures to the shared files (several processes).
PUBLISH_INTERVAL = 0.5

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

    def __init__(self, registry: CollectorRegistry | None = None, *, file_values: Any = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # What /metrics renders: the registry, or (several processes) every process's files
        # plus the admission gauges; this process's in-memory figures reach the files by `publish`.
        self._exposed = r
        self._shared: SharedFiles | None = None
        self._publishers: list[Callable[[], None]] = []
        shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if shared_dir:
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed, shared_dir)  # type: ignore[no-untyped-call]
            # `file_values`: prometheus_client's value class of this process's files (a test's stand-in process).
            self._shared = SharedFiles(file_values)
        self.ttft = Histogram(
            "chatstream:time_to_first_token_seconds",
            "Time from arrival to the first token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = LoopHistogram(
            "chatstream:inter_token_latency_seconds", "Time between consecutive tokens.", _ITL_BUCKETS
        )
        self._register_own(self.itl)
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

    def _register_own(self, collector: LoopHistogram | EngineFigures) -> None:
        """This process's in-memory figures: rendered (one process), or copied to the shared files by `publish`."""
        self.registry.register(collector)
        if self._shared is not None:
            self._publishers.append(self._shared.publisher(collector))

    def watch(self, load: Callable[[], Load], engine_stats: Callable[[], EngineStats | None]) -> None:
        """Read the gauges from their owners at scrape time, so they can never drift."""
        self._register_local(_AdmissionGauges(load))
        self._register_own(EngineFigures(engine_stats))

    def publish(self) -> None:
        """Copy this process's in-memory figures to the shared files (several processes; else nothing)."""
        for publish in self._publishers:
            publish()

    @contextlib.asynccontextmanager
    async def publishing(self) -> AsyncIterator[None]:
        """While open, `publish` every `PUBLISH_INTERVAL` seconds (several processes; else nothing)."""
        if self._shared is None:
            yield
            return
        task = asyncio.get_running_loop().create_task(self._publish_every(PUBLISH_INTERVAL))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.publish()

    async def _publish_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.publish()

    def count_refusal(self, route: str, error: GatewayError, user_class: str = ANONYMOUS.user_class) -> None:
        """A request refused before it reached the queue."""
        self.rejections.labels(route, error.type).inc()
        if error.status in (429, 503):  # admission's own refusals, not bad input
            self.class_rejections.labels(user_class, error.type).inc()

    def count_service(self, user_class: str, prompt_tokens: int, output_tokens: int) -> None:
        self.class_service_tokens.labels(user_class, "prompt").inc(prompt_tokens)
        self.class_service_tokens.labels(user_class, "output").inc(output_tokens)

    def render(self) -> bytes:
        self.publish()  # this process's own figures as of now
        return generate_latest(self._exposed)


class _AdmissionGauges:
    """The admission gauges, read from the (one, gateway-wide) admission controller at scrape time."""

    def __init__(self, load: Callable[[], Load]) -> None:
        self.load = load

    def collect(self) -> Iterator[Metric]:
        load = self.load()
        yield GaugeMetricFamily("chatstream:num_requests_running", "Requests holding a generation slot.", load.running)
        yield GaugeMetricFamily("chatstream:num_requests_waiting", "Requests waiting for a slot.", load.waiting)
        yield GaugeMetricFamily("chatstream:admission_capacity", "Generation slots.", load.capacity)
