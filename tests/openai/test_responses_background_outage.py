"""Background responses while the store is away: a run always ends readable as failed, never in progress for ever.

A run whose records cannot be written (its start, its lease's renewals, its ending) still ends,
frees its slot and says so in the log in a line, without a traceback. Once the store takes
writes again, the client reads a terminal state: `failed`, saying the response could not be
stored when the run could store that much, or else, once its lease has lapsed, the lapsed
lease's `failed`. A cancel while the store is away is a 503 the client can retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import CompletionState
from gateway.openai.background import BackgroundRuns
from gateway.sessions import RedisStore
from tests.fakes import AwayStore, FakeEngine
from tests.gateway_app import Gateway, running_gateway
from tests.openai.test_responses import ANSWER, error_of, text_of
from tests.openai.test_responses_background import poll, running, start, until
from tests.openai_spec import validate, validate_responses_sse
from tests.servers import RedisServer
from tests.sse_client import iter_events

SUCCESS = CompletionState.SUCCESS
# A run whose record the store did not take ends as failed, for the callback as for the client.
UNSTORED = CompletionState.UNKNOWN_ERROR_OCCURRED


@dataclass
class Outage:
    gw: Gateway
    store: AwayStore
    alice: httpx.AsyncClient

    @property
    def runs(self) -> BackgroundRuns:
        runs: BackgroundRuns = self.gw.app.state.responses.background
        return runs


@pytest.fixture
async def outage(fake_engine: FakeEngine, tmp_path: Path) -> AsyncIterator[Outage]:
    """A gateway that runs one generation at a time on a store that can go away, and Alice's client."""
    keys = tmp_path / "keys"
    keys.write_text("key-alice alice\n")
    store = AwayStore()
    async with (
        running_gateway(fake_engine, keys_file=keys, store=store, concurrency=1) as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"Authorization": "Bearer key-alice"}, timeout=30) as alice,
    ):
        yield Outage(gw, store, alice)


async def begin(alice: httpx.AsyncClient, stream: bool) -> str:
    """Start a background response (streamed: its client leaves after the first event); its id."""
    if not stream:
        return str((await start(alice, input="hi"))["id"])
    body = {"model": "fake-model", "input": "hi", "background": True, "stream": True}
    async with (
        asyncio.timeout(30),
        alice.stream("POST", "/v1/responses", json=body) as r,
        aclosing(iter_events(r)) as events,
    ):
        assert r.status_code == 200
        return str((await anext(events)).data["response"]["id"])


def lapse(runs: BackgroundRuns) -> None:
    """Move the replica's clock past any lease it has written."""
    now = runs.clock()
    runs.clock = lambda: now + runs.lease + 1


def background_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.openai.background"]


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], "a store away is no fault"


@pytest.mark.parametrize("stream", [False, True], ids=["polled", "streamed"])
async def test_a_run_the_store_was_away_for_frees_its_slot_and_reads_failed_once_its_lease_lapsed(
    outage: Outage, fake_engine: FakeEngine, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    gw, store, alice = outage.gw, outage.store, outage.alice
    outage.runs.poll = 0.01  # lease renewals: many while the run is held
    # A response that asks for no record holds the one slot; the background run waits behind it.
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 0
    unstored = {"model": "fake-model", "input": "hold", "store": False}
    holder = asyncio.create_task(alice.post("/v1/responses", json=unstored))
    await until(lambda: fake_engine.at_gate == 1)
    response_id = await begin(alice, stream)
    await until(lambda: gw.app.state.core.admission.load().waiting == 1)
    # Away from before the run's start to after its end: its in_progress, renewals and ending all fail.
    store.away = True
    first, fake_engine.gate = fake_engine.gate, asyncio.Event()
    first.set()
    assert (await holder).status_code == 200
    await until(lambda: fake_engine.at_gate == 2)  # the run has the slot; its start was not stored
    refused = store.refused
    await until(lambda: store.refused >= refused + 3)  # renewals of its lease, refused
    fake_engine.gate.set()
    assert await gw.wait_states(2) == [SUCCESS, UNSTORED]
    assert await running(alice) == 0  # the run's slot is free

    # While its lease holds, it reads as it was last stored; after, it cannot be stored failed yet: a 503.
    assert (await alice.get(f"/v1/responses/{response_id}")).json()["status"] == "queued"
    lapse(outage.runs)
    r = await alice.get(f"/v1/responses/{response_id}")
    assert error_of(r, 503)["code"] == "session_store_unavailable" and "retry-after" in r.headers
    store.away = False
    failed = (await alice.get(f"/v1/responses/{response_id}")).json()
    validate("Response", failed)
    assert failed["status"] == "failed" and failed["output"] == []
    assert "stopped before it ended" in failed["error"]["message"]
    assert (await alice.get(f"/v1/responses/{response_id}")).json() == failed  # stored so
    if stream:  # its events end failed too, saying its ending was not stored
        r = await alice.get(f"/v1/responses/{response_id}", params={"stream": "true"})
        last = validate_responses_sse(r.text)[-1]
        assert last["type"] == "response.failed" and last["response"]["status"] == "failed"
        assert last["response"]["error"]["message"] == "the response's ending was not stored"

    # The server goes on serving.
    assert text_of(await poll(alice, (await start(alice, input="again"))["id"], ("completed",))) == ANSWER
    no_tracebacks(caplog)
    lines = background_lines(caplog)
    assert len(lines) == 2 and all(response_id in line for line in lines), lines
    assert "start was not stored" in lines[0] and "ending was not stored" in lines[1]


@pytest.mark.parametrize("stream", [False, True], ids=["polled", "streamed"])
async def test_a_run_whose_answer_the_store_refused_is_stored_failed_at_once_saying_so(
    outage: Outage, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    gw, store, alice = outage.gw, outage.store, outage.alice

    def completed(changed: Mapping[str, Any]) -> bool:
        return bool(changed.get("response", {}).get("status") == "completed")

    store.refuses = completed  # the answer's write fails; a small one a moment later goes through
    body = {"model": "fake-model", "input": "hi", "background": True, "stream": stream}
    r = await alice.post("/v1/responses", json=body)
    assert r.status_code == 200, r.text
    assert await gw.wait_states(1) == [UNSTORED]
    assert await running(alice) == 0
    response_id = validate_responses_sse(r.text)[0]["response"]["id"] if stream else r.json()["id"]
    failed = (await alice.get(f"/v1/responses/{response_id}")).json()
    validate("Response", failed)
    assert failed["status"] == "failed" and failed["output"] == [] and failed["completed_at"] is not None
    assert failed["error"] == {
        "code": "server_error",
        "message": "the response could not be stored: the response store is unavailable",
    }
    if stream:  # the stream ends as the response is stored
        events = validate_responses_sse(r.text)
        assert events[-1]["type"] == "response.failed" and events[-1]["response"] == failed
    no_tracebacks(caplog)
    lines = background_lines(caplog)
    assert len(lines) == 1 and response_id in lines[0] and "could not be stored" in lines[0], lines


async def test_a_cancel_while_the_store_is_away_is_a_503_and_the_run_goes_on_until_one_is_stored(
    outage: Outage, fake_engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    gw, store, alice = outage.gw, outage.store, outage.alice
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 1
    response_id = (await start(alice, input="hi"))["id"]
    await poll(alice, response_id, ("in_progress",))
    store.away = True
    r = await alice.post(f"/v1/responses/{response_id}/cancel")
    assert error_of(r, 503)["code"] == "session_store_unavailable" and "retry-after" in r.headers
    assert not fake_engine.aborted and await running(alice) == 1  # not cancelled: nothing was stored
    assert (await alice.get(f"/v1/responses/{response_id}")).json()["status"] == "in_progress"
    store.away = False
    r = await alice.post(f"/v1/responses/{response_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert await gw.wait_states(1) == [CompletionState.CLIENT_DISCONNECTED_BEFORE_STREAMING]
    assert fake_engine.aborted and await running(alice) == 0
    no_tracebacks(caplog)


async def test_on_redis_refusing_writes_a_run_frees_its_slot_and_reads_failed_once_writes_are_back(
    fake_engine: FakeEngine, redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis refuses every write as a replica left read-only by a failover does: the run's ending,
    # its lock, and even a read (which refreshes the record's idle timeout).
    keys = tmp_path / "keys"
    keys.write_text("key-alice alice\n")
    store = RedisStore.from_url(redis_server.url, prefix=f"bg-outage-{tmp_path.name}:", socket_timeout=0.5)
    headers = {"Authorization": "Bearer key-alice"}
    try:
        async with (
            running_gateway(fake_engine, keys_file=keys, store=store) as gw,
            httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=30) as alice,
        ):
            fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 1
            response_id = (await start(alice, input="hi"))["id"]
            await poll(alice, response_id, ("in_progress",))
            await store.client.config_set("min-replicas-to-write", 1)  # every write: NOREPLICAS
            try:
                fake_engine.gate.set()
                assert await gw.wait_states(1) == [UNSTORED]
                assert await running(alice) == 0
                for r in (
                    await alice.get(f"/v1/responses/{response_id}"),
                    await alice.post(f"/v1/responses/{response_id}/cancel"),
                ):
                    assert error_of(r, 503)["code"] == "session_store_unavailable"
            finally:
                await store.client.config_set("min-replicas-to-write", 0)
            runs: BackgroundRuns = gw.app.state.responses.background
            lapse(runs)
            failed = (await alice.get(f"/v1/responses/{response_id}")).json()
            validate("Response", failed)
            assert failed["status"] == "failed" and "stopped before it ended" in failed["error"]["message"]
    finally:
        await store.close()
    no_tracebacks(caplog)
    lines = background_lines(caplog)
    assert len(lines) == 1 and response_id in lines[0] and "ending was not stored" in lines[0], lines


async def test_a_run_that_outlives_an_outage_longer_than_its_lease_is_not_given_up_by_its_own_replica(
    outage: Outage, fake_engine: FakeEngine
) -> None:
    gw, store, alice = outage.gw, outage.store, outage.alice
    outage.runs.poll = 3600.0  # no renewal of its own in this test: only the reads below touch the lease
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 1
    response_id = (await start(alice, input="hi"))["id"]
    await poll(alice, response_id, ("in_progress",))
    store.away = True
    lapse(outage.runs)  # the outage outlasts the lease: no renewal went in meanwhile
    store.away = False
    # The replica that runs it knows the run is alive: it renews the lease rather than failing the run.
    assert (await alice.get(f"/v1/responses/{response_id}")).json()["status"] == "in_progress"
    fake_engine.gate.set()
    completed = await poll(alice, response_id, ("completed", "failed"))
    assert completed["status"] == "completed" and text_of(completed) == ANSWER
    assert await gw.wait_states(1) == [SUCCESS]
