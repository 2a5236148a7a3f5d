"""Bodies as vllm-router 0.1.17 forwards them: its added fields pass at its values, and only at those."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fakes import FakeEngine
from tests.gateway_app import running_gateway

# Captured from vllm-router 0.1.17 (policy sticky_least_loaded) forwarding `{"model", "messages",
# "stream", "max_tokens"}` and `{"model", "prompt", "stream"}`: everything after max_tokens/stream is its own.
CHAT_AS_FORWARDED = {
    "model": "fake-model",
    "messages": [{"role": "user", "content": "x"}],
    "stream": True,
    "max_tokens": 5,
    "logprobs": False,
    "no_stop_trim": False,
    "ignore_eos": False,
    "continue_final_message": False,
    "skip_special_tokens": True,
    "separate_reasoning": True,
    "stream_reasoning": True,
    "return_hidden_states": False,
    "include_reasoning": True,
}
COMPLETION_AS_FORWARDED = {
    "model": "fake-model",
    "prompt": "hi",
    "stream": True,
    "echo": False,
    "no_stop_trim": False,
    "ignore_eos": False,
    "skip_special_tokens": True,
    "return_hidden_states": False,
}


@pytest.fixture
async def client(fake_engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with running_gateway(fake_engine) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
        yield c


@pytest.mark.parametrize(
    ("route", "body"),
    [
        pytest.param("/v1/chat/completions", CHAT_AS_FORWARDED, id="chat"),
        pytest.param("/v1/completions", COMPLETION_AS_FORWARDED, id="completions"),
    ],
)
async def test_a_body_as_vllm_router_forwards_it_is_served(
    client: httpx.AsyncClient, route: str, body: dict[str, Any]
) -> None:
    r = await client.post(route, json=body)
    assert r.status_code == 200, r.text
    assert r.text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize(
    ("route", "body", "field", "value"),
    [
        pytest.param("/v1/chat/completions", CHAT_AS_FORWARDED, "logprobs", True, id="logprobs"),
        pytest.param("/v1/chat/completions", CHAT_AS_FORWARDED, "skip_special_tokens", False, id="special-tokens"),
        pytest.param("/v1/chat/completions", CHAT_AS_FORWARDED, "continue_final_message", True, id="continue"),
        pytest.param("/v1/chat/completions", CHAT_AS_FORWARDED, "return_hidden_states", True, id="hidden-states"),
        pytest.param("/v1/completions", COMPLETION_AS_FORWARDED, "echo", True, id="echo"),
    ],
)
async def test_any_other_value_of_those_fields_is_a_400_naming_it(
    client: httpx.AsyncClient, route: str, body: dict[str, Any], field: str, value: object
) -> None:
    r = await client.post(route, json={**body, field: value})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == field
