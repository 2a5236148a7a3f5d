"""Bad requests on the real engine: a 400 in words, in OpenAI's error shape, and nothing left behind.

Refused while reading or rendering (before the queue) or by the engine itself (after
admission: a token the vocabulary lacks, a grammar it cannot compile), every refusal is a 400
whose message says what is wrong without a validator's dump or a traceback, its slot and
engine request are gone, and the engine keeps serving. A streamed response too: its events
wait for the engine to accept the request. A client that leaves a multi-prompt
completions stream has every prompt's engine request aborted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway import CompletionState
from gateway.core.vllm_engine import VLLMEngine
from gateway.openai.background import ACTIVE
from tests.gateway_app import Gateway, running_gateway
from tests.openai_spec import validate, validate_responses_sse
from tests.sse_client import eventually, hang_up, open_raw_post

pytestmark = pytest.mark.engine

USER = [{"role": "user", "content": "hello"}]
# What a validator's own message would show; a client should read words instead.
DUMPS = ("Input should", "For further information", "pydantic", "Traceback", "validation error", "type=")


@pytest.fixture(scope="module")
async def gateway(real_engine: VLLMEngine) -> AsyncIterator[Gateway]:
    async with running_gateway(
        real_engine, lifespan="off", served_model_name=["tiny"], enable_auto_tool_choice=True, tool_call_parser="hermes"
    ) as gw:
        yield gw


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": USER, "max_tokens": 4, **fields}


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        pytest.param("/v1/chat/completions", b"{not json", None, "not valid JSON", id="malformed-json"),
        pytest.param("/v1/chat/completions", b"[1, 2]", None, "JSON object", id="not-an-object"),
        pytest.param("/v1/chat/completions", {"model": "tiny"}, "messages", "required", id="no-messages"),
        pytest.param("/v1/chat/completions", chat(messages=True), "messages", "a list", id="messages-not-a-list"),
        pytest.param(
            "/v1/chat/completions",
            chat(messages=[{"role": "user", "content": 5}]),
            "messages[0].content",
            "must be a string or a list",
            id="content-a-number",
        ),
        pytest.param("/v1/chat/completions", chat(temperature="hot"), "temperature", "a number", id="temperature-text"),
        pytest.param("/v1/chat/completions", chat(n="two"), "n", "an integer", id="n-text"),
        pytest.param(
            "/v1/chat/completions", chat(tool_choice="required"), "tool_choice", "tools", id="tool-choice-alone"
        ),
        pytest.param("/v1/chat/completions", chat(top_logprobs=3), "top_logprobs", "logprobs", id="top-logprobs-alone"),
        pytest.param(
            "/v1/chat/completions",
            chat(tools=[{"type": "function"}], tool_choice={"type": "function", "function": {"name": "f"}}),
            None,
            "wrong type or shape",
            id="tool-without-function",
        ),
        pytest.param("/v1/chat/completions", chat(max_tokens=2000), "max_tokens", "max_model_len", id="past-context"),
        pytest.param(
            "/v1/chat/completions",
            chat(messages=[{"role": "user", "content": "x " * 1100}]),
            "input_tokens",
            "context length",
            id="prompt-past-context",
        ),
        pytest.param("/v1/chat/completions", chat(use_beam_search=True), "use_beam_search", "beam search", id="beam"),
        pytest.param("/v1/chat/completions", chat(model="gpt-4"), "model", "does not exist", id="unknown-model"),
        pytest.param("/v1/completions", {"model": "tiny", "prompt": [[1], "x"]}, "prompt[0]", "", id="mixed-prompt"),
        pytest.param(
            "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": -1}, "max_tokens", "", id="negative"
        ),
        pytest.param(
            "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 0}, "max_tokens", "", id="zero-no-echo"
        ),
        pytest.param("/tokenize", {"model": "tiny"}, "prompt", "required", id="tokenize-nothing"),
        pytest.param("/detokenize", {"model": "tiny", "tokens": [-1]}, "tokens[0]", "", id="detokenize-negative"),
    ],
)
async def test_a_bad_request_is_a_400_in_words_and_costs_nothing(
    gateway: Gateway, real_engine: VLLMEngine, path: str, body: Any, param: str | None, words: str
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
        r = await client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == (404 if "does not exist" in words else 400), r.text
    validate("ErrorResponse", r.json())
    error = r.json()["error"]
    assert words in error["message"] and not any(dump in error["message"] for dump in DUMPS), error
    assert error["param"] == param
    load = gateway.app.state.core.admission.load()
    assert (load.running, load.waiting, real_engine.num_unfinished()) == (0, 0, 0)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(chat(logit_bias={"100000": 5}), id="logit-bias-out-of-vocabulary"),
        pytest.param(chat(stop_token_ids=[10**6], stream=True), id="stop-token-out-of-vocabulary"),
        pytest.param({"model": "tiny", "prompt": [5, 10**6]}, id="prompt-token-out-of-vocabulary"),
        pytest.param(chat(structured_outputs={"regex": "(("}), id="regex-that-does-not-compile"),
        pytest.param(chat(structured_outputs={"grammar": "root ::= nothing"}), id="grammar-with-an-unknown-rule"),
    ],
)
async def test_what_the_engine_refuses_is_a_400_with_its_reason_and_the_engine_serves_on(
    gateway: Gateway, real_engine: VLLMEngine, body: dict[str, Any]
) -> None:
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        r = await client.post(path, json=body)
        assert r.status_code == 400, r.text
        validate("ErrorResponse", r.json())
        assert r.json()["error"]["message"] and "Traceback" not in r.json()["error"]["message"]
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200
    load = gateway.app.state.core.admission.load()
    assert (load.running, load.waiting, real_engine.num_unfinished()) == (0, 0, 0)


async def test_leaving_a_multi_prompt_stream_aborts_every_prompts_engine_request(
    gateway: Gateway, real_engine: VLLMEngine
) -> None:
    body = {"model": "tiny", "prompt": ["a", "b", "c"], "max_tokens": 900, "ignore_eos": True, "stream": True}
    before = len(gateway.states)
    reader, writer = await open_raw_post(gateway.url, "/v1/completions", body)
    async with asyncio.timeout(60):
        while b"data: {" not in await reader.readline():
            pass
    assert real_engine.num_unfinished() == 3
    await hang_up(writer)
    await eventually(lambda: len(gateway.states) > before)
    assert gateway.states[before:] == [CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING]
    assert real_engine.num_unfinished() == 0
    assert gateway.app.state.core.admission.load().running == 0


def unclosed_pattern(**fields: Any) -> dict[str, Any]:
    """A Responses body whose JSON schema's pattern vLLM cannot compile (it refuses it in add_request)."""
    fmt = {"type": "json_schema", "name": "word", "schema": {"type": "string", "pattern": "(("}}
    return {"model": "tiny", "input": "hello", "max_output_tokens": 4, "text": {"format": fmt}, **fields}


@pytest.mark.parametrize("stream", [pytest.param(True, id="streamed"), pytest.param(False, id="whole")])
async def test_a_response_vllm_refuses_is_a_400_streamed_or_not_and_nothing_is_stored(
    gateway: Gateway, real_engine: VLLMEngine, stream: bool
) -> None:
    # Regression: streamed, it was a 200 with response.created, response.in_progress and
    # response.failed. (vLLM's own server answers a 400 unstreamed; streamed, a 200 whose
    # connection is cut after response.in_progress.)
    records = gateway.app.state.responses.store.store
    kept = len(records)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        r = await client.post("/v1/responses", json=unclosed_pattern(stream=stream))
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith("application/json")
        validate("ErrorResponse", r.json())
        assert "Grammar error" in r.json()["error"]["message"]
        assert len(records) == kept
        load = gateway.app.state.core.admission.load()
        assert (load.running, load.waiting, real_engine.num_unfinished()) == (0, 0, 0)
        served = await client.post("/v1/responses", json={"model": "tiny", "input": "hello", "stream": True})
    assert validate_responses_sse(served.text)[-1]["type"] in ("response.completed", "response.incomplete")


async def test_a_background_response_vllm_refuses_reads_failed_with_its_reason(gateway: Gateway) -> None:
    # vLLM's own server leaves such a response queued for ever.
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        queued = (await client.post("/v1/responses", json=unclosed_pattern(background=True))).json()
        assert queued["status"] == "queued", queued

        async with asyncio.timeout(60):
            while (failed := (await client.get(f"/v1/responses/{queued['id']}")).json())["status"] in ACTIVE:
                await asyncio.sleep(0.02)
    validate("Response", failed)
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_prompt", failed
    assert "Grammar error" in failed["error"]["message"]
