"""Background responses: answered at once as queued, run on without the client, polled, cancelled from any replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import CompletionState, MemoryStore
from tests.fakes import FakeEngine
from tests.gateway_app import Gateway, running_gateway
from tests.openai.conftest import KEYS
from tests.openai.test_responses import ANSWER, error_of, text_of
from tests.openai_spec import validate


async def start(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/responses", json={"model": "fake-model", "background": True, **body})
    assert r.status_code == 200, r.text
    response: dict[str, Any] = r.json()
    validate("Response", response)
    return response


async def poll(client: httpx.AsyncClient, response_id: str, until: tuple[str, ...]) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            response: dict[str, Any] = (await client.get(f"/v1/responses/{response_id}")).json()
            validate("Response", response)
            if response["status"] in until:
                return response
            await asyncio.sleep(0.02)


async def running(client: httpx.AsyncClient) -> int:
    load: dict[str, int] = (await client.get("/get_load")).json()
    return load["in_flight"]


async def test_a_background_response_is_queued_at_once_and_completes_without_its_client(
    alice: httpx.AsyncClient, fake_engine: FakeEngine, keyed_gateway: Gateway
) -> None:
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 1
    queued = await start(alice, input="hi")
    assert queued["status"] == "queued" and queued["background"] is True and queued["output"] == []
    # The HTTP request has ended; its generation holds its slot and runs on.
    assert (await poll(alice, queued["id"], ("in_progress",)))["id"] == queued["id"]
    assert await running(alice) == 1
    fake_engine.gate.set()
    done = await poll(alice, queued["id"], ("completed",))
    assert text_of(done) == ANSWER and done["background"] is True and done["completed_at"] is not None
    assert await keyed_gateway.wait_states(1) == [CompletionState.SUCCESS]
    assert await running(alice) == 0
    # It continues a chain like any stored response.
    r = await alice.post("/v1/responses", json={"input": "more", "previous_response_id": done["id"]})
    assert r.status_code == 200, r.text
    assert f"<user>hi</user><assistant>{ANSWER}</assistant><user>more</user>" in fake_engine.prompt_text()


async def test_cancelling_a_background_response_stops_its_generation_and_frees_its_slot(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, fake_engine: FakeEngine, keyed_gateway: Gateway
) -> None:
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 1
    queued = await start(alice, input="hi")
    await poll(alice, queued["id"], ("in_progress",))
    error_of(await bob.post(f"/v1/responses/{queued['id']}/cancel"), 404)  # not bob's
    r = await alice.post(f"/v1/responses/{queued['id']}/cancel")
    assert r.status_code == 200, r.text
    validate("Response", r.json())
    assert r.json()["status"] == "cancelled"
    # Stopped as if its client had left; a background response sends nothing before its end.
    assert await keyed_gateway.wait_states(1) == [CompletionState.CLIENT_DISCONNECTED_BEFORE_STREAMING]
    assert fake_engine.aborted  # the engine request was stopped, not left to run
    assert await running(alice) == 0
    assert (await poll(alice, queued["id"], ("cancelled",)))["output"] == []
    error = error_of(await alice.post(f"/v1/responses/{queued['id']}/cancel"), 400)
    assert "already cancelled" in error["message"]


@pytest.fixture
async def one_slot(fake_engine: FakeEngine, tmp_path: Path) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    """A gateway that runs one generation at a time, and Alice's client of it."""
    keys = tmp_path / "keys"
    keys.write_text("".join(f"{key} {user}\n" for key, user in KEYS.items()))
    async with (
        running_gateway(fake_engine, keys_file=keys, concurrency=1) as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"Authorization": "Bearer key-alice"}, timeout=30) as client,
    ):
        yield gw, client


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_background_response_is_in_progress_while_the_engine_has_it_and_queued_while_it_waits(
    one_slot: tuple[Gateway, httpx.AsyncClient], fake_engine: FakeEngine
) -> None:
    # Regression: a background response read `queued` from its creation to its end; OpenAI's
    # lifecycle is queued, then in_progress once it runs, then how it ended.
    gw, alice = one_slot
    admission = gw.app.state.core.admission
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 0  # held by the engine before its first token
    first = await start(alice, input="first")
    await until(lambda: len(fake_engine.running) == 1)
    response = (await alice.get(f"/v1/responses/{first['id']}")).json()
    validate("Response", response)
    assert response["status"] == "in_progress" and response["output"] == []
    second = await start(alice, input="second")
    await until(lambda: admission.load().waiting == 1)  # behind the one slot, which the first holds
    assert (await alice.get(f"/v1/responses/{second['id']}")).json()["status"] == "queued"
    # A cancel while in progress stops it; the second gets the slot and is in progress in turn.
    assert (await alice.post(f"/v1/responses/{first['id']}/cancel")).json()["status"] == "cancelled"
    await until(lambda: fake_engine.aborted != [] and len(fake_engine.running) == 1)
    response = (await alice.get(f"/v1/responses/{second['id']}")).json()
    assert response["status"] == "in_progress", response
    fake_engine.gate.set()
    assert text_of(await poll(alice, second["id"], ("completed",))) == ANSWER
    assert (await alice.get(f"/v1/responses/{first['id']}")).json()["status"] == "cancelled"
    assert await gw.wait_states(2) == [CompletionState.CLIENT_DISCONNECTED_BEFORE_STREAMING, CompletionState.SUCCESS]


async def test_a_finished_background_response_cannot_be_cancelled(alice: httpx.AsyncClient) -> None:
    queued = await start(alice, input="hi")
    await poll(alice, queued["id"], ("completed",))
    error = error_of(await alice.post(f"/v1/responses/{queued['id']}/cancel"), 400)
    assert "already completed" in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        pytest.param({"store": False}, "background", "must be stored", id="not-stored"),
        pytest.param({"store": False, "stream": True}, "background", "must be stored", id="streamed-not-stored"),
    ],
)
async def test_what_a_background_response_cannot_be_is_a_400(
    alice: httpx.AsyncClient, body: dict[str, Any], param: str, words: str
) -> None:
    error = error_of(await alice.post("/v1/responses", json={"input": "x", "background": True, **body}), 400)
    assert error["param"] == param and words in error["message"], error


@pytest.fixture
async def replicas(fake_engine: FakeEngine, tmp_path: Path) -> AsyncIterator[list[Gateway]]:
    """Two gateways sharing one store (as replicas share Redis or SQL) and one engine."""
    keys = tmp_path / "keys"
    keys.write_text("".join(f"{key} {user}\n" for key, user in KEYS.items()))
    store = MemoryStore()
    async with (
        running_gateway(fake_engine, keys_file=keys, store=store) as a,
        running_gateway(fake_engine, keys_file=keys, store=store) as b,
    ):
        yield [a, b]


@pytest.fixture
async def alice_on(replicas: list[Gateway]) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Alice's client of each replica."""
    headers = {"Authorization": "Bearer key-alice"}
    async with (
        httpx.AsyncClient(base_url=replicas[0].url, headers=headers, timeout=30) as on_a,
        httpx.AsyncClient(base_url=replicas[1].url, headers=headers, timeout=30) as on_b,
    ):
        yield [on_a, on_b]


async def held_on_a(
    alice_on: list[httpx.AsyncClient], fake_engine: FakeEngine
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A background response that replica A runs, held by the engine: as created, and as B reads it running."""
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 1
    on_a, on_b = alice_on
    queued = await start(on_a, input="hi")
    return queued, await poll(on_b, queued["id"], ("in_progress",))


async def test_a_cancel_on_another_replica_stops_the_generation_where_it_runs(
    replicas: list[Gateway], alice_on: list[httpx.AsyncClient], fake_engine: FakeEngine
) -> None:
    on_a, on_b = alice_on
    queued, _ = await held_on_a(alice_on, fake_engine)
    assert (await on_b.post(f"/v1/responses/{queued['id']}/cancel")).json()["status"] == "cancelled"
    # Replica A reads the mark within its poll interval and stops the generation it runs.
    await replicas[0].wait_states(1)
    assert fake_engine.aborted and await running(on_a) == 0
    fake_engine.gate.set()
    assert (await poll(on_a, queued["id"], ("cancelled",)))["status"] == "cancelled"


async def test_a_background_response_whose_replica_died_is_reported_failed_not_queued_for_ever(
    replicas: list[Gateway], alice_on: list[httpx.AsyncClient], fake_engine: FakeEngine
) -> None:
    on_a, on_b = alice_on
    queued, seen_on_b = await held_on_a(alice_on, fake_engine)
    assert seen_on_b["status"] == "in_progress"  # its lease is fresh
    # Seen from B a minute later, A has renewed nothing since: as if A had died mid-run.
    b_runs = replicas[1].app.state.responses.background
    now = b_runs.clock()
    b_runs.clock = lambda: now + 60
    failed = await poll(on_b, queued["id"], ("failed",))
    assert "stopped before it ended" in failed["error"]["message"]
    # What A's run does afterwards changes nothing: that ending stands.
    fake_engine.gate.set()
    await replicas[0].wait_states(1)
    assert (await poll(on_a, queued["id"], ("failed",)))["status"] == "failed"
