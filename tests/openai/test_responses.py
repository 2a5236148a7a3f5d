"""The Responses API over the fake engine: storage, chains, ownership, errors and the event order.

Every Response object, streamed event and item list is checked against OpenAI's published
schemas (tests/openai_spec). The real engine, the official SDK's streaming helper and two
replicas sharing Redis are in test_responses_replicas.py.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from typing import Any

import httpx
import pytest

from gateway import CompletionState
from gateway.core.errors import BadChatRequest
from tests.fakes import AwayStore, FakeEngine
from tests.gateway_app import Gateway, running_gateway
from tests.openai_spec import validate, validate_responses_sse
from tests.sse_client import iter_events

ANSWER = "Hello from the fake engine."


async def respond(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/responses", json={"model": "fake-model", **body})
    assert r.status_code == 200, r.text
    response: dict[str, Any] = r.json()
    validate("Response", response)
    return response


def text_of(response: dict[str, Any]) -> str:
    return "".join(part["text"] for item in response["output"] for part in item.get("content", []))


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    validate("ErrorResponse", body)
    return body["error"]


async def test_a_string_input_is_answered_with_a_completed_response(
    alice: httpx.AsyncClient, fake_engine: FakeEngine, keyed_gateway: Gateway
) -> None:
    response = await respond(alice, input="hi", instructions="Be brief.", metadata={"k": "v"})
    assert response["status"] == "completed" and response["object"] == "response"
    assert text_of(response) == ANSWER
    assert response["instructions"] == "Be brief." and response["metadata"] == {"k": "v"}
    assert response["usage"]["input_tokens"] == len(fake_engine.prompts[0])
    assert response["usage"]["output_tokens"] == len(ANSWER)
    assert fake_engine.prompt_text() == "<system>Be brief.</system><user>hi</user><assistant>"
    assert response["id"].startswith("resp_") and len(response["id"]) > 30
    assert await keyed_gateway.wait_states(1) == [CompletionState.SUCCESS]


async def test_previous_response_id_continues_the_stored_chain_without_its_instructions(
    alice: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    first = await respond(alice, input="one", instructions="Old rules.")
    second = await respond(alice, input="two", previous_response_id=first["id"])
    await respond(alice, input="three", previous_response_id=second["id"], instructions="New rules.")
    assert fake_engine.prompt_text() == (
        f"<system>New rules.</system><user>one</user><assistant>{ANSWER}</assistant>"
        f"<user>two</user><assistant>{ANSWER}</assistant><user>three</user><assistant>"
    )
    assert second["previous_response_id"] == first["id"]


async def test_usage_reports_the_prompt_tokens_the_engine_served_from_its_prefix_cache(
    alice: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    # Regression: input_tokens_details.cached_tokens was always 0, whatever the engine reused.
    fake_engine.prefix_cache = True
    first = await respond(alice, input="one " * 20)
    second = await respond(alice, input="two", previous_response_id=first["id"])
    # The chain renders the first turn as before: its prompt, in whole blocks, comes from the cache.
    blocks = [len(prompt) // 16 * 16 for prompt in fake_engine.prompts]
    assert first["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": blocks[0]}
    assert second["usage"]["input_tokens_details"] == {
        "cached_tokens": blocks[0],
        "cache_write_tokens": blocks[1] - blocks[0],
    }
    assert blocks[0] > 0


async def test_two_continuations_of_one_response_fork_the_chain(
    alice: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    first = await respond(alice, input="root")
    fake_engine.token_delay = 0.001
    left, right = await asyncio.gather(
        respond(alice, input="left", previous_response_id=first["id"]),
        respond(alice, input="right", previous_response_id=first["id"]),
    )
    await respond(alice, input="after", previous_response_id=right["id"])
    assert "left" not in fake_engine.prompt_text() and "<user>right</user>" in fake_engine.prompt_text()
    assert left["id"] != right["id"]


async def test_a_stored_response_is_retrieved_listed_and_deleted(alice: httpx.AsyncClient) -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "a"}]},
        {"type": "message", "role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    response = await respond(alice, input=items)
    got = (await alice.get(f"/v1/responses/{response['id']}")).json()
    validate("Response", got)
    assert got == response
    listed = (await alice.get(f"/v1/responses/{response['id']}/input_items")).json()
    validate("ResponseItemList", listed)
    assert [i["content"][0]["text"] for i in listed["data"]] == ["c", "b", "a"]  # newest first
    page = (await alice.get(f"/v1/responses/{response['id']}/input_items?order=asc&limit=2")).json()
    validate("ResponseItemList", page)
    assert [i["content"][0]["text"] for i in page["data"]] == ["a", "b"] and page["has_more"] is True
    deleted = await alice.delete(f"/v1/responses/{response['id']}")
    assert deleted.json() == {"id": response["id"], "object": "response", "deleted": True}
    error_of(await alice.get(f"/v1/responses/{response['id']}"), 404)


async def test_store_false_keeps_nothing(alice: httpx.AsyncClient) -> None:
    response = await respond(alice, input="hi", store=False)
    error_of(await alice.get(f"/v1/responses/{response['id']}"), 404)
    r = await alice.post("/v1/responses", json={"input": "x", "previous_response_id": response["id"]})
    assert error_of(r, 404)["param"] == "response"


async def test_another_keys_response_is_404_exactly_like_an_unknown_one(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    response = await respond(alice, input="secret")
    guessed = "resp_" + "A" * 32
    foreign = [
        await bob.get(f"/v1/responses/{response['id']}"),
        await bob.get(f"/v1/responses/{response['id']}/input_items"),
        await bob.delete(f"/v1/responses/{response['id']}"),
        await bob.post("/v1/responses", json={"input": "x", "previous_response_id": response["id"]}),
    ]
    unknown = [
        await bob.get(f"/v1/responses/{guessed}"),
        await bob.get(f"/v1/responses/{guessed}/input_items"),
        await bob.delete(f"/v1/responses/{guessed}"),
        await bob.post("/v1/responses", json={"input": "x", "previous_response_id": guessed}),
    ]
    for theirs, nobodys in zip(foreign, unknown, strict=True):
        assert error_of(theirs, 404)["message"].replace(response["id"], guessed) == error_of(nobodys, 404)["message"]
    assert (await alice.get(f"/v1/responses/{response['id']}")).status_code == 200  # bob deleted nothing


def check_one_message_stream(events: list[dict[str, Any]]) -> None:
    """A completed stream of one message, ANSWER, its events in order with sequence numbers 0, 1, ..."""
    kinds = [e["type"] for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == ANSWER


async def test_the_stream_sends_openai_events_in_order_and_stores_the_completed_response(
    alice: httpx.AsyncClient,
) -> None:
    r = await alice.post("/v1/responses", json={"input": "hi", "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = validate_responses_sse(r.text)
    check_one_message_stream(events)
    completed = events[-1]["response"]
    assert text_of(completed) == ANSWER
    stored = (await alice.get(f"/v1/responses/{completed['id']}")).json()
    assert stored == completed


async def test_a_stream_names_its_response_as_soon_as_it_is_admitted_before_the_first_token(
    alice: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    # Regression: response.created and response.in_progress waited for the first token, so a
    # client had no response id (nor any event) while the prompt was prefilled.
    fake_engine.gate = asyncio.Event()
    body = {"model": "fake-model", "input": "hi", "stream": True}
    async with asyncio.timeout(30), alice.stream("POST", "/v1/responses", json=body) as r:
        assert r.status_code == 200
        async with aclosing(iter_events(r)) as events:
            opening = [await anext(events), await anext(events)]
            assert [e.event for e in opening] == ["response.created", "response.in_progress"]
            assert fake_engine.running and not fake_engine.gate.is_set()  # no token has been generated
            fake_engine.gate.set()
            rest = [e.event async for e in events]
    assert rest[0] == "response.output_item.added" and rest[-1] == "response.completed"
    stored = (await alice.get(f"/v1/responses/{opening[0].data['response']['id']}")).json()
    assert stored["status"] == "completed" and text_of(stored) == ANSWER


@pytest.mark.parametrize("stream", [pytest.param(True, id="streamed"), pytest.param(False, id="whole")])
async def test_a_request_the_engine_refuses_is_a_400_in_json_and_leaves_nothing_stored(
    alice: httpx.AsyncClient,
    fake_engine: FakeEngine,
    keyed_gateway: Gateway,
    stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Regression: a streamed request that the engine refused after admission (vLLM's checks of
    # its parameters) was a 200 with response.created, response.in_progress and response.failed:
    # the stream opened at admission, before the engine had accepted the request.
    records = keyed_gateway.app.state.responses.store.store
    kept = len(records)
    fake_engine.refusal = BadChatRequest("Grammar error: unclosed group", param="text.format")
    r = await alice.post("/v1/responses", json={"input": "hi", "stream": stream})
    assert r.headers["content-type"].startswith("application/json")
    error = error_of(r, 400)
    assert (error["message"], error["param"]) == ("Grammar error: unclosed group", "text.format")
    assert await keyed_gateway.wait_states(1) == [CompletionState.UNKNOWN_ERROR_OCCURRED]
    assert len(records) == kept  # no response stored, in no state
    load = keyed_gateway.app.state.core.admission.load()
    assert (load.running, load.waiting, fake_engine.running) == (0, 0, set())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # bad input, not a fault of the server
    fake_engine.refusal = None
    assert (await respond(alice, input="hi"))["status"] == "completed"


async def test_keep_alive_pings_flow_while_the_stream_waits_for_the_engine_to_accept_it(
    fake_engine: FakeEngine,
) -> None:
    # The opening waits for the engine's acceptance (so that a refusal is still a real status);
    # a load balancer meanwhile sees pings, as during a long prefill.
    fake_engine.accept_gate = asyncio.Event()
    body = {"model": "fake-model", "input": "hi", "stream": True}
    async with (
        running_gateway(fake_engine, ping_interval=0.05) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
        asyncio.timeout(30),
        client.stream("POST", "/v1/responses", json=body) as r,
    ):
        assert r.status_code == 200
        chunks = r.aiter_text()
        first = await anext(chunks)
        assert first.startswith(": ping") and not fake_engine.running  # not accepted yet
        fake_engine.accept_gate.set()
        rest = "".join([chunk async for chunk in chunks])
    kinds = [event["type"] for event in validate_responses_sse(first + rest)]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"


async def test_max_output_tokens_makes_an_incomplete_response(alice: httpx.AsyncClient) -> None:
    response = await respond(alice, input="hi", max_output_tokens=4)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert text_of(response) == ANSWER[:4]
    r = await alice.post("/v1/responses", json={"input": "hi", "max_output_tokens": 4, "stream": True})
    assert validate_responses_sse(r.text)[-1]["type"] == "response.incomplete"


async def test_a_chain_longer_than_the_context_is_cut_at_its_oldest_turns(
    alice: httpx.AsyncClient, fake_engine: FakeEngine
) -> None:
    fake_engine.max_model_len = 300
    previous = None
    for turn in range(8):  # each turn takes about 70 characters (tokens)
        response = await respond(alice, input=f"turn {turn}", previous_response_id=previous, max_output_tokens=20)
        previous = response["id"]
    prompt = fake_engine.prompt_text()
    assert len(fake_engine.prompts[-1]) + 20 <= 300
    assert prompt.startswith("<user>turn ") and "<user>turn 7</user>" in prompt and "turn 0" not in prompt
    listed = (await alice.get(f"/v1/responses/{previous}/input_items")).json()
    assert listed["data"][0]["content"][0]["text"] == "turn 7"  # what is stored stays whole
    r = await alice.post(
        "/v1/responses",
        json={"input": "more", "previous_response_id": previous, "truncation": "disabled", "max_output_tokens": 20},
    )
    assert error_of(r, 400)["code"] == "prompt_too_long"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        pytest.param(
            {"input": "x", "previous_response_id": "resp_x", "conversation": "conv_x"},
            "conversation",
            "cannot both",
            id="previous-and-conversation",
        ),
        pytest.param(
            {"input": [{"type": "input_image_call"}]}, "input[0]", "'input_image_call' are not supported", id="item"
        ),
        pytest.param(
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0]",
            "'input_image' are not supported",
            id="content-part",
        ),
        pytest.param({"input": "x", "tools": [{"type": "web_search"}]}, "tools", "'web_search'", id="tool"),
        pytest.param({"input": ""}, "input", "must not be empty", id="empty"),
        pytest.param({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "greater", id="max-output"),
        pytest.param(
            {"input": "x", "include": ["message.output_text.logprobs"]}, "include", "not supported", id="include"
        ),
    ],
)
async def test_bad_requests_are_400s_that_name_the_field(
    alice: httpx.AsyncClient, body: dict[str, Any], param: str, words: str
) -> None:
    error = error_of(await alice.post("/v1/responses", json=body), 400)
    assert error["param"] == param and words in error["message"], error


async def test_tools_need_the_vllm_frontend_and_say_so(alice: httpx.AsyncClient) -> None:
    tool = {"type": "function", "name": "add", "parameters": {"type": "object"}, "strict": True}
    error = error_of(await alice.post("/v1/responses", json={"input": "x", "tools": [tool]}), 400)
    assert "tools" in error["message"]


async def test_cancel_is_refused_for_a_response_that_is_not_in_the_background(alice: httpx.AsyncClient) -> None:
    response = await respond(alice, input="hi")
    assert "background" in error_of(await alice.post(f"/v1/responses/{response['id']}/cancel"), 400)["message"]
    error_of(await alice.post("/v1/responses/resp_unknown/cancel"), 404)


async def test_sampling_fields_reach_the_engine(alice: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    await respond(alice, input="hi", temperature=0.5, top_p=0.9, seed=7, max_output_tokens=5)
    options = fake_engine.options[-1]
    assert (options.temperature, options.top_p, options.seed, options.max_tokens) == (0.5, 0.9, 7, 5)


async def test_an_engine_failure_mid_stream_ends_it_with_response_failed_and_stores_nothing(
    alice: httpx.AsyncClient, fake_engine: FakeEngine, keyed_gateway: Gateway
) -> None:
    fake_engine.fail_after_tokens = 3
    r = await alice.post("/v1/responses", json={"input": "hi", "stream": True})
    events = validate_responses_sse(r.text)
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert await keyed_gateway.wait_states(1) == [CompletionState.UNKNOWN_ERROR_OCCURRED]
    error_of(await alice.get(f"/v1/responses/{failed['id']}"), 404)


async def test_an_answer_too_large_to_store_is_answered_and_the_log_says_it_was_not_stored(
    fake_engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    fake_engine.answer = "x" * 3000
    async with (
        running_gateway(fake_engine, max_session_bytes=4096) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
    ):
        r = await client.post("/v1/responses", json={"model": "fake-model", "input": "hi", "max_output_tokens": 3500})
        assert r.status_code == 200
        answered = r.json()
        validate("Response", answered)
        assert answered["status"] == "completed" and answered["output"][0]["content"][0]["text"] == fake_engine.answer
        assert await gw.wait_states(1) == [CompletionState.SUCCESS]
        assert (await client.get(f"/v1/responses/{answered['id']}")).status_code == 404
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    warnings = [message for message in warnings if "not stored" in message]
    assert warnings and answered["id"] in warnings[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # a known limit, not a fault


async def test_a_response_the_store_could_not_keep_is_failed_not_completed(fake_engine: FakeEngine) -> None:
    # Regression: `response.completed` (or the JSON body) went out before the store was written, so
    # the client was given an id that a later previous_response_id or GET answered with 404.
    store = AwayStore()
    store.away = True
    async with (
        running_gateway(fake_engine, store=store) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
    ):
        r = await client.post("/v1/responses", json={"model": "fake-model", "input": "hi", "stream": True})
        events = validate_responses_sse(r.text)
        assert [e["type"] for e in events][-2:] == ["response.output_item.done", "response.failed"]
        failed = events[-1]["response"]
        assert failed["error"]["message"] == "this response may not have been stored: the response store is unavailable"
        plain = await client.post("/v1/responses", json={"model": "fake-model", "input": "hi"})
        assert error_of(plain, 503)["code"] == "session_store_unavailable" and "retry-after" in plain.headers
        unstored = await respond(client, input="hi", store=False)  # asks for no record: the store is not needed
        assert unstored["status"] == "completed"
        assert await gw.wait_states(3) == [
            CompletionState.UNKNOWN_ERROR_OCCURRED,
            CompletionState.UNKNOWN_ERROR_OCCURRED,
            CompletionState.SUCCESS,
        ]
        store.away = False
        error_of(await client.get(f"/v1/responses/{failed['id']}"), 404)
