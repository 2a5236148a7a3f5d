"""The official `openai` client, sync and async, against the gateway on the real engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway import CompletionState
from gateway.core.vllm_engine import VLLMEngine
from tests.gateway_app import Gateway, metric, running_gateway, scrape

pytestmark = pytest.mark.engine

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there"},
]
TOKENS = 16


@pytest.fixture
async def gateway(real_engine: VLLMEngine) -> AsyncIterator[Gateway]:
    async with running_gateway(real_engine, lifespan="off", max_new_tokens=960) as gw:
        yield gw


def prompt_tokens(engine: VLLMEngine) -> int:
    return len(engine.tokenizer.encode(engine.tokenizer.render_chat(MESSAGES, add_generation_prompt=True)))


def sync_chat(url: str, model: str, stream: bool) -> tuple[str, int, int]:
    """One chat completion with the blocking client: (text, prompt_tokens, completion_tokens)."""
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as api:
        if not stream:
            done = api.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=TOKENS, extra_body={"ignore_eos": True}
            )
            assert done.usage is not None
            return done.choices[0].message.content or "", done.usage.prompt_tokens, done.usage.completion_tokens
        text, usage = "", None
        for chunk in api.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_tokens=TOKENS,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        ):
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
            usage = chunk.usage or usage
        assert usage is not None
        return text, usage.prompt_tokens, usage.completion_tokens


async def async_chat(url: str, model: str, stream: bool) -> tuple[str, int, int]:
    """The same request with the async client."""
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as api:
        if not stream:
            done = await api.chat.completions.create(
                model=model, messages=MESSAGES, max_completion_tokens=TOKENS, extra_body={"ignore_eos": True}
            )
            assert done.usage is not None
            return done.choices[0].message.content or "", done.usage.prompt_tokens, done.usage.completion_tokens
        text, usage = "", None
        async for chunk in await api.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_completion_tokens=TOKENS,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        ):
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
            usage = chunk.usage or usage
        assert usage is not None
        return text, usage.prompt_tokens, usage.completion_tokens


@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"), pytest.param(False, id="non-stream")])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_the_official_client_gets_an_answer_whose_usage_counts_its_tokens(
    gateway: Gateway, real_engine: VLLMEngine, kind: str, stream: bool
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        before = metric(await scrape(client), "chatstream:generation_tokens_total")
        async with asyncio.timeout(120):
            if kind == "sync":  # the blocking client must not block the loop the server runs in
                result = await asyncio.to_thread(sync_chat, gateway.url, real_engine.model_name, stream)
            else:
                result = await async_chat(gateway.url, real_engine.model_name, stream)
        text, prompt, completion = result
        assert text
        assert (prompt, completion) == (prompt_tokens(real_engine), TOKENS)
        assert await gateway.wait_states(1) == [CompletionState.SUCCESS]
        after = metric(await scrape(client), "chatstream:generation_tokens_total")
        assert after - before == TOKENS


async def test_a_repeated_prompt_reports_the_tokens_vllms_prefix_cache_served(
    gateway: Gateway, real_engine: VLLMEngine
) -> None:
    # Regression: usage.input_tokens_details.cached_tokens was always 0.
    prompt = "the gateway keeps the conversation " * 30  # long enough to fill whole KV blocks: only those are cached
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as api:
        answers = [
            await api.responses.create(model=real_engine.model_name, input=prompt, max_output_tokens=4, store=False)
            for _ in range(2)
        ]
    first, second = (answer.usage for answer in answers)
    assert first is not None and second is not None
    assert second.input_tokens == first.input_tokens
    assert 0 < second.input_tokens_details.cached_tokens < second.input_tokens
    # What the first request wrote to the cache is what the second one found there.
    assert second.input_tokens_details.cached_tokens == first.input_tokens_details.cache_write_tokens


async def test_the_official_client_streams_a_background_response_and_resumes_it_midway(
    gateway: Gateway, real_engine: VLLMEngine
) -> None:
    # As on vLLM's own server: the POST's answer is the run's events; a retrieve with
    # `starting_after` sends the rest again, the same events, and the stored response agrees.
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as api:
        stream = await api.responses.create(
            model=real_engine.model_name, input="hello there", max_output_tokens=TOKENS, background=True, stream=True
        )
        events = [event async for event in stream]
        response_id = events[0].response.id  # type: ignore[union-attr]
        resumed = await api.responses.retrieve(response_id, stream=True, starting_after=2)
        tail = [event async for event in resumed]
        stored = await api.responses.retrieve(response_id)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[0].response.status == "queued"
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")
    assert [event.model_dump() for event in tail] == [event.model_dump() for event in events[3:]]
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text and text == stored.output_text == last.response.output_text
    assert stored.status == last.response.status and stored.usage is not None
    assert 0 < stored.usage.output_tokens <= TOKENS


async def test_with_prompt_tokens_details_chat_usage_reports_the_cached_prompt_tokens(
    real_engine: VLLMEngine,
) -> None:
    # Long enough to fill whole KV blocks: only those are cached.
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "a cached question " * 40}]
    async with (
        running_gateway(real_engine, lifespan="off", enable_prompt_tokens_details=True) as gw,
        openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0) as api,
    ):
        usages = []
        for stream in (False, True):
            if not stream:
                done = await api.chat.completions.create(model=real_engine.model_name, messages=messages, max_tokens=4)
                usages.append(done.usage)
                continue
            chunks = await api.chat.completions.create(
                model=real_engine.model_name,
                messages=messages,
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
            usages += [chunk.usage async for chunk in chunks if chunk.usage is not None]
    first, second = usages
    assert first is not None and first.prompt_tokens_details is not None
    assert second is not None and second.prompt_tokens_details is not None
    assert second.prompt_tokens_details.cached_tokens is not None
    assert 0 < second.prompt_tokens_details.cached_tokens < second.prompt_tokens


async def test_completions_encode_the_prompt_as_given(gateway: Gateway, real_engine: VLLMEngine) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as api:
        async with asyncio.timeout(120):
            done = await api.completions.create(
                model=real_engine.model_name, prompt="the gateway", max_tokens=8, extra_body={"ignore_eos": True}
            )
    assert done.usage is not None
    assert done.usage.prompt_tokens == len(real_engine.tokenizer.encode("the gateway"))
    assert done.usage.completion_tokens == 8 and done.choices[0].finish_reason == "length"


async def test_leaving_mid_stream_aborts_the_engine_request(gateway: Gateway, real_engine: VLLMEngine) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as api:
        async with asyncio.timeout(120):
            stream = await api.chat.completions.create(
                model=real_engine.model_name,
                messages=MESSAGES,
                max_tokens=900,  # far more than can be produced before the client leaves
                stream=True,
                extra_body={"ignore_eos": True},
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break
            await stream.close()
            assert await gateway.wait_states(1) == [CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING]
    # The callback fires after the abort: by then the engine has let go of the request,
    # long before 900 tokens could have been generated.
    assert real_engine.num_unfinished() == 0
    await gateway.handled.wait_handled()  # handled to its end: a second report would have come
    assert gateway.states == [CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING]


async def test_stream_interval_hands_the_same_tokens_over_in_fewer_chunks(
    gateway: Gateway, real_engine: VLLMEngine
) -> None:
    """vLLM's `stream_interval` (a request field, or `--engine-arg stream_interval=N`): fewer writes, same answer."""

    async def streamed(interval: int) -> tuple[list[str], int]:
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as api:
            chunks, completion = [], 0
            stream = await api.chat.completions.create(
                model=real_engine.model_name,
                messages=MESSAGES,
                max_tokens=32,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True, "stream_interval": interval},
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    chunks.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    completion = chunk.usage.completion_tokens
            return chunks, completion

    async with asyncio.timeout(120):
        each, every_fourth = await streamed(1), await streamed(4)
    assert "".join(each[0]) == "".join(every_fourth[0]) and each[1] == every_fourth[1] == 32
    # Four tokens a chunk, the first one alone: at most 1 + 31 / 4 rounded up.
    assert len(every_fourth[0]) <= 9 < len(each[0])
