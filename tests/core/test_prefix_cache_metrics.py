"""The real engine's prefix-cache totals on /metrics: what the routing benchmark's hit rate is read from."""

from __future__ import annotations

import httpx
import pytest

from gateway.core.vllm_engine import VLLMEngine
from tests.gateway_app import metric, running_gateway, scrape

pytestmark = pytest.mark.engine


async def test_a_repeated_prompt_is_found_in_the_engines_prefix_cache(real_engine: VLLMEngine) -> None:
    question = "a long question about the stream " * 30
    body = {"model": real_engine.model_name, "prompt": question, "max_tokens": 2}
    async with (
        running_gateway(real_engine, lifespan="off") as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=60) as client,
    ):
        before = await scrape(client)
        first = await client.post("/v1/completions", json=body)
        middle = await scrape(client)
        second = await client.post("/v1/completions", json=body)
        after = await scrape(client)
    assert first.status_code == second.status_code == 200
    prompt_tokens = first.json()["usage"]["prompt_tokens"]
    queries = "chatstream:engine_prefix_cache_queries_total"
    hits = "chatstream:engine_prefix_cache_hits_total"
    # The first lookup finds nothing of this prompt; the second finds all of it but the
    # last, partly filled cache block (the engine computes at least one token itself).
    assert metric(middle, queries) - metric(before, queries) == prompt_tokens
    assert metric(middle, hits) == metric(before, hits)
    assert metric(after, queries) - metric(middle, queries) == prompt_tokens
    assert prompt_tokens - 64 <= metric(after, hits) - metric(middle, hits) < prompt_tokens


async def test_vllm_observes_no_metrics_that_the_gateway_does_not_serve(real_engine: VLLMEngine) -> None:
    # Issue 14: vLLM's own Prometheus logger observed every token's latency into a registry the
    # gateway never serves; the gateway's stats tap stands in for it (and still feeds /metrics, above).
    names = [type(logger).__name__ for logger in real_engine.vllm_client.logger_manager.stat_loggers]
    assert "StatsTap" in names
    assert "PrometheusStatLogger" not in names
