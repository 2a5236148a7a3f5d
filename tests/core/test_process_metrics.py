"""Several front-end processes: each one's in-memory figures reach the shared files, and any /metrics sums them.

Stand-in processes in one test process: each has its own prometheus_client
value class (its own files in the shared directory, as a process with its own
pid), and the shared directory is read by prometheus_client's own reader.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway import ChatStream, Core, Settings, create_app
from gateway.core.engine import EngineStats
from gateway.core.metrics import Metrics
from gateway.core.process_metrics import EngineFigures, LoopHistogram, SharedFiles
from tests.fakes import FakeEngine
from tests.gateway_app import metric
from tests.live import serve

BOUNDS = (0.001, 0.005, 0.02, 1.0, 5.0)
_pids = itertools.count(1001)


@pytest.fixture
def shared_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """PROMETHEUS_MULTIPROC_DIR, as the parent of several front ends sets it."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    yield tmp_path


@pytest.fixture
def stand_in() -> Iterator[Callable[[], Any]]:
    """Makes the value class of another stand-in process (its files closed at the end)."""
    made: list[Any] = []

    def make() -> Any:
        pid = next(_pids)
        made.append(values.MultiProcessValue(lambda: pid))  # type: ignore[no-untyped-call]
        return made[-1]

    yield make
    for value_class in made:
        value_class.close_all_files()


def merged(shared_dir: Path) -> str:
    """What /metrics of any process shows of the files."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(shared_dir))  # type: ignore[no-untyped-call]
    return generate_latest(registry).decode()


def samples(text: str, family: str) -> list[tuple[str, str, float]]:
    return sorted(
        (s.name, str(sorted(s.labels.items())), s.value)
        for f in text_string_to_metric_families(text)
        if f.name == family
        for s in f.samples
    )


def test_the_files_hold_the_sum_of_every_process_histogram(shared_dir: Path, stand_in: Callable[[], Any]) -> None:
    observed = [0.0, 0.001, 0.0011, 0.02, 0.5, 5.0, 99.0, 0.003, 0.003]
    whole = LoopHistogram("x:latency_seconds", "doc", BOUNDS)
    parts = [LoopHistogram("x:latency_seconds", "doc", BOUNDS) for _ in range(2)]
    publishers = [SharedFiles(stand_in()).publisher(part) for part in parts]
    for i, value in enumerate(observed):
        whole.observe(value)
        parts[i % 2].observe(value)
        publishers[i % 2]()  # published again and again: absolute figures, never added twice
        publishers[(i + 1) % 2]()  # unchanged since its last copy
    registry = CollectorRegistry()
    registry.register(whole)
    expected = samples(generate_latest(registry).decode(), "x:latency_seconds")
    assert samples(merged(shared_dir), "x:latency_seconds") == expected
    assert ("x:latency_seconds_count", "[]", len(observed)) in expected


def test_the_newest_engine_report_wins_and_the_prefix_cache_counts_add_up(
    shared_dir: Path, stand_in: Callable[[], Any]
) -> None:
    # vLLM's engine core sends each step's report to one front end: each keeps its own share.
    reports: list[EngineStats | None] = [None, None]
    publish = [SharedFiles(stand_in()).publisher(EngineFigures(lambda i=i: reports[i])) for i in (0, 1)]
    text = merged(shared_dir)  # nothing reported yet
    assert math.isnan(metric(text, "chatstream:engine_num_requests_running"))
    assert metric(text, "chatstream:engine_prefix_cache_queries_total") == 0

    reports[0] = EngineStats(3, 2, 0.5, prefix_cache_queries=100, prefix_cache_hits=40, reported_at=10.0)
    reports[1] = EngineStats(1, 0, 0.25, prefix_cache_queries=50, prefix_cache_hits=10, reported_at=12.0)
    for p in publish:
        p()
    text = merged(shared_dir)
    assert metric(text, "chatstream:engine_num_requests_running") == 1  # the report of time 12, not 10
    assert metric(text, "chatstream:engine_num_requests_waiting") == 0
    assert metric(text, "chatstream:kv_cache_usage_perc") == 0.25
    assert metric(text, "chatstream:engine_prefix_cache_queries_total") == 150
    assert metric(text, "chatstream:engine_prefix_cache_hits_total") == 50

    # Process 0 receives the engine's next report, idle now; process 1 still holds its older one.
    reports[0] = EngineStats(0, 0, 0.0, prefix_cache_queries=120, prefix_cache_hits=45, reported_at=13.0)
    for p in reversed(publish):
        p()
    text = merged(shared_dir)
    assert metric(text, "chatstream:engine_num_requests_running") == 0
    assert metric(text, "chatstream:kv_cache_usage_perc") == 0
    assert metric(text, "chatstream:engine_prefix_cache_queries_total") == 170
    assert metric(text, "chatstream:engine_prefix_cache_hits_total") == 55


@pytest.fixture
async def front_ends(shared_dir: Path, stand_in: Callable[[], Any]) -> AsyncIterator[list[str]]:
    """Two gateways on fake engines, with their metrics in the shared files as two front-end processes'."""
    async with AsyncExitStack() as stack:
        urls = []
        for _ in range(2):
            config = Settings(secure_cookies=False)
            core = Core(config, FakeEngine(), metrics=Metrics(file_values=stand_in()))
            app = create_app(config, chat_stream=ChatStream(core=core))
            urls.append(await stack.enter_async_context(serve(app)))
        yield urls


async def itl_count(url: str) -> float:
    async with httpx.AsyncClient(base_url=url) as client:
        return metric((await client.get("/metrics")).text, "chatstream:inter_token_latency_seconds_count")


async def test_either_front_end_shows_the_inter_token_gaps_of_both(front_ends: list[str]) -> None:
    gaps = len(FakeEngine().answer) - 1  # one token per output: every token after the first is a gap
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with asyncio.timeout(30):
        for url, requests in zip(front_ends, (1, 2), strict=True):
            async with httpx.AsyncClient(base_url=url) as client:
                for _ in range(requests):
                    assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        for url in front_ends:
            while await itl_count(url) < 3 * gaps:  # the other's arrive within its publishing interval
                await asyncio.sleep(0.05)
            assert await itl_count(url) == 3 * gaps
