"""The OpenAI-compatible routes over the fake engine: shapes, chunk order, errors, overload.

An engine other than vLLM gets the plain-text frontend (gateway/openai/plain.py); what vLLM's
request handling means is tested on the real engine (test_openai_engine.py, tests/clients).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway import CompletionState
from tests.fakes import FakeEngine
from tests.gateway_app import Gateway, running_gateway
from tests.openai_spec import validate, validate_chat_sse, validate_completion, validate_completion_sse
from tests.sse_client import chunks, data_lines

ANSWER = "Hello from the fake engine."
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gateway(fake_engine: FakeEngine) -> AsyncIterator[Gateway]:
    async with running_gateway(fake_engine, max_tokens_ceiling=64) as gw:
        yield gw


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as c:
        yield c


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": USER, **fields}


async def test_chat_stream_sends_the_role_with_the_first_content_and_ends_with_done(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    r = await client.post("/v1/chat/completions", json=chat_body(stream=True, max_tokens=5))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "set-cookie" not in r.headers  # stateless: no session is created
    parts = chunks(r.text)
    first, *rest = parts
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "H"}
    assert all("role" not in c["choices"][0]["delta"] for c in rest)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in parts) == ANSWER[:5]
    # The last token and the finish reason travel together.
    assert [c["choices"][0]["finish_reason"] for c in parts] == [None] * 4 + ["length"]
    assert len({c["id"] for c in parts}) == 1
    assert all("usage" not in c for c in parts)
    assert await gateway.wait_states(1) == [CompletionState.SUCCESS]


async def test_include_usage_adds_a_usage_chunk_before_done(client: httpx.AsyncClient) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    r = await client.post("/v1/chat/completions", json=body)
    *_, finish, usage = chunks(r.text)
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []
    prompt_tokens = len("<user>hi</user><assistant>")  # the fake tokenizer: one token per character
    expected = {"prompt_tokens": prompt_tokens, "completion_tokens": len(ANSWER)}
    assert usage["usage"] == {**expected, "total_tokens": prompt_tokens + len(ANSWER)}


async def test_enable_prompt_tokens_details_reports_the_cached_prompt_tokens_in_chat_and_completions(
    fake_engine: FakeEngine,
) -> None:
    fake_engine.prefix_cache = True
    question = [{"role": "user", "content": "q" * 40}]
    async with (
        running_gateway(fake_engine, enable_prompt_tokens_details=True) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
    ):
        chats = [(await client.post("/v1/chat/completions", json=chat_body(messages=question))).json() for _ in "ab"]
        body = chat_body(messages=question, stream=True, stream_options={"include_usage": True})
        streamed = chunks((await client.post("/v1/chat/completions", json=body)).text)[-1]
        prompt = {"model": "fake-model", "prompt": "q" * 40}
        completions = [(await client.post("/v1/completions", json=prompt)).json() for _ in "ab"]
    for answer in chats:
        validate("CreateChatCompletionResponse", answer)
    blocks = len(fake_engine.prompts[0]) // 16 * 16
    cached = (len(fake_engine.prompts[0]) - 1) // 16 * 16  # whole blocks, never the last token (as vLLM)
    assert [c["usage"]["prompt_tokens_details"] for c in chats] == [
        {"cached_tokens": 0, "cache_write_tokens": blocks},
        {"cached_tokens": cached, "cache_write_tokens": blocks - cached},
    ]
    assert streamed["usage"]["prompt_tokens_details"] == {
        "cached_tokens": cached,
        "cache_write_tokens": blocks - cached,
    }
    validate_completion(completions[1])
    assert [c["usage"]["prompt_tokens_details"] for c in completions] == [
        {"cached_tokens": 0, "cache_write_tokens": 32},
        {"cached_tokens": 32, "cache_write_tokens": 0},
    ]


async def test_an_answer_without_text_still_sends_the_role(client: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    fake_engine.answer = ""
    r = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    (only,) = chunks(r.text)
    assert only["choices"][0]["delta"] == {"role": "assistant", "content": ""}


async def test_non_streaming_chat_is_one_completion_object(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=chat_body(max_completion_tokens=4))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hell", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
        }
    ]
    assert body["usage"]["completion_tokens"] == 4


async def test_messages_go_through_the_chat_template(client: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]},
    ]
    r = await client.post("/v1/chat/completions", json={"model": "fake-model", "messages": messages})
    assert r.status_code == 200
    assert fake_engine.prompt_text() == "<system>be brief</system><user>one two</user><assistant>"


async def test_sampling_fields_reach_the_engine(client: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    fields = {
        "max_tokens": 7,
        "temperature": 0.0,
        "top_p": 0.5,
        "stop": ["\n", "END"],
        "seed": 42,
        "ignore_eos": True,
        "top_k": -1,
        "min_tokens": 3,
        "repetition_penalty": 1.1,
        "user": "someone",
        "n": 1,
    }
    r = await client.post("/v1/completions", json={"model": "fake-model", "prompt": "abc", **fields})
    assert r.status_code == 200
    options = fake_engine.options[-1]
    assert (options.max_tokens, options.temperature, options.top_p, options.top_k) == (7, 0.0, 0.5, 0)
    assert (options.stop, options.seed, options.ignore_eos) == (("\n", "END"), 42, True)
    assert (options.min_tokens, options.repetition_penalty) == (3, 1.1)
    assert fake_engine.prompt_text() == "abc"


async def test_completions_stream_text_chunks(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={"model": "fake-model", "prompt": "abc", "stream": True})
    parts = chunks(r.text)
    assert {c["object"] for c in parts} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in parts) == ANSWER


async def test_models_lists_the_served_model(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models")
    assert [m["id"] for m in r.json()["data"]] == ["fake-model"]


async def test_served_model_name_replaces_the_engine_name(fake_engine: FakeEngine) -> None:
    async with running_gateway(fake_engine, served_model_name="team/chat") as gw:
        api = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
        assert [m.id async for m in api.models.list()] == ["team/chat"]
        done = await api.chat.completions.create(model="team/chat", messages=[{"role": "user", "content": "x"}])
        assert done.model == "team/chat"
        with pytest.raises(openai.NotFoundError):
            await api.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}])
        await api.close()


async def test_the_official_client_streams_and_reads_usage(gateway: Gateway) -> None:
    api = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    stream = await api.chat.completions.create(
        model="fake-model", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == ANSWER
    assert usage is not None and usage.completion_tokens == len(ANSWER)
    await api.close()


def too_long_prompt() -> dict[str, Any]:
    return chat_body(messages=[{"role": "user", "content": "x" * 5000}])


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        pytest.param("/v1/chat/completions", b"{not json", 400, None, id="malformed-json"),
        pytest.param("/v1/chat/completions", chat_body(model="gpt-4"), 404, None, id="unknown-model"),
        pytest.param("/v1/chat/completions", chat_body(n=2), 400, "n", id="n-above-1"),
        pytest.param("/v1/chat/completions", chat_body(max_tokens=-1), 400, "max_tokens", id="negative-max-tokens"),
        pytest.param("/v1/chat/completions", chat_body(max_tokens=65), 400, "max_tokens", id="over-server-max"),
        pytest.param("/v1/chat/completions", chat_body(logit_bias={"1": 5}), 400, "logit_bias", id="unsupported-field"),
        pytest.param("/v1/chat/completions", chat_body(temperature=3), 400, "temperature", id="temperature-range"),
        pytest.param("/v1/chat/completions", chat_body(messages=[]), 400, "messages", id="no-messages"),
        pytest.param(
            "/v1/chat/completions",
            chat_body(messages=[{"role": "tool", "content": "x"}]),
            400,
            "messages[0].role",
            id="unknown-role",
        ),
        pytest.param(
            "/v1/chat/completions",
            chat_body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
            400,
            "messages[0].content",
            id="image-content",
        ),
        pytest.param(
            "/v1/chat/completions",
            chat_body(stream_options={"include_usage": True}),
            400,
            "stream_options",
            id="stream-options-without-stream",
        ),
        pytest.param("/v1/chat/completions", too_long_prompt(), 400, "messages", id="prompt-too-long"),
        pytest.param("/v1/completions", {"model": "fake-model", "prompt": ""}, 400, "prompt", id="empty-prompt"),
        pytest.param(
            "/v1/completions",
            {"model": "fake-model", "prompt": "x", "max_tokens": 2, "min_tokens": 3},
            400,
            "min_tokens",
            id="min-over-max",
        ),
    ],
)
async def test_bad_requests_get_an_openai_error(
    client: httpx.AsyncClient,
    fake_engine: FakeEngine,
    path: str,
    body: bytes | dict[str, Any],
    status: int,
    param: str | None,
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = await client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"] and error["type"] == "invalid_request_error"
    assert fake_engine.prompts == []


async def test_an_engine_failure_mid_stream_ends_with_an_error_chunk(
    client: httpx.AsyncClient, gateway: Gateway, fake_engine: FakeEngine
) -> None:
    fake_engine.fail_after_tokens = 3
    r = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    lines = data_lines(r.text)
    assert lines[-1] == "[DONE]"
    error = json.loads(lines[-2])["error"]
    assert error["type"] == "server_error" and "Traceback" not in error["message"]
    assert "".join(json.loads(x)["choices"][0]["delta"]["content"] for x in lines[:-2]) == ANSWER[:3]
    assert await gateway.wait_states(1) == [CompletionState.UNKNOWN_ERROR_OCCURRED]


async def test_a_full_queue_is_a_429_the_official_client_raises(fake_engine: FakeEngine) -> None:
    fake_engine.gate = asyncio.Event()
    async with running_gateway(fake_engine, concurrency=1, queue_size=0) as gw:
        api = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
        holder = asyncio.create_task(api.chat.completions.create(model="fake-model", messages=USER))
        async with asyncio.timeout(30):
            while not fake_engine.running:
                await asyncio.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as refused:
            await api.chat.completions.create(model="fake-model", messages=USER)
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert refused.value.body == {
            "message": "the server is busy; try again shortly",
            "type": "rate_limit_error",
            "param": None,
            "code": "too_many_requests",
        }
        fake_engine.gate.set()
        async with asyncio.timeout(30):
            assert (await holder).choices[0].message.content == ANSWER
        # The refused request never entered the queue: only the admitted one reports.
        assert await gw.wait_states(1) == [CompletionState.SUCCESS]
        await api.close()


@pytest.mark.parametrize("chunked", [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")])
async def test_a_body_over_the_limit_is_a_413(fake_engine: FakeEngine, chunked: bool) -> None:
    body = json.dumps(chat_body(messages=[{"role": "user", "content": "x" * 4096}])).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    async with (
        running_gateway(fake_engine, max_body_bytes=2048) as gw,
        httpx.AsyncClient(base_url=gw.url) as client,
    ):
        content = pieces() if chunked else body
        r = await client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "body_too_large"
        assert fake_engine.prompts == []


async def test_max_completion_tokens_is_named_when_it_is_too_large(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=chat_body(max_tokens=4, max_completion_tokens=65))
    assert (r.status_code, r.json()["error"]["param"]) == (400, "max_completion_tokens")
    assert "--max-tokens-ceiling" in r.json()["error"]["message"]


async def test_a_request_without_a_model_is_served_by_the_served_model(client: httpx.AsyncClient) -> None:
    # vLLM's rule: `model` may be left out; the answer names the model that served it.
    r = await client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["model"] == "fake-model"


@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"), pytest.param(False, id="body")])
async def test_plain_answers_conform_to_openais_schemas(client: httpx.AsyncClient, stream: bool) -> None:
    options = {"stream_options": {"include_usage": True, "continuous_usage_stats": True}} if stream else {}
    chat = await client.post("/v1/chat/completions", json=chat_body(stream=stream, max_tokens=6, **options))
    text = await client.post(
        "/v1/completions", json={"model": "fake-model", "prompt": "abc", "stream": stream, **options}
    )
    if stream:
        validate_chat_sse(chat.text)
        validate_completion_sse(text.text)
        # continuous usage: every chunk with a choice counts the tokens so far
        counts = [c["usage"]["completion_tokens"] for c in chunks(chat.text) if c["choices"]]
        assert counts == list(range(1, 7))
    else:
        validate("CreateChatCompletionResponse", chat.json())
        validate_completion(text.json())
    refused = await client.post("/v1/chat/completions", json=chat_body(n=2))
    validate("ErrorResponse", refused.json())
    validate("ListModelsResponse", (await client.get("/v1/models")).json())
