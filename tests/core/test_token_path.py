"""The engine's sink: tokens written in the engine's task, whole and in order, never past a failure."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import gateway.http.direct_send as direct_send_module
from gateway import Settings, create_app
from gateway.core.completion import CompletionState
from gateway.core.engine import ACCEPTED, EngineOutput, SamplingOptions
from gateway.core.stream import TokenPath
from gateway.core.vllm_engine import VLLMEngine
from gateway.core.vllm_outputs import SinkFailed
from tests.fakes import FakeEngine
from tests.live import serve
from tests.reliability.conftest import make_settings, running_gateway
from tests.sse_client import parse_sse

OPENAI = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def openai_text(body: str) -> str:
    events = [line.removeprefix("data: ") for line in body.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    return "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1] if "choices" in e)


def chat_stream_text(body: str) -> str:
    events = parse_sse(body)
    assert events[-1][0] == "done"
    return "".join(str(data["text"]) for kind, data in events if kind == "delta" and isinstance(data, dict))


@pytest.mark.parametrize(
    ("path", "body", "text_of"),
    [
        pytest.param("/chat_stream", {"user_input": "hi"}, chat_stream_text, id="chat_stream"),
        pytest.param("/v1/chat/completions", OPENAI, openai_text, id="openai"),
    ],
)
async def test_under_uvicorn_the_engine_writes_the_tokens_itself_and_the_client_gets_them_whole_in_order(
    fake_engine: FakeEngine, path: str, body: dict[str, object], text_of: Callable[[str], str]
) -> None:
    app = create_app(Settings(secure_cookies=False), engine=fake_engine)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post(path, json=body)
    assert response.status_code == 200
    assert text_of(response.text) == fake_engine.answer
    # Every token but the one that opens the response and the last went through the sink.
    assert fake_engine.taken == len(fake_engine.answer) - 2


def watch_take(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> list[bool]:
    """What `TokenPath.take` answers, call by call; its `fail_at`th call raises instead."""
    take = TokenPath.take
    answers: list[bool] = []

    def watched(self: TokenPath, out: EngineOutput) -> bool:
        if len(answers) + 1 == fail_at:
            raise RuntimeError("a bug in the token path")
        answers.append(take(self, out))
        return answers[-1]

    monkeypatch.setattr(TokenPath, "take", watched)
    return answers


class Recorder:
    """The server's `send` and its direct writer both record what they are given, in one list.

    (What the writer takes goes no further: the body to read is the list's, not the client's.)

    `refuse` names the writes (counted from 1) that say the connection cannot take the chunk now.
    """

    def __init__(self, app: ASGIApp, refuse: set[int]) -> None:
        self.app, self.refuse = app, refuse
        self.calls: list[tuple[str, bytes]] = []
        self.writes = 0

    def writer(self, send: Send) -> Callable[[bytes], bool]:
        def write(body: bytes) -> bool:
            self.writes += 1
            if self.writes in self.refuse:
                return False
            self.calls.append(("write", body))
            return True

        return write

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recording(message: Message) -> None:
            if message["type"] == "http.response.body":
                self.calls.append(("send", message.get("body", b"")))
            await send(message)

        await self.app(scope, receive, recording)


async def test_a_token_the_connection_cannot_take_at_once_goes_out_before_the_next_one(
    fake_engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sink's 5th write finds the connection paused (and so does the pump's first retry): that
    # token waits for the pump, which sends it through the server's `send` before anything after it.
    app = create_app(Settings(secure_cookies=False), engine=fake_engine)
    recorder = Recorder(app, refuse={5, 6})
    monkeypatch.setattr(direct_send_module, "chunk_writer", recorder.writer)
    transport = httpx.ASGITransport(app=recorder)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        response = await client.post("/v1/chat/completions", json=OPENAI)
    assert response.status_code == 200
    # What the two ways carried, in the order they carried it, is the whole answer in order.
    assert openai_text(b"".join(body for _, body in recorder.calls).decode()) == fake_engine.answer
    ways = [way for way, body in recorder.calls if body]
    assert ways[:4] == ["write"] * 4 and ways[4] == "send" and ways[5] == "write"  # then the sink again
    # The sink declined the token after the held one (the pump had to send that first), then took the rest.
    assert fake_engine.taken == len(fake_engine.answer) - 3


async def test_a_sink_that_fails_ends_the_stream_with_an_error_event_and_frees_the_slot(
    fake_engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch_take(monkeypatch, fail_at=4)
    async with running_gateway(fake_engine, make_settings()) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.post("/chat_stream", json={"user_input": "hi"}, headers={"x-test-id": "sink"})
        events = parse_sse(response.text)
        assert [kind for kind, _ in events][-1] == "error"
        assert "a bug in the token path" not in response.text and "Traceback" not in response.text
        assert await gw.callbacks.wait_for("sink") == CompletionState.UNKNOWN_ERROR_OCCURRED
        await gw.wait_idle(fake_engine.num_unfinished)
        assert gw.chat.admission.load().running == 0


def taking_all() -> tuple[list[EngineOutput], Callable[[EngineOutput], bool]]:
    """A sink that takes every output it is offered, and the list it puts them in."""
    taken: list[EngineOutput] = []

    def sink(out: EngineOutput) -> bool:
        taken.append(out)
        return True

    return taken, sink


@pytest.mark.engine
async def test_the_real_engine_offers_its_tokens_to_a_sink_and_they_are_the_tokens_it_streams(
    real_engine: VLLMEngine,
) -> None:
    options = SamplingOptions(max_tokens=12, temperature=0.0, ignore_eos=True)
    prompt = real_engine.tokenizer.encode("the same request twice, long enough for the prefix cache " * 4)

    streamed = [out async for out in real_engine.generate("plain", prompt, options) if out is not ACCEPTED]

    taken, sink = taking_all()
    offered = [out async for out in real_engine.generate("sunk", prompt, options, sink)]
    assert offered[0] is ACCEPTED
    yielded = offered[1:]
    # The sink took every output but the last, which the stream yields with its finish reason.
    assert taken and [out.finish_reason for out in taken] == [None] * len(taken)
    assert len(yielded) == 1 and yielded[0].finish_reason == "length"
    ids = [i for out in streamed for i in out.token_ids]
    assert [i for out in taken + yielded for i in out.token_ids] == ids
    assert "".join(out.text for out in taken + yielded) == "".join(out.text for out in streamed)
    # What the sink takes carries the request's figures as vLLM's own outputs do.
    assert yielded[0].num_cached_tokens > 0  # the first request's prompt, cached
    assert {(out.num_prompt_tokens, out.num_cached_tokens) for out in taken + yielded} == {
        (len(prompt), yielded[0].num_cached_tokens)
    }
    assert real_engine.num_unfinished() == 0


@pytest.mark.engine
async def test_outputs_the_sink_declines_go_vllms_way_and_the_stream_stays_whole_in_order(
    real_engine: VLLMEngine,
) -> None:
    options = SamplingOptions(max_tokens=16, temperature=0.0, ignore_eos=True)
    prompt = real_engine.tokenizer.encode("a consumer that is sometimes busy")
    streamed = [out async for out in real_engine.generate("plain", prompt, options) if out is not ACCEPTED]
    arrived: list[EngineOutput] = []  # in the order the consumer saw them, taken or yielded
    taken = offers = 0

    def sink(out: EngineOutput) -> bool:  # busy on every other offer
        nonlocal offers, taken
        offers += 1
        if offers % 2:
            return False
        arrived.append(out)
        taken += 1
        return True

    async for out in real_engine.generate("busy", prompt, options, sink):
        if out is not ACCEPTED:
            arrived.append(out)
    assert 0 < taken < len(arrived) - 1  # both ways were taken
    assert [i for out in arrived for i in out.token_ids] == [i for out in streamed for i in out.token_ids]
    assert "".join(out.text for out in arrived) == "".join(out.text for out in streamed)
    assert {out.num_prompt_tokens for out in arrived} == {len(prompt)}
    assert [out.finish_reason for out in arrived][-1] == "length"
    assert real_engine.num_unfinished() == 0


@pytest.mark.engine
async def test_a_sink_gets_the_logprobs_a_request_asks_for(real_engine: VLLMEngine) -> None:
    from vllm.sampling_params import SamplingParams

    from gateway.core.vllm_engine import VLLMParams

    native = VLLMParams(SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=2))
    options = SamplingOptions(max_tokens=8, temperature=0.0, ignore_eos=True, native=native)
    taken, sink = taking_all()
    prompt = real_engine.tokenizer.encode("with logprobs")
    yielded = [out async for out in real_engine.generate("logprobs", prompt, options, sink) if out is not ACCEPTED]
    assert taken and all(out.logprobs and len(out.logprobs) == out.num_new_tokens for out in taken + yielded)


@pytest.mark.engine
async def test_vllms_output_handler_computes_no_iteration_stats_and_the_scheduler_still_reports(
    real_engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vllm.v1.engine.async_llm as async_llm

    built = 0
    real_stats = async_llm.IterationStats

    def counted() -> object:
        nonlocal built
        built += 1
        return real_stats()

    monkeypatch.setattr(async_llm, "IterationStats", counted)
    options = SamplingOptions(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompt = real_engine.tokenizer.encode("no iteration stats")
    outputs = [out async for out in real_engine.generate("stats", prompt, options) if out is not ACCEPTED]
    assert sum(out.num_new_tokens for out in outputs) == 8
    assert built == 0
    stats = real_engine.stats()
    assert stats is not None and stats.prefix_cache_queries > 0


@pytest.mark.engine
async def test_a_sink_that_raises_inside_vllms_output_handler_fails_its_stream_and_the_engine_serves_on(
    real_engine: VLLMEngine,
) -> None:
    options = SamplingOptions(max_tokens=64, temperature=0.0, ignore_eos=True)
    prompt = real_engine.tokenizer.encode("a failing consumer")
    calls = 0

    def sink(out: EngineOutput) -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ValueError("a bug in the consumer")
        return True

    outputs = real_engine.generate("failing", prompt, options, sink)
    # Not a refusal (a 400) although no output was yielded: the stream raises what the sink raised.
    with pytest.raises(SinkFailed) as raised:
        async for _ in outputs:
            pass
    assert isinstance(raised.value.__cause__, ValueError)
    assert real_engine.is_healthy() and real_engine.num_unfinished() == 0
    served = [out async for out in real_engine.generate("after", prompt, options) if out is not ACCEPTED]
    assert sum(out.num_new_tokens for out in served) == 64


@pytest.mark.engine
async def test_a_stream_through_the_real_engines_sink_reaches_the_client_whole(
    real_engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = watch_take(monkeypatch)
    settings = make_settings(max_new_tokens=24, ignore_eos=True)
    async with (
        running_gateway(real_engine, settings, engine_started=True) as gw,
        httpx.AsyncClient(base_url=gw.url) as client,
    ):
        response = await client.post("/chat_stream", json={"user_input": "hi"}, headers={"x-test-id": "real"})
        assert parse_sse(response.text)[-1][0] == "done"
        assert await gw.callbacks.wait_for("real") == CompletionState.SUCCESS
        messages = (await client.get("/get_prompt")).json()["messages"]
    assert any(answers)  # vLLM's output handler wrote tokens of this stream itself
    assert messages[-1]["content"] == chat_stream_text(response.text)
