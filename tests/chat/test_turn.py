"""One `/chat_stream` turn against what happens around it (gateway/chat/turn.py): a reload, a second tab,
settings saved meanwhile, a chat template that refuses, an engine not started, a wrong Content-Type,
a long history rendered while other streams run. Each test names the bug of issue 13 it pins.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import jinja2
import pytest
from itsdangerous import TimestampSigner
from transformers import AutoTokenizer

from gateway.chat.chat_stream import INLINE_RENDER_CHARS
from gateway.core.vllm_engine import _HFTokenizer
from prompts import ChatPrompt
from tests.chat.test_chat_stream import COOKIE, SECRET, assert_json_error, chat_turn, messages_of, running_gateway
from tests.fakes import CharTokenizer, FakeEngine
from tests.gateway_app import metric, scrape
from tests.sse_client import iter_events


def held_after_the_first_token(answer: str = "the first answer") -> FakeEngine:
    """An engine whose generations send one token (the stream and its cookie are out), then wait for `gate`."""
    engine = FakeEngine(answer=answer)
    engine.gate, engine.gate_after = asyncio.Event(), 1
    return engine


async def test_a_reload_and_a_second_tab_during_the_first_answer_find_the_session_being_answered() -> None:
    # Regression (issue 13): the store learnt of a new session only when its first answer ended.
    # A reload (GET /get_prompt) during that answer got an empty conversation and a new cookie,
    # which the browser kept: the conversation was lost. A second tab got a 200 in a fresh session.
    engine = held_after_the_first_token()
    async with running_gateway(engine) as gw, gw.client() as browser:
        async with browser.stream("POST", "/chat_stream", json={"user_input": "my first question"}) as first:
            events = iter_events(first)
            assert (await anext(events)).event == "delta"  # streaming: the browser holds its cookie
            cookie = browser.cookies[COOKIE]

            reload = await browser.get("/get_prompt")
            assert reload.json()["messages"] == [{"role": "user", "content": "my first question"}]
            assert "set-cookie" not in reload.headers
            second_tab = await browser.post("/chat_stream", json={"user_input": "from another tab"})
            assert_json_error(second_tab, 409, "session_busy")

            engine.gate.set()
            assert [e.event async for e in events][-1] == "done"
        assert browser.cookies[COOKIE] == cookie
        assert [m["content"] for m in await messages_of(browser)] == ["my first question", "the first answer"]


async def test_settings_saved_during_an_answer_survive_its_end() -> None:
    # Regression (issue 13): the end of a turn saved the conversation whole, from the copy taken when
    # the turn began, so it wrote back the old parameters over a Settings change made meanwhile.
    engine = FakeEngine(answer="an answer")
    async with running_gateway(engine) as gw, gw.client() as client:
        await chat_turn(client, "first")
        engine.gate, engine.gate_after = asyncio.Event(), 1
        async with client.stream("POST", "/chat_stream", json={"user_input": "second"}) as turn:
            events = iter_events(turn)
            assert (await anext(events)).event == "delta"
            saved = await client.post("/set_generation_params", json={"temperature": 0.2, "top_k": 5})
            assert saved.status_code == 200
            engine.gate.set()
            assert [e.event async for e in events][-1] == "done"
        params = (await client.get("/get_generation_params")).json()["params"]
        assert (params["temperature"], params["top_k"]) == (0.2, 5)
        assert [m["content"] for m in await messages_of(client) if m["role"] == "user"] == ["first", "second"]
        await chat_turn(client, "third")
    assert (engine.options[-1].temperature, engine.options[-1].top_k) == (0.2, 5)


async def test_a_question_left_unanswered_by_a_turn_that_never_ended_is_replaced_by_the_next() -> None:
    # A turn is stored from its start: a replica that dies mid-answer leaves its question behind.
    async with running_gateway() as gw, gw.client() as client:
        await chat_turn(client, "answered")
        session_id = TimestampSigner(SECRET, salt="chatstream-gateway.session").unsign(client.cookies[COOKIE]).decode()
        left = ChatPrompt()
        left.messages = [*(await messages_of(client)), {"role": "user", "content": "never answered"}]
        await gw.store.save(session_id, {"chat_prompt": left}, ())  # as the dead replica left it
        response, events = await chat_turn(client, "asked again")
        assert response.status_code == 200 and events[-1].data["state"] == "success"
        users = [m["content"] for m in await messages_of(client) if m["role"] == "user"]
    assert users == ["answered", "asked again"]
    assert "never answered" not in gw.engine.prompt_text()


# --- 5. refusals that were 500s -----------------------------------------------------------------

NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


class TemplateEngine(FakeEngine):
    """The fake engine with a real Hugging Face tokenizer (the tiny model's) and its own chat template."""

    def __init__(self, model_dir: Path, template: str) -> None:
        super().__init__()
        hf = AutoTokenizer.from_pretrained(model_dir)
        hf.chat_template = template
        self._hf = _HFTokenizer(hf)

    @property
    def tokenizer(self) -> _HFTokenizer:  # type: ignore[override]
        return self._hf


async def test_a_chat_template_that_refuses_a_system_prompt_is_a_400_not_a_500(tiny_model_dir: Path) -> None:
    # Regression (issue 13): every /chat_stream turn answered 500 (the OpenAI route said 400).
    engine = TemplateEngine(tiny_model_dir, NO_SYSTEM_TEMPLATE)
    with pytest.raises(jinja2.TemplateError):  # the template really refuses
        engine.tokenizer.render_chat([{"role": "system", "content": "x"}], add_generation_prompt=True)
    async with running_gateway(engine, system_prompt="Be brief.") as gw, gw.client() as client:
        response, _ = await chat_turn(client, "hello")
        message = assert_json_error(response, 400, "invalid_request")
        assert "template" in message and "System role not supported" not in message
        assert_json_error(await client.get("/get_prompt"), 400, "invalid_request")
        assert await gw.load() == {"in_flight": 0, "queued": 0, "capacity": 32, "queue_size": 128}
    async with running_gateway(TemplateEngine(tiny_model_dir, NO_SYSTEM_TEMPLATE)) as gw, gw.client() as client:
        response, events = await chat_turn(client, "hello")  # without a system prompt the template is fine
        assert response.status_code == 200 and events[-1].data["state"] == "success"


class NotStartedEngine(FakeEngine):
    """An engine whose tokenizer can be missing (as VLLMEngine's before start() has finished)."""

    ready = True

    @property
    def tokenizer(self) -> CharTokenizer:
        if not self.ready:
            raise RuntimeError("the engine has not started")
        return super().tokenizer


async def test_a_failure_after_the_session_lock_is_taken_releases_it() -> None:
    # Regression (issue 13): the lock was taken, then the tokenizer bound outside any `try`: when that
    # raised (a 500), the session's lock was never released and the session answered 409 for good.
    engine = NotStartedEngine()
    async with running_gateway(engine) as gw, gw.client() as client:
        await chat_turn(client, "a session")
        engine.ready = False
        refused, _ = await chat_turn(client, "too early")
        assert_json_error(refused, 503, "engine_unavailable")
        assert gw.store.locks_held == 0
        engine.ready = True
        assert (await client.post("/clear_context")).status_code == 200
        response, events = await chat_turn(client, "and now")
        assert response.status_code == 200 and events[-1].data["state"] == "success"


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        pytest.param("application/json", 200, id="json"),
        pytest.param("application/json; charset=utf-8", 200, id="json-charset"),
        pytest.param("application/vnd.chat+json", 200, id="plus-json"),
        pytest.param(None, 200, id="none-declared"),
        pytest.param("text/plain", 415, id="text-plain"),
        pytest.param("application/x-www-form-urlencoded", 415, id="form"),
        pytest.param("multipart/form-data; boundary=x", 415, id="multipart"),
    ],
)
async def test_json_routes_refuse_a_body_declared_as_something_else(content_type: str | None, status: int) -> None:
    # Issue 13: the JSON routes read any Content-Type as JSON, so an HTML form on another site could post one.
    headers = {} if content_type is None else {"content-type": content_type}
    async with running_gateway() as gw, gw.client() as client:
        turn = await client.post("/chat_stream", content=b'{"user_input": "hi"}', headers=headers)
        params = await client.post("/set_generation_params", content=b'{"temperature": 0.3}', headers=headers)
        for response in (turn, params):
            if status == 415:
                assert "application/json" in assert_json_error(response, 415, "unsupported_media_type")
            else:
                assert response.status_code == 200
    assert len(gw.engine.prompts) == (1 if status == 200 else 0)


# --- 7. rendering off the event loop ------------------------------------------------------------


class SlowTokenizer(CharTokenizer):
    """Encoding takes `delay` seconds of blocking work (a big history through a real tokenizer)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.slow = False
        self.encoded_chars = 0
        self.threads: list[str] = []  # where each encoding ran

    def encode(self, text: str) -> list[int]:
        self.encoded_chars += len(text)
        self.threads.append(threading.current_thread().name)
        if self.slow:
            time.sleep(self.delay)  # blocking on purpose: what a long render does to its thread
        return super().encode(text)

    def render_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        return super().render_chat(messages, add_generation_prompt)


class SlowTokenizerEngine(FakeEngine):
    def __init__(self, delay: float) -> None:
        super().__init__(answer="ok")
        self._slow = SlowTokenizer(delay)

    @property
    def tokenizer(self) -> SlowTokenizer:  # type: ignore[override]
        return self._slow


async def test_rendering_leaves_the_event_loop_free_and_ttft_counts_it() -> None:
    # Regression (issue 13): the history was templated and tokenized on the event loop (every other
    # stream stalled meanwhile), and time to first token was measured from after that rendering.
    engine = SlowTokenizerEngine(delay=0.5)
    gaps: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async with running_gateway(engine) as gw, gw.client() as client:
        engine.tokenizer.slow = True
        stop = asyncio.Event()
        ticks = asyncio.create_task(ticker(stop))
        response, events = await chat_turn(client, "render me slowly, " * (INLINE_RENDER_CHARS // 10))
        stop.set()
        await ticks
        assert response.status_code == 200 and events[-1].data["state"] == "success"
        text = await scrape(client)
    assert max(gaps) < 0.25, f"the event loop stalled for {max(gaps):.3f} s"
    # One render took at least `delay` (the tokenizer blocked that long): it counts in TTFT.
    assert metric(text, "chatstream:time_to_first_token_seconds_sum") >= 0.5


async def test_a_short_conversation_renders_on_the_event_loop_and_a_long_one_on_the_render_thread() -> None:
    # A short render costs less than the round trip to the render thread (gateway.chat.chat_stream).
    engine = SlowTokenizerEngine(delay=0.0)
    async with running_gateway(engine) as gw, gw.client() as client:
        loop_thread = threading.current_thread().name  # the test runs the server on its own loop
        response, _ = await chat_turn(client, "short")
        assert response.status_code == 200
        assert set(engine.tokenizer.threads) == {loop_thread}
        engine.tokenizer.threads.clear()
        response, _ = await chat_turn(client, "x" * INLINE_RENDER_CHARS)  # with the first exchange: over the bound
        assert response.status_code == 200
        assert engine.tokenizer.threads and loop_thread not in engine.tokenizer.threads


async def test_a_long_history_is_not_encoded_again_on_every_turn() -> None:
    # Issue 13: each turn encoded the whole history (several times when it had to be trimmed).
    engine = SlowTokenizerEngine(delay=0)
    engine.max_model_len = 600
    async with running_gateway(engine, max_new_tokens=50) as gw, gw.client() as client:
        for i in range(60):
            await chat_turn(client, f"question number {i:03d} " + "x" * 40)
        history = sum(len(m["content"]) for m in await messages_of(client))
        before = engine.tokenizer.encoded_chars
        await chat_turn(client, "one more")
        this_turn = engine.tokenizer.encoded_chars - before
    # The window sent is at most 550 tokens (characters here); the history is about five times that.
    assert history > 4 * 550
    assert this_turn < 4 * 550, f"{this_turn} characters encoded for a turn whose window is at most 550"


async def test_get_prompt_shows_the_window_the_model_would_see() -> None:
    engine = FakeEngine(answer="ok", max_model_len=200)
    async with running_gateway(engine, max_new_tokens=20, system_prompt="SYS") as gw, gw.client() as client:
        await chat_turn(client, "a" * 60)
        await chat_turn(client, "b" * 60)
        shown = (await client.get("/get_prompt")).json()
    assert [m["content"] for m in shown["messages"]] == ["a" * 60, "ok", "b" * 60, "ok"]
    assert shown["prompt"] == "<system>SYS</system><user>" + "b" * 60 + "</user><assistant>ok</assistant>"
