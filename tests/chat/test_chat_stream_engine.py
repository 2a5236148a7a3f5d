"""`/chat_stream` over the real vLLM engine (CPU, tiny model): the paths where the engine matters.

One engine serves the whole run (the session-scoped `real_engine` fixture), so
these gateways run with lifespan off: they must not stop it. Answers are short
(`ignore_eos`, a few tokens) except where a test must still be generating when
the client leaves: those ask for many tokens and are aborted after the first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from gateway import ChatStream, CompletionState, Settings, create_app
from gateway.core.vllm_engine import VLLMEngine
from tests.chat.test_chat_stream import SECRET, Ended, chat_turn, messages_of, recording_callback
from tests.live import serve
from tests.sse_client import answer_of, eventually, first_event, hang_up, iter_events, open_raw_post

pytestmark = pytest.mark.engine

# Long enough that the answer is still being generated when the test hangs up
# (seconds of work on a CPU), short enough to leave room for the prompt in
# max_model_len=1024. The request is aborted after its first tokens.
LONG_ANSWER = 960


@dataclass
class RealGateway:
    url: str
    chat: ChatStream
    ended: list[Ended] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=60)

    def states(self) -> list[CompletionState]:
        return [e.state for e in self.ended]

    async def wait_ended(self, count: int) -> list[Ended]:
        await eventually(lambda: len(self.ended) >= count, timeout=60)
        return self.ended

    async def wait_load(self, in_flight: int, queued: int) -> None:
        def reached() -> bool:
            load = self.chat.admission.load()
            return (load.running, load.waiting) == (in_flight, queued)

        await eventually(reached, timeout=60)


@asynccontextmanager
async def real_gateway(engine: VLLMEngine, **chat_kwargs: Any) -> AsyncIterator[RealGateway]:
    chat = ChatStream(engine=engine, ignore_eos=True, **chat_kwargs)
    ended: list[Ended] = []
    app = create_app(
        Settings(session_secret=[SECRET], secure_cookies=False), chat_stream=chat, callback=recording_callback(ended)
    )
    async with serve(app, lifespan="off") as url:
        yield RealGateway(url, chat, ended)


async def test_the_real_engine_streams_and_the_conversation_continues(real_engine: VLLMEngine) -> None:
    async with real_gateway(real_engine, max_new_tokens=12) as gw, gw.client() as client:
        response, events = await chat_turn(client, "hello")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        assert [e.event for e in events] == ["delta"] * (len(events) - 1) + ["done"]
        done = events[-1].data
        assert done["state"] == "success" and done["finish_reason"] == "length"
        assert done["message_id"] == response.headers["x-message-id"]
        assert done["usage"]["completion_tokens"] == 12
        first_answer = answer_of(events)
        prompt = (await client.get("/get_prompt")).json()
        assert prompt["messages"] == [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": first_answer},
        ]
        # The model's own chat template (ChatML for the tiny model) renders the conversation.
        assert (
            prompt["prompt"] == f"<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n{first_answer}<|im_end|>\n"
        )
        assert done["usage"]["prompt_tokens"] == len(
            real_engine.tokenizer.encode("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")
        )

        _, events = await chat_turn(client, "and then?")
        turn2 = events[-1].data
        assert turn2["state"] == "success"
        assert turn2["usage"]["prompt_tokens"] == len(
            real_engine.tokenizer.encode(
                f"<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n{first_answer}<|im_end|>\n"
                "<|im_start|>user\nand then?<|im_end|>\n<|im_start|>assistant\n"
            )
        )
        assert [m["content"] for m in await messages_of(client)] == [
            "hello",
            first_answer,
            "and then?",
            answer_of(events),
        ]
        await gw.wait_ended(2)
    assert gw.states() == [CompletionState.SUCCESS, CompletionState.SUCCESS]
    assert real_engine.num_unfinished() == 0


async def test_a_disconnect_mid_stream_aborts_the_real_engine_request(real_engine: VLLMEngine) -> None:
    async with real_gateway(real_engine, max_new_tokens=LONG_ANSWER) as gw, gw.client() as client:
        async with client.stream("POST", "/chat_stream", json={"user_input": "talk"}) as response:
            assert (await first_event(response)).event == "delta"
        ended = await gw.wait_ended(1)
        assert gw.states() == [CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING]
        await eventually(lambda: real_engine.num_unfinished() == 0, timeout=60)
        partial = ended[0].messages[-1]
        assert partial["role"] == "assistant" and partial["content"]
        await gw.wait_load(0, 0)
        # The engine and the session carry on: a short next turn streams to its end.
        assert (await client.post("/set_generation_params", json={"max_new_tokens": 8})).status_code == 200
        _, events = await chat_turn(client, "again")
        assert events[-1].data["state"] == "success" and events[-1].data["usage"]["completion_tokens"] == 8
        assert [m["content"] for m in await messages_of(client)][:2] == ["talk", partial["content"]]


async def test_a_disconnect_while_queued_on_the_real_engine(real_engine: VLLMEngine) -> None:
    chat_kwargs = {"num_of_concurrent_executions": 1, "max_queue_size": 1, "max_new_tokens": LONG_ANSWER}
    async with real_gateway(real_engine, **chat_kwargs) as gw, gw.client() as client:
        async with (
            client.stream("POST", "/chat_stream", json={"user_input": "hold the slot"}) as response,
            aclosing(iter_events(response)) as events,
        ):
            # Still reading (closing the line iterator would hang up): this request keeps generating.
            assert (await anext(events)).event == "delta"
            _, waiting = await open_raw_post(gw.url, "/chat_stream", {"user_input": "leave while queued"})
            await gw.wait_load(1, 1)
            await hang_up(waiting)
            await gw.wait_load(1, 0)  # freed while the first request still generates
            assert await gw.wait_ended(1) == [Ended(CompletionState.CLIENT_DISCONNECTED_BEFORE_STREAMING, [], "")]
        await gw.wait_ended(2)
        await gw.wait_load(0, 0)
        await eventually(lambda: real_engine.num_unfinished() == 0, timeout=60)
    assert gw.states()[1] == CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING
