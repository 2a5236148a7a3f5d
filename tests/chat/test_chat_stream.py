"""`/chat_stream` end to end over a real uvicorn server, with the fake engine behind it.

Covers the contract in DESIGN.md: the SSE wire format, conversations carried by
the session cookie, regenerate, the four completion states from real client
behaviour, exact admission under bursts, refusals of bad input, and the helper
endpoints.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from itsdangerous import TimestampSigner

from gateway import ChatStream, CompletionState, MemoryStore, SessionMiddleware, Settings, create_app
from prompts import ChatPrompt, FormatName
from tests.fakes import AwayStore, FakeEngine
from tests.live import serve
from tests.sse_client import Event, answer_of, eventually, first_event, hang_up, open_raw_post, parse_sse

SECRET = "chat-stream-test-secret-0123456789"
COOKIE = "chatstream_session"


@dataclass(frozen=True)
class Ended:
    """One completion callback: the state and the conversation as the callback saw it."""

    state: CompletionState
    messages: list[dict[str, str]]
    prompt_text: str


@dataclass
class Gateway:
    url: str
    engine: FakeEngine
    chat: ChatStream
    store: MemoryStore
    ended: list[Ended] = field(default_factory=list)

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30, **kwargs)

    async def wait_ended(self, count: int) -> list[Ended]:
        await eventually(lambda: len(self.ended) >= count)
        return self.ended

    def states(self) -> list[CompletionState]:
        return [e.state for e in self.ended]

    async def load(self) -> dict[str, int]:
        async with self.client() as client:
            response = await client.get("/get_load")
        assert response.status_code == 200
        load: dict[str, int] = response.json()
        return load

    async def wait_load(self, in_flight: int, queued: int) -> None:
        async with asyncio.timeout(30):
            while True:
                load = await self.load()
                if (load["in_flight"], load["queued"]) == (in_flight, queued):
                    return
                await asyncio.sleep(0.01)


def recording_callback(ended: list[Ended]) -> Callable[[Request, CompletionState], None]:
    def record(request: Request, message: CompletionState) -> None:
        prompt = request.state.session.get_session().get("chat_prompt")
        ended.append(Ended(message, [dict(m) for m in prompt.messages], prompt.create_prompt()))

    return record


@asynccontextmanager
async def running_gateway(
    engine: FakeEngine | None = None, store: MemoryStore | None = None, **chat_kwargs: Any
) -> AsyncIterator[Gateway]:
    """create_app around a ChatStream over the fake engine, on a live server, recording every callback."""
    engine = engine or FakeEngine()
    chat = ChatStream(engine=engine, **chat_kwargs)
    ended: list[Ended] = []
    settings = Settings(session_secret=[SECRET], secure_cookies=False)
    store = MemoryStore() if store is None else store  # (an empty store is falsy: it has a length)
    app = create_app(settings, chat_stream=chat, callback=recording_callback(ended), store=store)
    async with serve(app) as url:
        yield Gateway(url, engine, chat, store, ended)


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with running_gateway() as gateway:
        yield gateway


async def chat_turn(client: httpx.AsyncClient, text: str = "hello", **extra: Any) -> tuple[httpx.Response, list[Event]]:
    response = await client.post("/chat_stream", json={"user_input": text, **extra})
    events = parse_sse(response.text) if response.status_code == 200 else []
    return response, events


async def messages_of(client: httpx.AsyncClient) -> list[dict[str, str]]:
    response = await client.get("/get_prompt")
    assert response.status_code == 200
    messages: list[dict[str, str]] = response.json()["messages"]
    return messages


def assert_json_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    assert body["error"]["message"] and "Traceback" not in response.text
    message: str = body["error"]["message"]
    return message


# --- 1. the wire format ---------------------------------------------------------------------


async def test_stream_is_sse_as_designed_and_matches_the_recorded_answer(gw: Gateway) -> None:
    async with gw.client() as client:
        response, events = await chat_turn(client, "What is a gateway?")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["cache-control"] == "no-cache"
        assert [e.event for e in events] == ["delta"] * (len(events) - 1) + ["done"]
        assert all(set(e.data) == {"text"} and e.data["text"] for e in events[:-1])
        done = events[-1].data
        assert set(done) == {"state", "message_id", "finish_reason", "usage"}
        assert done["state"] == "success"
        assert done["message_id"] == response.headers["x-message-id"]
        assert done["finish_reason"] == "stop"
        answer = answer_of(events)
        assert answer == gw.engine.answer
        assert done["usage"] == {"prompt_tokens": len(gw.engine.prompts[-1]), "completion_tokens": len(answer)}
        assert await messages_of(client) == [
            {"role": "user", "content": "What is a gateway?"},
            {"role": "assistant", "content": answer},
        ]


async def test_an_answer_cut_by_max_new_tokens_finishes_with_length() -> None:
    async with running_gateway(max_new_tokens=5) as gw, gw.client() as client:
        _, events = await chat_turn(client)
        assert answer_of(events) == gw.engine.answer[:5]
        assert events[-1].data["finish_reason"] == "length"


# --- 2. conversations follow the cookie -------------------------------------------------------


async def test_same_cookie_continues_the_conversation_and_another_jar_does_not(gw: Gateway) -> None:
    async with gw.client() as alice, gw.client() as bob:
        await chat_turn(alice, "first question")
        await chat_turn(alice, "second question")
        turn2 = gw.engine.prompt_text()
        assert turn2 == (
            f"<user>first question</user><assistant>{gw.engine.answer}</assistant>"
            "<user>second question</user><assistant>"
        )
        await chat_turn(bob, "bob's question")
        assert gw.engine.prompt_text() == "<user>bob's question</user><assistant>"
        assert [m["content"] for m in await messages_of(alice)] == [
            "first question",
            gw.engine.answer,
            "second question",
            gw.engine.answer,
        ]
        assert [m["content"] for m in await messages_of(bob)] == ["bob's question", gw.engine.answer]
        assert alice.cookies[COOKIE] != bob.cookies[COOKIE]


# --- 3. regenerate ---------------------------------------------------------------------------


async def test_regenerate_replaces_the_last_answer(gw: Gateway) -> None:
    async with gw.client() as client:
        await chat_turn(client, "tell me a story")
        first_prompt = gw.engine.prompt_text()
        gw.engine.answer = "A different story."
        response, events = await chat_turn(client, "", regenerate=True)
        assert response.status_code == 200
        assert answer_of(events) == "A different story."
        # The engine saw the same conversation again, without the old answer.
        assert gw.engine.prompt_text() == first_prompt
        assert await messages_of(client) == [
            {"role": "user", "content": "tell me a story"},
            {"role": "assistant", "content": "A different story."},
        ]


async def test_a_regenerate_that_produces_nothing_keeps_the_previous_answer(gw: Gateway) -> None:
    async with gw.client() as client:
        await chat_turn(client, "tell me a story")
        before = await messages_of(client)
        gw.engine.fail_after_tokens = 0
        response = await client.post("/chat_stream", json={"regenerate": True})
        assert_json_error(response, 500, "internal_error")
        ended = await gw.wait_ended(2)
        assert ended[1].state == CompletionState.UNKNOWN_ERROR_OCCURRED
        assert ended[1].messages == before == await messages_of(client)


async def test_clear_context_while_a_generation_runs_is_a_409(gw: Gateway) -> None:
    async with gw.client() as client:
        await chat_turn(client, "first")
        gw.engine.gate = asyncio.Event()
        running = asyncio.create_task(chat_turn(client, "second"))
        await gw.wait_load(1, 0)
        assert_json_error(await client.post("/clear_context"), 409, "session_busy")
        gw.engine.gate.set()
        await running
        assert len(await messages_of(client)) == 4


async def test_regenerate_on_an_empty_conversation_is_a_400(gw: Gateway) -> None:
    async with gw.client() as client:
        response = await client.post("/chat_stream", json={"regenerate": True})
        message = assert_json_error(response, 400, "invalid_request")
        assert "no answer to regenerate" in message
        assert await messages_of(client) == []
    assert gw.engine.prompts == [] and gw.ended == []


# --- 4. completion states --------------------------------------------------------------------


async def test_success_is_reported_once_after_the_answer_is_recorded(gw: Gateway) -> None:
    async with gw.client() as client:
        await chat_turn(client, "hi")
        ended = await gw.wait_ended(1)
        await gw.wait_load(0, 0)
    assert gw.states() == [CompletionState.SUCCESS]
    assert ended[0].messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": gw.engine.answer}]
    assert gw.engine.answer in ended[0].prompt_text


async def test_disconnect_after_the_first_delta_aborts_the_engine_request() -> None:
    engine = FakeEngine(answer="slow " * 200)
    engine.token_delay = 0.01
    async with running_gateway(engine) as gw, gw.client() as client:
        async with client.stream("POST", "/chat_stream", json={"user_input": "go on"}) as response:
            message_id = response.headers["x-message-id"]
            first = await first_event(response)
            assert first.event == "delta"
        ended = await gw.wait_ended(1)
        await gw.wait_load(0, 0)
        assert gw.states() == [CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING]
        assert message_id in engine.aborted
        assert engine.num_unfinished() == 0
        # The conversation keeps the part of the answer that was sent, nothing more.
        partial = ended[0].messages[-1]["content"]
        assert ended[0].messages[0] == {"role": "user", "content": "go on"}
        assert partial and engine.answer.startswith(partial) and len(partial) < gw.chat.config.max_new_tokens
        assert await messages_of(client) == ended[0].messages


async def test_disconnect_while_queued_frees_the_place_at_once() -> None:
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    async with running_gateway(engine, num_of_concurrent_executions=1, max_queue_size=1) as gw:
        async with gw.client() as a_client, gw.client() as c_client:
            a = asyncio.create_task(chat_turn(a_client, "holds the slot"))
            await gw.wait_load(1, 0)
            _, b_writer = await open_raw_post(gw.url, "/chat_stream", {"user_input": "leaves while queued"})
            await gw.wait_load(1, 1)
            await hang_up(b_writer)
            # The place is free while A still holds the slot: C is queued, not refused.
            await gw.wait_load(1, 0)
            assert gw.states() == [CompletionState.CLIENT_DISCONNECTED_BEFORE_STREAMING]
            assert gw.ended[0].messages == []  # its user turn was withdrawn
            c = asyncio.create_task(chat_turn(c_client, "queued after"))
            await gw.wait_load(1, 1)
            engine.gate.set()
            (a_response, a_events), (c_response, c_events) = await asyncio.gather(a, c)
        assert a_response.status_code == c_response.status_code == 200
        assert a_events[-1].data["state"] == c_events[-1].data["state"] == "success"
        await gw.wait_ended(3)
        await gw.wait_load(0, 0)
    assert sorted(gw.states()) == sorted(
        [CompletionState.CLIENT_DISCONNECTED_BEFORE_STREAMING, CompletionState.SUCCESS, CompletionState.SUCCESS]
    )
    assert len(engine.prompts) == 2  # the request that left never reached the engine


async def test_engine_failure_mid_stream_sends_an_error_event() -> None:
    engine = FakeEngine()
    engine.fail_after_tokens = 3
    async with running_gateway(engine) as gw, gw.client() as client:
        response, events = await chat_turn(client, "break")
        assert response.status_code == 200
        assert [e.event for e in events] == ["delta", "delta", "delta", "error"]
        error = events[-1].data["error"]
        assert set(error) == {"type", "message"} and error["type"] == "internal_error"
        assert "fake engine failure" not in error["message"]  # internal errors are not echoed
        ended = await gw.wait_ended(1)
        assert gw.states() == [CompletionState.UNKNOWN_ERROR_OCCURRED]
        assert ended[0].messages[-1] == {"role": "assistant", "content": engine.answer[:3]}
        await gw.wait_load(0, 0)
        assert engine.num_unfinished() == 0


async def test_an_answer_the_store_could_not_save_ends_with_an_error_event_not_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Regression: `done` went out before the save, so the client took for saved an answer the store never got.
    store = AwayStore()
    async with running_gateway(store=store) as gw, gw.client() as client:
        first, _ = await chat_turn(client, "first")
        assert first.status_code == 200
        store.away = True
        response, events = await chat_turn(client, "second")
        assert response.status_code == 200
        assert [e.event for e in events][-2:] == ["delta", "error"]
        assert answer_of(events) == gw.engine.answer  # the client keeps the whole answer it was sent
        assert events[-1].data["error"] == {
            "type": "session_store_unavailable",
            "message": "this answer may not have been saved: the session store is unavailable",
        }
        await gw.wait_ended(2)
        assert gw.states() == [CompletionState.SUCCESS, CompletionState.UNKNOWN_ERROR_OCCURRED]
        await gw.wait_load(0, 0)
        store.away = False
        answer = {"role": "assistant", "content": gw.engine.answer}
        assert await messages_of(client) == [{"role": "user", "content": "first"}, answer]
        third, _ = await chat_turn(client, "third")  # the lock was released: no 409
        assert third.status_code == 200
        contents = [m["content"] for m in await messages_of(client)]
        assert contents == ["first", gw.engine.answer, "third", gw.engine.answer]
    assert not [r for r in caplog.records if r.exc_info], "a store away is no traceback in the log"


async def test_engine_failure_before_the_first_delta_is_a_json_error_and_rolls_back() -> None:
    engine = FakeEngine()
    engine.fail_after_tokens = 0
    async with running_gateway(engine) as gw, gw.client() as client:
        response = await client.post("/chat_stream", json={"user_input": "break at once"})
        assert_json_error(response, 500, "internal_error")
        ended = await gw.wait_ended(1)
        assert gw.states() == [CompletionState.UNKNOWN_ERROR_OCCURRED]
        assert ended[0].messages == [] and await messages_of(client) == []
        await gw.wait_load(0, 0)


async def test_queue_wait_timeout_is_a_503_and_reports_unknown_error() -> None:
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    async with running_gateway(engine, num_of_concurrent_executions=1, max_queue_size=4, queue_timeout=0.3) as gw:
        async with gw.client() as a_client, gw.client() as b_client:
            a = asyncio.create_task(chat_turn(a_client, "holds the slot"))
            await gw.wait_load(1, 0)
            response = await b_client.post("/chat_stream", json={"user_input": "waits too long"})
            assert_json_error(response, 503, "queue_timeout")
            assert int(response.headers["retry-after"]) >= 1
            assert (await gw.wait_ended(1))[0] == Ended(CompletionState.UNKNOWN_ERROR_OCCURRED, [], "")
            assert await messages_of(b_client) == []
            engine.gate.set()
            a_response, _ = await a
            assert a_response.status_code == 200
        await gw.wait_ended(2)
        await gw.wait_load(0, 0)
    assert gw.states() == [CompletionState.UNKNOWN_ERROR_OCCURRED, CompletionState.SUCCESS]


async def test_engine_not_ready_is_a_503_and_fires_no_callback() -> None:
    engine = FakeEngine()
    async with running_gateway(engine) as gw, gw.client() as client:
        engine.dead = True
        response = await client.post("/chat_stream", json={"user_input": "anyone there?"})
        assert_json_error(response, 503, "engine_unavailable")
        assert int(response.headers["retry-after"]) >= 1
        assert await messages_of(client) == []
        await gw.wait_load(0, 0)
    assert gw.ended == []


# --- 5. admission ---------------------------------------------------------------------------


async def test_a_burst_gets_exactly_k_429s_and_the_rest_stream() -> None:
    slots, queue, extra = 2, 3, 4
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    async with running_gateway(engine, num_of_concurrent_executions=slots, max_queue_size=queue) as gw:
        clients = [gw.client() for _ in range(slots + queue + extra)]
        try:
            tasks = [asyncio.create_task(chat_turn(c, f"burst {i}")) for i, c in enumerate(clients)]
            await eventually(lambda: sum(t.done() for t in tasks) == extra)
            await gw.wait_load(slots, queue)
            refused = [t.result()[0] for t in tasks if t.done()]
            engine.gate.set()
            results = await asyncio.gather(*tasks)
        finally:
            for c in clients:
                await c.aclose()
        for response in refused:
            assert_json_error(response, 429, "too_many_requests")
            assert int(response.headers["retry-after"]) >= 1
        streamed = [(r, events) for r, events in results if r.status_code == 200]
        assert len(streamed) == slots + queue
        assert all(events[-1].data["state"] == "success" for _, events in streamed)
        assert sorted(r.status_code for r, _ in results) == [200] * (slots + queue) + [429] * extra
        await gw.wait_ended(slots + queue)
        await gw.wait_load(0, 0)
    assert gw.states() == [CompletionState.SUCCESS] * (slots + queue)


async def test_a_second_concurrent_request_on_one_session_is_a_409(gw: Gateway) -> None:
    async with gw.client() as client:
        await chat_turn(client, "make the cookie")
        gw.engine.gate = asyncio.Event()
        first = asyncio.create_task(chat_turn(client, "long answer"))
        await gw.wait_load(1, 0)
        second = await client.post("/chat_stream", json={"user_input": "impatient"})
        assert_json_error(second, 409, "session_busy")
        gw.engine.gate.set()
        response, events = await first
        assert events[-1].data["state"] == "success"
        # The lock was released: the session takes its next turn.
        response, events = await chat_turn(client, "now")
        assert response.status_code == 200
        assert [m["content"] for m in await messages_of(client) if m["role"] == "user"] == [
            "make the cookie",
            "long answer",
            "now",
        ]


async def test_no_slot_leaks_after_a_mix_of_endings() -> None:
    engine = FakeEngine(answer="word " * 100)
    async with running_gateway(engine, num_of_concurrent_executions=2, max_queue_size=2) as gw:
        async with gw.client() as client:  # success
            await chat_turn(client)
        engine.token_delay = 0.01
        async with gw.client() as client, client.stream("POST", "/chat_stream", json={"user_input": "cut"}) as response:
            await first_event(response)
        await gw.wait_ended(2)
        engine.token_delay = 0.0
        engine.gate = asyncio.Event()
        holders = [gw.client() for _ in range(2)]
        holding = [asyncio.create_task(chat_turn(c, "hold")) for c in holders]
        await gw.wait_load(2, 0)
        _, waiting = await open_raw_post(gw.url, "/chat_stream", {"user_input": "leave"})
        async with gw.client() as client:
            busy_cookie_turn = asyncio.create_task(chat_turn(client, "queued"))
            await gw.wait_load(2, 2)
            async with gw.client() as late:  # queue full
                assert (await chat_turn(late))[0].status_code == 429
            await hang_up(waiting)  # disconnect while queued
            await gw.wait_load(2, 1)
            engine.gate.set()
            await asyncio.gather(*holding, busy_cookie_turn)
        for c in holders:
            await c.aclose()
        engine.gate = None
        engine.fail_after_tokens = 2
        async with gw.client() as client:  # engine failure
            await chat_turn(client)
        engine.fail_after_tokens = None
        await gw.wait_ended(7)
        await gw.wait_load(0, 0)
        assert sorted(gw.states()) == sorted(
            [CompletionState.SUCCESS] * 4
            + [
                CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING,
                CompletionState.CLIENT_DISCONNECTED_BEFORE_STREAMING,
                CompletionState.UNKNOWN_ERROR_OCCURRED,
            ]
        )
        # Every slot and queue place is usable again: slots + queue concurrent requests, no 429.
        engine.gate = asyncio.Event()
        clients = [gw.client() for _ in range(4)]
        tasks = [asyncio.create_task(chat_turn(c)) for c in clients]
        await gw.wait_load(2, 2)
        engine.gate.set()
        results = await asyncio.gather(*tasks)
        for c in clients:
            await c.aclose()
        assert [r.status_code for r, _ in results] == [200] * 4
        await gw.wait_load(0, 0)
        assert engine.num_unfinished() == 0


async def test_get_load_reports_capacity_and_queue_size() -> None:
    async with running_gateway(num_of_concurrent_executions=3, max_queue_size=5) as gw:
        assert await gw.load() == {"in_flight": 0, "queued": 0, "capacity": 3, "queue_size": 5}


# --- 6. bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        pytest.param(b'{"user_input": ', 400, "invalid_request", id="invalid-json"),
        pytest.param(b"", 400, "invalid_request", id="empty-body"),
        pytest.param(b"\xff\xfe\x00", 400, "invalid_request", id="not-utf8"),
        pytest.param(b"[]", 422, "invalid_body", id="json-array"),
        pytest.param(b"null", 422, "invalid_body", id="json-null"),
        pytest.param(b'{"user_input": 5}', 422, "invalid_body", id="user-input-number"),
        pytest.param(b'{"user_input": ["hi"]}', 422, "invalid_body", id="user-input-list"),
        pytest.param(b'{"user_input": "hi", "regenerate": "yes"}', 422, "invalid_body", id="regenerate-string"),
        pytest.param(b'{"user_input": "hi", "temperature": 0}', 422, "invalid_body", id="extra-field"),
        pytest.param(b"{}", 400, "invalid_request", id="missing-user-input"),
        pytest.param(b'{"user_input": ""}', 400, "invalid_request", id="empty-user-input"),
        pytest.param(b'{"user_input": " \\n\\t "}', 400, "invalid_request", id="blank-user-input"),
        pytest.param(b'{"user_input": "' + b"x" * 32_001 + b'"}', 400, "invalid_request", id="oversized-user-input"),
    ],
)
async def test_bad_input_is_refused_with_a_json_error(gw: Gateway, body: bytes, status: int, kind: str) -> None:
    async with gw.client() as client:
        response = await client.post("/chat_stream", content=body, headers={"content-type": "application/json"})
        message = assert_json_error(response, status, kind)
        assert "xxxx" not in message  # the input is not echoed back
        assert await messages_of(client) == []
    assert gw.engine.prompts == [] and gw.ended == []


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("chunked", [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")])
async def test_an_oversized_body_is_a_413(chunked: bool) -> None:
    body = b'{"user_input": "' + b"y" * 4096 + b'"}'
    async with running_gateway(max_body_bytes=1024) as gw, gw.client() as client:
        content: bytes | AsyncIterator[bytes] = _chunks(body, 512) if chunked else body
        response = await client.post("/chat_stream", content=content)
        assert ("transfer-encoding" in response.request.headers) is chunked
        assert_json_error(response, 413, "body_too_large")
        assert (await chat_turn(client, "small"))[0].status_code == 200
    assert len(gw.engine.prompts) == 1


async def test_a_turn_that_cannot_fit_the_context_is_a_400_and_changes_nothing() -> None:
    engine = FakeEngine(answer="ok", max_model_len=200)
    async with running_gateway(engine, max_new_tokens=50) as gw, gw.client() as client:
        await chat_turn(client, "short")
        response = await client.post("/chat_stream", json={"user_input": "z" * 200})
        message = assert_json_error(response, 400, "invalid_request")
        assert "tokens" in message and "shorten" in message
        assert await messages_of(client) == [
            {"role": "user", "content": "short"},
            {"role": "assistant", "content": "ok"},
        ]
        assert (await chat_turn(client, "short again"))[0].status_code == 200
    assert len(engine.prompts) == 2


async def test_a_long_conversation_is_trimmed_for_the_engine_but_kept_whole() -> None:
    engine = FakeEngine(answer="ok", max_model_len=200)
    async with running_gateway(engine, max_new_tokens=20, system_prompt="SYS") as gw, gw.client() as client:
        await chat_turn(client, "a" * 60)
        await chat_turn(client, "b" * 60)
        # 180 tokens of budget: the oldest turn goes, the system prompt and the newest turn stay.
        assert engine.prompt_text() == "<system>SYS</system><user>" + "b" * 60 + "</user><assistant>"
        assert [m["content"] for m in await messages_of(client)] == ["a" * 60, "ok", "b" * 60, "ok"]


def _signed(session_id: str, secret: str = SECRET, age: float = 0.0) -> str:
    """A session cookie value as the gateway would sign it, `age` seconds ago."""

    class _Backdated(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age)

    return _Backdated(secret, salt="chatstream-gateway.session").sign(session_id).decode()


def _tampered(value: str) -> str:
    # Change the id, not the signature's last character: that one carries padding
    # bits, and some edits to it decode to the same signature.
    return ("A" if value[0] != "A" else "B") + value[1:]


@pytest.mark.parametrize(
    "make_cookie",
    [
        pytest.param(_tampered, id="tampered"),
        pytest.param(lambda value: "!!garbage%%;;", id="garbage"),
        pytest.param(lambda value: "x" * 5000, id="huge"),
        pytest.param(lambda value: _signed(value.split(".")[0], age=40 * 24 * 3600), id="expired"),
        pytest.param(lambda value: _signed(secrets.token_urlsafe(32)), id="unknown-id"),
        pytest.param(lambda value: _signed(value.split(".")[0], secret="another-secret-0123456789"), id="other-key"),
    ],
)
async def test_a_bad_cookie_gives_a_fresh_session(gw: Gateway, make_cookie: Callable[[str], str]) -> None:
    async with gw.client() as client:
        await chat_turn(client, "private history")
        good = client.cookies[COOKIE]
    bad = make_cookie(good)
    async with gw.client() as client:
        # Sent by hand the first time, as a browser holding that cookie would; its jar then
        # takes the Set-Cookie, as a browser's would.
        response = await client.post(
            "/chat_stream", json={"user_input": "who am I?"}, headers={"cookie": f"{COOKIE}={bad}"}
        )
        events = parse_sse(response.text)
        assert response.status_code == 200 and events[-1].data["state"] == "success"
        fresh = response.cookies[COOKIE]
        assert fresh not in (good, bad)
        assert gw.engine.prompt_text() == "<user>who am I?</user><assistant>"
        assert [m["content"] for m in await messages_of(client)] == ["who am I?", gw.engine.answer]


async def _raise_async(request: Request, message: CompletionState) -> None:
    raise RuntimeError("async callback bug")


def _raise_sync(request: Request, message: CompletionState) -> None:
    raise RuntimeError("sync callback bug")


@pytest.mark.parametrize("callback", [pytest.param(_raise_sync, id="sync"), pytest.param(_raise_async, id="async")])
async def test_a_raising_callback_never_breaks_the_stream(
    caplog: pytest.LogCaptureFixture, callback: Callable[[Request, CompletionState], Awaitable[None] | None]
) -> None:
    engine = FakeEngine()
    calls: list[CompletionState] = []

    async def counting(request: Request, message: CompletionState) -> None:
        calls.append(message)
        result = callback(request, message)
        if result is not None:
            await result

    chat = ChatStream(engine=engine)
    app = create_app(Settings(session_secret=[SECRET], secure_cookies=False), chat_stream=chat, callback=counting)
    with caplog.at_level(logging.ERROR, logger="gateway.core.completion"):
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
            for turn in ("one", "two"):
                response, events = await chat_turn(client, turn)
                assert response.status_code == 200 and events[-1].data["state"] == "success"
                await eventually(lambda: not chat.admission.load().running)
            assert len(await messages_of(client)) == 4
    assert calls == [CompletionState.SUCCESS, CompletionState.SUCCESS]
    assert sum("completion callback raised" in r.getMessage() for r in caplog.records) == 2


# --- the seed documents' library example ----------------------------------------------------------


async def test_the_seed_library_example_works_as_written() -> None:
    seen: list[tuple[str, str]] = []

    def my_callback(request, message):  # type: ignore[no-untyped-def]  # the seed's own spelling
        prompt = request.state.session.get_session().get("chat_prompt").create_prompt()
        seen.append((message, prompt))

    engine = FakeEngine()
    chat_stream = ChatStream(engine=engine, num_of_concurrent_executions=8, max_queue_size=32, max_new_tokens=256)
    app = FastAPI(lifespan=chat_stream.lifespan)
    app.add_middleware(
        SessionMiddleware, secret_key="seed-example-secret-key", store=MemoryStore(), http_only=True, secure=False
    )

    @app.post("/chat_stream")
    async def stream_api(request: Request):  # type: ignore[no-untyped-def]
        return await chat_stream.handle_chat_stream_request(request, callback=my_callback)

    @app.post("/chat_stream_intercepted")
    async def intercepted(request: Request):  # type: ignore[no-untyped-def]
        request_body = await request.body()
        assert b"user_input" in request_body  # what an interceptor would inspect
        return await chat_stream.handle_chat_stream_request(request, request_body)

    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post("/chat_stream", json={"user_input": "seed turn"})
        events = parse_sse(response.text)
        assert events[-1].data["state"] == "success"
        await eventually(lambda: len(seen) == 1)
        assert seen[0][0] == "success"
        answer = answer_of(events)
        assert seen[0][1] == f"<user>seed turn</user><assistant>{answer}</assistant>"
        response = await client.post("/chat_stream_intercepted", json={"user_input": "intercepted turn"})
        assert parse_sse(response.text)[-1].data["state"] == "success"
        assert engine.prompt_text() == (
            f"<user>seed turn</user><assistant>{answer}</assistant><user>intercepted turn</user><assistant>"
        )
    assert len(seen) == 1  # the interception route passed no callback


# --- helpers --------------------------------------------------------------------------------------


async def test_clear_context_forgets_the_conversation_and_rotates_the_cookie(gw: Gateway) -> None:
    async with gw.client() as client:
        await chat_turn(client, "remember me")
        old = client.cookies[COOKIE]
        response = await client.post("/clear_context")
        assert response.status_code == 200 and response.json() == {"cleared": True}
        new = response.cookies[COOKIE]
        assert new != old
        assert await messages_of(client) == []
        await chat_turn(client, "fresh start")
        assert gw.engine.prompt_text() == "<user>fresh start</user><assistant>"
    async with gw.client() as stale:
        response = await stale.get("/get_prompt", headers={"cookie": f"{COOKIE}={old}"})
        assert response.json()["messages"] == []
        assert COOKIE not in response.cookies  # a read creates no session in the old one's place


async def test_get_prompt_shows_the_rendered_prompt(gw: Gateway) -> None:
    async with gw.client() as client:
        assert (await client.get("/get_prompt")).json() == {"prompt": "", "system": None, "messages": []}
        await chat_turn(client, "hi")
        body = (await client.get("/get_prompt")).json()
        assert body["prompt"] == f"<user>hi</user><assistant>{gw.engine.answer}</assistant>"


@pytest.mark.parametrize(
    ("update", "field_name"),
    [
        pytest.param({"temperature": 2.5}, "temperature", id="temperature-high"),
        pytest.param({"temperature": -0.1}, "temperature", id="temperature-negative"),
        pytest.param({"top_p": 0}, "top_p", id="top-p-zero"),
        pytest.param({"top_k": 1001}, "top_k", id="top-k-high"),
        pytest.param({"max_new_tokens": 0}, "max_new_tokens", id="max-new-tokens-zero"),
        pytest.param({"max_new_tokens": 10_000}, "max_new_tokens", id="max-new-tokens-over-server-max"),
        pytest.param({"repetition_penalty": 3}, "repetition_penalty", id="repetition-penalty-high"),
        pytest.param({"temperature": "hot"}, "temperature", id="wrong-type"),
        pytest.param({"seed": 1}, "seed", id="unknown-name"),
    ],
)
async def test_set_generation_params_refuses_out_of_range_values(
    gw: Gateway, update: dict[str, Any], field_name: str
) -> None:
    async with gw.client() as client:
        before = (await client.get("/get_generation_params")).json()
        response = await client.post("/set_generation_params", json=update)
        assert field_name in assert_json_error(response, 422, "invalid_body")
        assert (await client.get("/get_generation_params")).json() == before


async def test_generation_params_are_per_session_and_reach_the_engine(gw: Gateway) -> None:
    async with gw.client() as tuned, gw.client() as plain:
        defaults = (await plain.get("/get_generation_params")).json()
        assert defaults["params"] == {
            "temperature": 0.7,
            "top_p": 0.95,
            "top_k": 0,
            "max_new_tokens": 256,
            "repetition_penalty": 1.0,
        }
        assert defaults["limits"]["max_new_tokens"] == [1, 256]
        update = {"temperature": 0.1, "top_p": 0.5, "top_k": 7, "max_new_tokens": 6, "repetition_penalty": 1.2}
        response = await tuned.post("/set_generation_params", json=update)
        assert response.status_code == 200 and response.json()["params"] == update
        assert (await tuned.get("/get_generation_params")).json()["params"] == update
        _, events = await chat_turn(tuned)
        options = gw.engine.options[-1]
        assert (options.temperature, options.top_p, options.top_k, options.max_tokens) == (0.1, 0.5, 7, 6)
        assert options.repetition_penalty == 1.2
        assert answer_of(events) == gw.engine.answer[:6] and events[-1].data["finish_reason"] == "length"
        await chat_turn(plain)
        assert gw.engine.options[-1].temperature == 0.7 and gw.engine.options[-1].max_tokens == 256


@pytest.mark.parametrize(
    ("prompt_format", "stop"),
    [
        pytest.param("chatml", ("<|im_end|>", "<|im_start|>"), id="chatml"),
        pytest.param("llama2", ("</s>", "[INST]"), id="llama2"),
        pytest.param("vicuna", ("</s>", "USER:"), id="vicuna"),
        pytest.param("template", (), id="template"),
    ],
)
async def test_the_prompt_format_and_its_stop_strings_reach_the_engine(
    prompt_format: FormatName, stop: tuple[str, ...]
) -> None:
    async with running_gateway(prompt_format=prompt_format, system_prompt="Be brief.") as gw, gw.client() as client:
        await chat_turn(client, "hi")
        expected = ChatPrompt(system="Be brief.", format=prompt_format).bind(gw.engine.tokenizer)
        expected.add_user("hi")
        assert gw.engine.prompt_text() == expected.create_prompt()
        assert gw.engine.options[-1].stop == stop
