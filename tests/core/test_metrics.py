"""/metrics: every counter moves exactly as the requests of a test dictate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway import CompletionState
from gateway.core.metrics import LoopHistogram
from tests.fakes import FakeEngine
from tests.gateway_app import Gateway, metric, running_gateway, scrape

CHAT = "v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gateway(fake_engine: FakeEngine) -> AsyncIterator[Gateway]:
    async with running_gateway(fake_engine, concurrency=1, queue_size=1) as gw:
        yield gw


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as c:
        yield c


async def leave_after_first_chunk(client: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    fake_engine.token_delay = 0.05  # slow enough that the answer is unfinished when the client leaves
    body = {"model": "fake-model", "messages": USER, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                break
    fake_engine.token_delay = 0.0


async def test_counters_follow_successes_disconnects_and_rejections(
    client: httpx.AsyncClient, gateway: Gateway, fake_engine: FakeEngine
) -> None:
    answer = len(fake_engine.answer)
    for stream in (False, True):
        r = await client.post("/v1/chat/completions", json={"model": "fake-model", "messages": USER, "stream": stream})
        assert r.status_code == 200
    assert (await client.post("/chat_stream", json={"user_input": "hi"})).status_code == 200
    await leave_after_first_chunk(client, fake_engine)
    assert (await client.post("/v1/chat/completions", json={"model": "nope", "messages": USER})).status_code == 404
    assert (await client.post("/v1/chat/completions", json={"model": "fake-model", "n": 3})).status_code == 400
    states = await gateway.wait_states(4)
    assert sorted(states) == sorted(
        [CompletionState.SUCCESS] * 3 + [CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING]
    )

    text = await scrape(client)
    requests = "chatstream:requests_total"
    assert metric(text, requests, route=CHAT, state="success") == 2
    assert metric(text, requests, route="chat_stream", state="success") == 1
    assert metric(text, requests, route=CHAT, state="client_disconnected_while_streaming") == 1
    assert metric(text, requests, state="unknown_error_occurred") == 0
    rejected = "chatstream:rejected_requests_total"
    assert metric(text, rejected, route=CHAT, reason="model_not_found") == 1
    assert metric(text, rejected, route=CHAT, reason="invalid_request") == 1
    # Three full answers plus the tokens the leaver got before it left (at least one, fewer than all).
    generated = metric(text, "chatstream:generation_tokens_total")
    assert 3 * answer + 1 <= generated < 4 * answer
    prompt = len("<user>hi</user><assistant>")
    assert metric(text, "chatstream:prompt_tokens_total") == 4 * prompt
    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert metric(text, f"chatstream:{histogram}_count") == 4, histogram
    assert metric(text, "chatstream:inter_token_latency_seconds_count") == generated - 4
    assert metric(text, "chatstream:num_requests_running") == 0


async def test_gauges_show_running_and_waiting_and_a_full_queue_is_counted(
    client: httpx.AsyncClient, gateway: Gateway, fake_engine: FakeEngine
) -> None:
    fake_engine.gate = asyncio.Event()
    body = {"model": "fake-model", "messages": USER}
    first = asyncio.create_task(client.post("/v1/chat/completions", json=body))
    second = asyncio.create_task(client.post("/v1/chat/completions", json=body))
    async with asyncio.timeout(30):
        while metric(await scrape(client), "chatstream:num_requests_waiting") < 1:
            await asyncio.sleep(0.01)
    assert (await client.post("/v1/chat/completions", json=body)).status_code == 429
    text = await scrape(client)
    assert metric(text, "chatstream:num_requests_running") == 1
    assert metric(text, "chatstream:admission_capacity") == 1
    assert metric(text, "chatstream:engine_num_requests_running") == 1
    assert metric(text, "chatstream:rejected_requests_total", route=CHAT, reason="too_many_requests") == 1
    fake_engine.gate.set()
    async with asyncio.timeout(30):
        assert [r.status_code for r in await asyncio.gather(first, second)] == [200, 200]
    await gateway.wait_states(2)
    text = await scrape(client)
    assert metric(text, "chatstream:num_requests_running") == metric(text, "chatstream:num_requests_waiting") == 0
    assert metric(text, "chatstream:requests_total", route=CHAT, state="success") == 2


async def test_metric_names_follow_vllm(client: httpx.AsyncClient) -> None:
    r = await client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(r.text)}
    assert {
        "chatstream:time_to_first_token_seconds",
        "chatstream:inter_token_latency_seconds",
        "chatstream:e2e_request_latency_seconds",
        "chatstream:request_queue_time_seconds",
        "chatstream:num_requests_running",
        "chatstream:num_requests_waiting",
        "chatstream:prompt_tokens",
        "chatstream:generation_tokens",
        "chatstream:requests",
        "chatstream:rejected_requests",
        "chatstream:kv_cache_usage_perc",
        "chatstream:engine_prefix_cache_queries",
        "chatstream:engine_prefix_cache_hits",
    } <= names


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([], id="none"),
        pytest.param([0.0, 0.001, 0.0011, 0.02, 0.5, 5.0, 99.0], id="on-and-between-bounds"),
        pytest.param([0.003] * 5 + [1e-9], id="repeated"),
    ],
)
def test_the_loop_histogram_exposes_what_prometheus_histogram_does(values: list[float]) -> None:
    # The inter-token latency moved to LoopHistogram (issue 14): /metrics must not tell the difference.
    bounds = (0.001, 0.005, 0.02, 1.0, 5.0)
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram("x:latency_seconds", "doc", buckets=bounds, registry=theirs_registry)
    ours = LoopHistogram("x:latency_seconds", "doc", bounds)
    ours_registry.register(ours)
    for value in values:
        theirs.observe(value)
    for value in set(values):
        ours.observe(value, values.count(value))

    def samples(registry: CollectorRegistry) -> list[tuple[str, str, float]]:
        text = generate_latest(registry).decode()
        return sorted(
            (s.name, str(sorted(s.labels.items())), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.name.endswith("_created")
        )

    assert samples(ours_registry) == samples(theirs_registry)
