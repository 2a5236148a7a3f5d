"""Streamed background responses: the POST streams its run's events, which `GET ?stream=true` resumes.

As vLLM's own server does (and OpenAI's API: "resume a background stream with
starting_after"): the run goes on without its client, its events stay on the
replica that runs it, and every event is checked against OpenAI's schemas.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway import CompletionState
from gateway.core.errors import BadChatRequest
from tests.fakes import FakeEngine
from tests.gateway_app import Gateway, running_gateway
from tests.openai.test_responses import ANSWER, check_one_message_stream, error_of, text_of
from tests.openai.test_responses_background import alice_on, one_slot, poll, replicas, running, start, until  # noqa: F401
from tests.openai_spec import validate, validate_responses_sse
from tests.sse_client import iter_events

BODY = {"model": "fake-model", "input": "hi", "background": True, "stream": True}


async def resumed(client: httpx.AsyncClient, response_id: str, after: int | None = None) -> list[dict[str, Any]]:
    """`GET /v1/responses/{id}?stream=true[&starting_after=N]`, read to its end."""
    params = {"stream": "true"} if after is None else {"stream": "true", "starting_after": str(after)}
    r = await client.get(f"/v1/responses/{response_id}", params=params)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    return validate_responses_sse(r.text)


async def test_a_streamed_background_response_streams_every_event_in_order_and_is_stored_completed(
    alice: httpx.AsyncClient, keyed_gateway: Gateway
) -> None:
    r = await alice.post("/v1/responses", json=BODY)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    events = validate_responses_sse(r.text)
    check_one_message_stream(events)
    # OpenAI's lifecycle: created while it waits for a slot (queued), then in progress, then its ending.
    assert events[0]["response"]["status"] == "queued" and events[0]["response"]["background"] is True
    assert events[1]["response"]["status"] == "in_progress"
    completed = events[-1]["response"]
    stored = (await alice.get(f"/v1/responses/{completed['id']}")).json()
    assert stored == completed and stored["status"] == "completed" and text_of(stored) == ANSWER
    assert await keyed_gateway.wait_states(1) == [CompletionState.SUCCESS]
    assert await running(alice) == 0
    # The whole stream again, from the first event: the same events.
    assert await resumed(alice, completed["id"]) == events


async def test_a_stream_waiting_for_a_slot_reads_queued_until_the_run_has_one(
    one_slot: tuple[Gateway, httpx.AsyncClient],  # noqa: F811 (the fixture, imported)
    fake_engine: FakeEngine,
) -> None:
    gw, alice = one_slot
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 0
    first = await start(alice, input="first")  # holds the one slot
    await until(lambda: len(fake_engine.running) == 1)
    async with (
        asyncio.timeout(30),
        alice.stream("POST", "/v1/responses", json=BODY) as r,
        aclosing(iter_events(r)) as events,
    ):
        created = await anext(events)
        assert created.event == "response.created" and created.data["response"]["status"] == "queued"
        await until(lambda: gw.app.state.core.admission.load().waiting == 1)
        response_id = created.data["response"]["id"]
        assert (await alice.get(f"/v1/responses/{response_id}")).json()["status"] == "queued"
        fake_engine.gate.set()  # the first ends; the second gets the slot
        rest = [event.data async for event in events]
    check_one_message_stream([created.data, *rest])
    assert rest[0]["type"] == "response.in_progress"
    assert (await poll(alice, first["id"], ("completed",)))["status"] == "completed"


async def test_a_client_that_leaves_mid_stream_does_not_stop_the_run(
    alice: httpx.AsyncClient, fake_engine: FakeEngine, keyed_gateway: Gateway
) -> None:
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 3
    async with asyncio.timeout(30), alice.stream("POST", "/v1/responses", json=BODY) as r:
        assert r.status_code == 200
        async with aclosing(iter_events(r)) as events:
            response_id = (await anext(events)).data["response"]["id"]
            async for event in events:
                if event.event == "response.output_text.delta":
                    break
    # Gone: once the gateway has handled the POST to its end, the run still holds its slot.
    await keyed_gateway.handled.wait_handled()
    assert await running(alice) == 1 and fake_engine.running and not fake_engine.aborted
    assert keyed_gateway.states == []
    fake_engine.gate.set()
    assert await keyed_gateway.wait_states(1) == [CompletionState.SUCCESS]
    stored = await poll(alice, response_id, ("completed",))
    assert text_of(stored) == ANSWER
    assert (await resumed(alice, response_id))[-1]["response"] == stored


async def test_get_stream_starting_after_n_resumes_at_n_plus_1_and_follows_the_run_to_its_end(
    alice: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 3
    first: list[dict[str, Any]] = []
    async with (
        asyncio.timeout(30),
        alice.stream("POST", "/v1/responses", json=BODY) as r,
        aclosing(iter_events(r)) as events,
    ):
        async for event in events:
            first.append(event.data)
            if event.event == "response.output_text.delta":
                break
    response_id, last = first[0]["response"]["id"], first[-1]["sequence_number"]
    # While the run is held: the events after `last`, then the live ones once it goes on.
    params = {"stream": "true", "starting_after": str(last)}
    async with asyncio.timeout(30), alice.stream("GET", f"/v1/responses/{response_id}", params=params) as r:
        assert r.status_code == 200
        chunks = r.aiter_text()
        body = await anext(chunks)  # what was logged after `last`, sent at once
        fake_engine.gate.set()
        body += "".join([chunk async for chunk in chunks])
    rest = validate_responses_sse(body)
    assert rest[0]["sequence_number"] == last + 1 and rest[-1]["type"] == "response.completed"
    whole = await resumed(alice, response_id)
    assert first + rest == whole
    assert [e["sequence_number"] for e in whole] == list(range(len(whole)))
    for n in (0, len(whole) // 2, len(whole) - 2):
        assert await resumed(alice, response_id, n) == whole[n + 1 :]


async def test_resuming_after_the_last_event_is_an_empty_stream(alice: httpx.AsyncClient) -> None:
    events = validate_responses_sse((await alice.post("/v1/responses", json=BODY)).text)
    r = await alice.get(f"/v1/responses/{events[0]['response']['id']}?stream=true&starting_after={len(events) - 1}")
    assert r.status_code == 200 and r.text == ""


async def test_cancel_mid_stream_ends_the_stream_with_the_cancelled_response_and_stores_it(
    alice: httpx.AsyncClient, fake_engine: FakeEngine, keyed_gateway: Gateway
) -> None:
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 3
    async with asyncio.timeout(30), alice.stream("POST", "/v1/responses", json=BODY) as r:
        body = ""
        chunks = r.aiter_text()
        while "response.output_text.delta" not in body:
            body += await anext(chunks)
        response_id = validate_responses_sse(body)[0]["response"]["id"]
        cancel = await alice.post(f"/v1/responses/{response_id}/cancel")
        assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
        body += "".join([chunk async for chunk in chunks])
    events = validate_responses_sse(body)
    # The spec has no event for a cancel: the stream ends with `response.failed` carrying the
    # response as stored, `cancelled`.
    assert events[-1]["type"] == "response.failed" and events[-1]["response"]["status"] == "cancelled"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    stored = (await alice.get(f"/v1/responses/{response_id}")).json()
    assert stored == events[-1]["response"]
    assert await keyed_gateway.wait_states(1) == [CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING]
    assert fake_engine.aborted and await running(alice) == 0
    assert (await resumed(alice, response_id))[-1] == events[-1]


@pytest.mark.parametrize("fault", ["refused", "mid-stream"])
async def test_a_run_that_fails_ends_its_stream_with_response_failed_as_stored(
    alice: httpx.AsyncClient, fake_engine: FakeEngine, keyed_gateway: Gateway, fault: str
) -> None:
    if fault == "refused":  # vLLM's checks of the request, before the engine accepts it
        fake_engine.refusal = BadChatRequest("Grammar error: unclosed group", param="text.format")
    else:
        fake_engine.fail_after_tokens = 3
    r = await alice.post("/v1/responses", json=BODY)
    assert r.status_code == 200, r.text  # the stream had opened (queued) before the run began
    events = validate_responses_sse(r.text)
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.failed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] in ("invalid_prompt", "server_error")
    assert (await alice.get(f"/v1/responses/{failed['id']}")).json() == failed
    assert await keyed_gateway.wait_states(1) == [CompletionState.UNKNOWN_ERROR_OCCURRED]
    assert await running(alice) == 0


async def test_get_stream_without_the_events_here_is_a_400_in_words_after_the_usual_404s(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, keyed_gateway: Gateway
) -> None:
    streamed = validate_responses_sse((await alice.post("/v1/responses", json=BODY)).text)[0]["response"]["id"]
    error_of(await bob.get(f"/v1/responses/{streamed}?stream=true"), 404)  # not bob's
    error_of(await alice.get("/v1/responses/resp_unknown?stream=true"), 404)
    error_of(await alice.get("/v1/responses/resp_unknown?stream=true&starting_after=x"), 404)
    # Not streamed in the background: nothing was logged.
    plain = (await alice.post("/v1/responses", json={"input": "hi"})).json()["id"]
    polled = (await start(alice, input="hi"))["id"]
    await poll(alice, polled, ("completed",))
    for response_id in (plain, polled):
        error = error_of(await alice.get(f"/v1/responses/{response_id}?stream=true"), 400)
        assert error["param"] == "stream" and "without stream returns the response" in error["message"], error
        assert (await alice.get(f"/v1/responses/{response_id}?stream=false")).json()["id"] == response_id
    # Bad parameters, in words.
    error = error_of(await alice.get(f"/v1/responses/{streamed}?stream=true&starting_after=x"), 400)
    assert error["param"] == "starting_after"
    assert error_of(await alice.get(f"/v1/responses/{streamed}?stream=maybe"), 400)["param"] == "stream"
    # Without stream, unchanged: the response.
    assert (await alice.get(f"/v1/responses/{streamed}?starting_after=3")).json()["status"] == "completed"
    # Once `log_keep` seconds have passed since its end, its events are dropped.
    runs = keyed_gateway.app.state.responses.background
    assert await resumed(alice, streamed)
    now = runs.clock()
    runs.clock = lambda: now + runs.log_keep + 1
    error = error_of(await alice.get(f"/v1/responses/{streamed}?stream=true"), 400)
    assert "without stream returns the response" in error["message"] and runs._logs == {}


async def test_on_another_replica_get_stream_is_the_400_and_get_the_response(
    alice_on: list[httpx.AsyncClient],  # noqa: F811 (the fixture, imported)
) -> None:
    on_a, on_b = alice_on
    events = validate_responses_sse((await on_a.post("/v1/responses", json=BODY)).text)
    response_id = events[0]["response"]["id"]
    error = error_of(await on_b.get(f"/v1/responses/{response_id}?stream=true"), 400)
    assert "kept, by the server that runs it" in error["message"]
    assert (await on_b.get(f"/v1/responses/{response_id}")).json() == events[-1]["response"]


async def test_keep_alive_pings_flow_while_the_run_sends_nothing(fake_engine: FakeEngine) -> None:
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 0
    async with (
        running_gateway(fake_engine, ping_interval=0.05) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
        asyncio.timeout(30),
        client.stream("POST", "/v1/responses", json=BODY) as r,
    ):
        body = ""
        chunks = r.aiter_text()
        while ": ping" not in body:
            body += await anext(chunks)
        fake_engine.gate.set()
        body += "".join([chunk async for chunk in chunks])
    check_one_message_stream(validate_responses_sse(body))


@pytest.fixture
async def sdk(keyed_gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=keyed_gateway.url + "/v1", api_key="key-alice", max_retries=0) as api:
        yield api


async def test_the_official_sdk_streams_a_background_response_and_resumes_it(
    sdk: openai.AsyncOpenAI, fake_engine: FakeEngine
) -> None:
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 3
    first = []
    async with asyncio.timeout(30):
        stream = await sdk.responses.create(model="fake-model", input="hi", background=True, stream=True)
        async for event in stream:
            first.append(event)
            if event.type == "response.output_text.delta":
                break
        await stream.close()
        assert first[0].type == "response.created" and first[0].response.status == "queued"
        fake_engine.gate.set()
        resumed_events = await sdk.responses.retrieve(
            first[0].response.id, stream=True, starting_after=first[-1].sequence_number
        )
        rest = [event async for event in resumed_events]
    assert rest[0].sequence_number == first[-1].sequence_number + 1
    assert rest[-1].type == "response.completed" and rest[-1].response.output_text == ANSWER
    everything = [*first, *rest]
    assert [e.sequence_number for e in everything] == list(range(len(everything)))
    for event in everything:
        validate("ResponseStreamEvent", json.loads(event.model_dump_json(exclude_unset=True)))


async def test_a_reader_that_stops_reading_is_cut_after_the_send_timeout_and_the_run_goes_on(
    fake_engine: FakeEngine, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("key-alice alice\n")
    # Tokens of 16 KiB (the fake yields each item of its answer as one token): 5 MiB of events wait
    # in the log when the reader comes, more than the kernel buffers (4 MiB at most here) and
    # the server's own take from a client whose receive buffer is 4 KiB and that never reads.
    fake_engine.answer = ["x" * 16384] * 330  # type: ignore[assignment]
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 320
    body = {**BODY, "max_output_tokens": 400}
    async with (
        # A record that holds the 5 MiB answer; a keep-alive comment every second, which is the
        # send that finds the connection full (the events before it went into buffers at once).
        running_gateway(
            fake_engine, keys_file=keys, send_timeout=1.0, ping_interval=1.0, max_session_bytes=16 * 2**20
        ) as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"Authorization": "Bearer key-alice"}, timeout=30) as alice,
    ):
        async with (
            asyncio.timeout(30),
            alice.stream("POST", "/v1/responses", json=body) as r,
            aclosing(iter_events(r)) as events,
        ):
            response_id = (await anext(events)).data["response"]["id"]
        await until(lambda: fake_engine.at_gate == 1)  # 320 tokens' events in the log, the run held

        host, port = gw.url.removeprefix("http://").split(":")
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(stalled, (host, int(port)))
            request = (
                f"GET /v1/responses/{response_id}?stream=true HTTP/1.1\r\nHost: {host}\r\n"
                "Authorization: Bearer key-alice\r\nX-Test-Id: stalled\r\n\r\n"
            )
            await asyncio.get_running_loop().sock_sendall(stalled, request.encode())
            # Never read: the stream is cut once a send has waited `send_timeout` for the client.
            await gw.handled.wait_handled("stalled", timeout=20)
        finally:
            stalled.close()
        assert fake_engine.running and not fake_engine.aborted  # the run was left alone
        fake_engine.gate.set()
        stored = await poll(alice, response_id, ("completed",))
        assert text_of(stored) == "".join(fake_engine.answer)
        assert await gw.wait_states(1) == [CompletionState.SUCCESS]


async def test_a_background_answer_too_large_to_store_is_stored_failed_at_once_saying_so(
    fake_engine: FakeEngine, tmp_path: Path
) -> None:
    # Regression: its record could not be written, so it stayed in progress until its lease lapsed,
    # and then read as failed because "the server running this response stopped".
    keys = tmp_path / "keys"
    keys.write_text("key-alice alice\n")
    fake_engine.answer = "x" * 3000
    async with (
        running_gateway(fake_engine, keys_file=keys, max_session_bytes=4096) as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"Authorization": "Bearer key-alice"}, timeout=30) as alice,
    ):
        r = await alice.post("/v1/responses", json={**BODY, "max_output_tokens": 3500})
        events = validate_responses_sse(r.text)
        assert events[-1]["type"] == "response.failed"
        failed = events[-1]["response"]
        assert failed["status"] == "failed" and "too large to store" in failed["error"]["message"]
        assert (await alice.get(f"/v1/responses/{failed['id']}")).json() == failed  # stored so, now
