"""The Responses and Conversations APIs with the official SDK, on the real engine, across two replicas.

Two gateways (two whole apps, each with its own store client, routes and admission) share one
store, as replicas behind a router would: a real Redis, and once an SQLite file (each replica
its own connection, as two processes would have). They share the run's one engine too, to keep
one vLLM engine per test run. "Restarting both" ends both apps and starts two new ones: what
survives is what the store keeps.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway import Settings
from gateway.app import make_store
from gateway.core.vllm_engine import VLLMEngine
from tests.gateway_app import running_gateway
from tests.openai_spec import validate, validate_response_events
from tests.servers import RedisServer

pytestmark = pytest.mark.engine

MODEL = "tiny"
TOKENS = 8
ADD = {
    "type": "function",
    "name": "add",
    "description": "Add two integers.",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
    "strict": True,
}

FLAG: Any = {
    "format": {
        "type": "json_schema",
        "name": "flag",
        "schema": {
            "type": "object",
            "properties": {"flag": {"type": "boolean"}},
            "required": ["flag"],
            "additionalProperties": False,
        },
        "strict": True,
    }
}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text("key-a alice\nkey-b bob\n")
    return path


@pytest.fixture(params=["redis", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The `--session-store` both replicas are given."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gateway.db"
    redis: RedisServer = request.getfixturevalue("redis_server")
    return redis.url


@asynccontextmanager
async def replicas(engine: VLLMEngine, store_url: str, keys: Path) -> AsyncIterator[list[str]]:
    """Two gateways on `engine` sharing the store at `store_url`: their base URLs."""
    settings: dict[str, Any] = {
        "keys_file": keys,
        "served_model_name": [MODEL],
        "enable_auto_tool_choice": True,
        "tool_call_parser": "hermes",
    }
    async with AsyncExitStack() as stack:
        urls = []
        for _ in "ab":
            store = make_store(Settings(session_store=store_url))
            stack.push_async_callback(store.close)
            gateway = await stack.enter_async_context(running_gateway(engine, lifespan="off", store=store, **settings))
            urls.append(gateway.url + "/v1")
        yield urls


def sdk(url: str, key: str = "key-a") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0)


def checked(response: Any) -> Any:
    validate("Response", response.model_dump(mode="json", exclude_unset=True, by_alias=True))
    return response


async def test_a_chain_continues_streams_and_is_deleted_across_replicas_and_survives_a_restart(
    real_engine: VLLMEngine, store_url: str, keys_file: Path
) -> None:
    async with (
        replicas(real_engine, store_url, keys_file) as (url_a, url_b),
        sdk(url_a) as a,
        sdk(url_b) as b,
        sdk(url_b, "key-b") as other,
    ):
        first = checked(await a.responses.create(model=MODEL, input="hello", max_output_tokens=TOKENS))
        second = checked(
            await b.responses.create(
                model=MODEL, input="and again", previous_response_id=first.id, max_output_tokens=TOKENS
            )
        )
        assert first.usage is not None and second.usage is not None
        # B rendered A's turn: its prompt holds the first question and answer.
        assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
        assert (await b.responses.retrieve(second.id)).model_dump() == second.model_dump()

        # Structured output: the grammar ends the answer, so the stream ends with response.completed
        # (at max_output_tokens it would be response.incomplete, which the SDK's helper does not finish on).
        async with b.responses.stream(
            model=MODEL, input="streamed", previous_response_id=second.id, text=FLAG, max_output_tokens=64
        ) as stream:
            events = [event async for event in stream]
            third = await stream.get_final_response()
        validate_response_events(
            (e.type, e.model_dump(mode="json", exclude_unset=True, by_alias=True, warnings=False)) for e in events
        )
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert isinstance(json.loads(third.output_text)["flag"], bool)
        assert third.usage is not None and third.usage.input_tokens > second.usage.input_tokens

        for guess in (third.id[:-4] + "AAAA", "resp_" + "x" * 32):
            with pytest.raises(openai.NotFoundError):
                await b.responses.retrieve(guess)
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(third.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.create(model=MODEL, input="x", previous_response_id=third.id)

        await a.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            await b.responses.retrieve(first.id)

    # Both replicas restarted: what survives is in the store.
    async with replicas(real_engine, store_url, keys_file) as (_, url_b), sdk(url_b) as b:
        assert (await b.responses.retrieve(third.id)).output_text == third.output_text
        fourth = checked(
            await b.responses.create(
                model=MODEL, input="after the restart", previous_response_id=third.id, max_output_tokens=TOKENS
            )
        )
        assert fourth.status in ("completed", "incomplete")
        items = await b.responses.input_items.list(fourth.id)
        assert [item.content[0].text for item in items.data] == ["after the restart"]  # type: ignore[union-attr]


async def test_conversations_end_to_end_across_replicas(
    real_engine: VLLMEngine, store_url: str, keys_file: Path
) -> None:
    async with replicas(real_engine, store_url, keys_file) as (url_a, url_b), sdk(url_a) as a, sdk(url_b) as b:
        conversation = await a.conversations.create(
            items=[{"type": "message", "role": "system", "content": "Be brief."}], metadata={"topic": "t"}
        )
        validate("ConversationResource", conversation.model_dump(mode="json"))
        one = checked(
            await b.responses.create(model=MODEL, input="one", conversation=conversation.id, max_output_tokens=TOKENS)
        )
        two = checked(
            await a.responses.create(model=MODEL, input="two", conversation=conversation.id, max_output_tokens=TOKENS)
        )
        assert one.usage is not None and two.usage is not None
        assert two.usage.input_tokens > one.usage.input_tokens + one.usage.output_tokens
        listed = await b.conversations.items.list(conversation.id, order="asc")
        validate("ConversationItemList", listed.model_dump(mode="json", exclude_unset=True, by_alias=True))
        roles = [getattr(item, "role", None) for item in listed.data]
        assert roles == ["system", "user", "assistant", "user", "assistant"]
        texts = [item.content[0].text for item in listed.data]  # type: ignore[union-attr]
        assert texts == ["Be brief.", "one", one.output_text, "two", two.output_text]
        await b.conversations.delete(conversation.id)
        with pytest.raises(openai.NotFoundError):
            await a.conversations.retrieve(conversation.id)


async def test_a_forced_function_call_and_its_output_continue_the_chain(
    real_engine: VLLMEngine, store_url: str, keys_file: Path
) -> None:
    async with replicas(real_engine, store_url, keys_file) as (url_a, url_b), sdk(url_a) as a, sdk(url_b) as b:
        called = checked(
            await a.responses.create(
                model=MODEL,
                input="add 2 and 3",
                tools=[ADD],
                tool_choice="required",  # type: ignore[list-item]
            )
        )
        calls = [item for item in called.output if item.type == "function_call"]
        assert calls, called.output
        arguments = json.loads(calls[0].arguments)
        assert set(arguments) == {"a", "b"} and all(isinstance(v, int) for v in arguments.values())
        answer = checked(
            await b.responses.create(
                model=MODEL,
                previous_response_id=called.id,
                input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "5"}],
                tools=[ADD],  # type: ignore[list-item]
                tool_choice="none",
                max_output_tokens=TOKENS,
            )
        )
        assert answer.usage is not None and called.usage is not None
        assert answer.usage.input_tokens > called.usage.input_tokens


async def test_a_background_response_started_on_one_replica_is_polled_to_its_end_on_the_other(
    real_engine: VLLMEngine, store_url: str, keys_file: Path
) -> None:
    async with replicas(real_engine, store_url, keys_file) as (url_a, url_b), sdk(url_a) as a, sdk(url_b) as b:
        queued = await a.responses.create(model=MODEL, input="hello", max_output_tokens=TOKENS, background=True)
        checked(queued)
        assert queued.status == "queued" and queued.background is True
        async with asyncio.timeout(60):
            while (done := await b.responses.retrieve(queued.id)).status in ("queued", "in_progress"):
                await asyncio.sleep(0.05)
        checked(done)
        assert done.status in ("completed", "incomplete") and done.output_text
        assert done.usage is not None and done.usage.output_tokens > 0
        with pytest.raises(openai.BadRequestError, match="already"):
            await b.responses.cancel(queued.id)
