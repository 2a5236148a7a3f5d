"""The admission coordinator and its front-end clients: one controller's decisions, whichever process asks.

Two `RemoteAdmission`s play two front-end processes of one gateway (2 slots,
2 queue places) over a real unix socket.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.errors import Displaced, EngineUnavailable, LimitReached, Overloaded, PriorityNotAllowed, QueueTimeout
from gateway.core.principal import Limits, Principal
from gateway.processes.coordinator import AdmissionCoordinator
from tests.processes.conftest import Connect
from tests.sse_client import eventually

FLOOD = Principal("flood", "bulk")
LIGHT = Principal("light", "interactive")


async def test_the_cap_and_the_queue_are_one_gateways_whichever_process_holds_the_places(
    coordinator: AdmissionCoordinator, connect: Connect
) -> None:
    first, second = await connect(), await connect()
    running = [await first.aclaim(), await second.aclaim()]
    for ticket in running:
        await ticket.aconfirm(prompt_tokens=3, max_tokens=5)
    waiting = [await second.aclaim(), await first.aclaim()]
    for ticket in waiting:
        await ticket.aconfirm(prompt_tokens=3, max_tokens=5)
    assert [t.state for t in running + waiting] == ["running", "running", "waiting", "waiting"]
    # Each process holds two places: a cap of its own would let both take more.
    for admission in (first, second):
        with pytest.raises(Overloaded) as refused:
            await admission.aclaim()
        assert refused.value.retry_after is not None and refused.value.retry_after > 0
        load = await admission.aload()
        assert (load.running, load.waiting) == (2, 2)

    # A slot freed in one process goes to the request waiting in the other.
    running[0].release(output_tokens=5)
    async with asyncio.timeout(5):
        await waiting[0].wait(timeout=5)
    assert waiting[0].queue_seconds >= 0
    assert (coordinator.admission.load().running, coordinator.admission.load().waiting) == (2, 1)
    for ticket in running + waiting:
        ticket.release()
    await eventually(lambda: coordinator.admission.load().running + coordinator.admission.load().waiting == 0)


async def test_a_lighter_users_arrival_in_one_process_displaces_the_flooders_request_waiting_in_another(
    coordinator: AdmissionCoordinator, connect: Connect
) -> None:
    first, second = await connect(), await connect()
    flood = [await first.aclaim(FLOOD) for _ in range(4)]
    for ticket in flood:
        await ticket.aconfirm(max_tokens=8)
    newest = asyncio.create_task(flood[3].wait(timeout=30))
    light = await second.aclaim(LIGHT)  # the queue is full: the heaviest user's newest waiting place is taken
    with pytest.raises(Displaced):
        async with asyncio.timeout(5):
            await newest
    await light.aconfirm(max_tokens=8)
    assert await second.aholds_place("light") and await first.aholds_place("flood")
    users = {u["user"]: (u["running"], u["waiting"]) for u in (await first.afairness())["users"]}
    assert users == {"flood": (2, 1), "light": (0, 1)}
    # A slot that frees goes to the light user first, though the flooder's request came earlier.
    flood[0].release(output_tokens=8)  # it generated all it was charged for
    async with asyncio.timeout(5):
        await light.wait(timeout=5)
    assert flood[2].queue_seconds > 0 and (await first.aload()).waiting == 1
    for ticket in [*flood, light]:
        ticket.release()


async def test_a_front_end_that_goes_away_gives_back_every_place_it_held(
    coordinator: AdmissionCoordinator, connect: Connect
) -> None:
    dying, other = await connect(), await connect()
    for _ in range(3):
        ticket = await dying.aclaim()
        await ticket.aconfirm()
    pending = await dying.aclaim()  # claimed, prompt not yet rendered
    assert pending.state == "pending"
    await dying.stop()  # as a killed process's socket closes
    await eventually(lambda: coordinator.admission.load().running + coordinator.admission.load().waiting == 0)
    ticket = await other.aclaim()
    await ticket.aconfirm()
    assert ticket.state == "running"
    ticket.release()


async def test_without_the_coordinator_every_request_is_a_503_and_waiting_ones_end(
    coordinator: AdmissionCoordinator, connect: Connect
) -> None:
    admission = await connect()
    tickets = [await admission.aclaim() for _ in range(3)]
    for ticket in tickets:
        await ticket.aconfirm()
    waiter = asyncio.create_task(tickets[2].wait(timeout=30))
    await coordinator.close()  # the parent process is gone
    with pytest.raises(EngineUnavailable):
        async with asyncio.timeout(5):
            await waiter
    await eventually(lambda: admission.lost)
    with pytest.raises(EngineUnavailable):
        await admission.aclaim()
    assert admission.draining  # /ready answers 503
    for ticket in tickets:
        ticket.release()  # nothing to tell; must not raise


async def test_draining_reaches_every_process_whichever_was_signalled(
    coordinator: AdmissionCoordinator, connect: Connect
) -> None:
    first, second = await connect(), await connect()
    held = await first.aclaim()
    await held.aconfirm()
    second.start_draining()  # this process got SIGTERM
    await eventually(lambda: first.draining and coordinator.admission.draining)
    with pytest.raises(EngineUnavailable):
        await first.aclaim()
    idle = asyncio.create_task(first.wait_idle())
    await asyncio.sleep(0)
    assert not idle.done()  # its admitted request carries on
    held.release()
    async with asyncio.timeout(5):
        await idle


async def test_refusals_cross_the_link_with_their_kind_and_data(
    coordinator: AdmissionCoordinator, connect: Connect
) -> None:
    admission = await connect()
    capped = Principal("capped", "capped", Limits(concurrent_requests=1), quota="sk-capped")
    held = await admission.aclaim(capped)
    with pytest.raises(LimitReached) as limited:
        await admission.aclaim(capped)
    assert (limited.value.limit, limited.value.type, limited.value.retry_after) == (
        "concurrent_requests",
        "concurrent_requests_limit",
        1.0,
    )
    with pytest.raises(PriorityNotAllowed):
        await held.aconfirm(priority=1)
    held.release()


async def test_a_queue_timeout_gives_the_place_back(coordinator: AdmissionCoordinator, connect: Connect) -> None:
    admission = await connect()
    tickets = [await admission.aclaim() for _ in range(3)]
    for ticket in tickets:
        await ticket.aconfirm()
    with pytest.raises(QueueTimeout):
        await tickets[2].wait(timeout=0.05)
    await eventually(lambda: coordinator.admission.load().waiting == 0)
    assert (await admission.aload()).running == 2
    for ticket in tickets:
        ticket.release()
