"""AdmissionController: exact counting, first come first served, every place given back once."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pytest

from gateway.core.admission import AdmissionController, Load, Ticket
from gateway.core.errors import EngineUnavailable, Overloaded, QueueTimeout


@dataclass
class Waiter:
    """A request waiting for its slot the way the gateway waits: in its own task."""

    ticket: Ticket
    task: asyncio.Task[None]


def wait_in_task(ticket: Ticket, timeout: float | None = None) -> Waiter:
    return Waiter(ticket, asyncio.create_task(ticket.wait(timeout)))


async def settle() -> None:
    """Let woken tasks run (a handful of loop turns: no wall-clock time involved)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_capacity_then_queue_then_429() -> None:
    admission = AdmissionController(capacity=2, queue_size=1)
    running = [admission.enter(), admission.enter()]
    assert all(t.admitted for t in running)
    queued = admission.enter()
    assert not queued.admitted
    assert admission.load() == Load(running=2, waiting=1, capacity=2, queue_size=1)
    with pytest.raises(Overloaded) as refused:
        admission.enter()
    assert refused.value.status == 429 and refused.value.retry_after is not None and refused.value.retry_after > 0
    assert admission.load().waiting == 1  # a refusal takes nothing


async def test_a_zero_queue_refuses_as_soon_as_the_slots_are_full() -> None:
    admission = AdmissionController(capacity=1, queue_size=0)
    admission.enter()
    with pytest.raises(Overloaded):
        admission.enter()


async def test_a_freed_slot_goes_to_the_oldest_waiter_and_no_newcomer_jumps_the_queue() -> None:
    admission = AdmissionController(capacity=1, queue_size=3)
    holder = admission.enter()
    waiters = [wait_in_task(admission.enter()) for _ in range(3)]
    holder.release()
    await settle()
    assert [w.task.done() for w in waiters] == [True, False, False]
    newcomer = wait_in_task(admission.enter())  # nothing is free: the slot was handed over
    await settle()
    assert not newcomer.task.done()
    assert admission.load() == Load(running=1, waiting=3, capacity=1, queue_size=3)
    waiters[0].ticket.release()
    await settle()
    assert [w.task.done() for w in [*waiters, newcomer]] == [True, True, False, False]
    waiters[1].ticket.release()
    await settle()
    assert [w.task.done() for w in [*waiters, newcomer]] == [True, True, True, False]
    waiters[2].ticket.release()
    await settle()
    assert newcomer.task.done()
    newcomer.ticket.release()
    assert admission.load() == Load(running=0, waiting=0, capacity=1, queue_size=3)


async def test_a_waiter_that_gives_up_frees_its_place_at_once() -> None:
    admission = AdmissionController(capacity=1, queue_size=1)
    holder = admission.enter()
    leaving = wait_in_task(admission.enter())
    await settle()
    leaving.task.cancel()
    await settle()
    assert leaving.task.cancelled()
    assert admission.load() == Load(running=1, waiting=0, capacity=1, queue_size=1)
    next_one = wait_in_task(admission.enter())  # the freed place is usable: no 429
    holder.release()
    await asyncio.wait_for(next_one.task, 5)
    next_one.ticket.release()
    assert admission.load().running == 0


async def test_a_queue_wait_timeout_raises_and_gives_the_place_back() -> None:
    admission = AdmissionController(capacity=1, queue_size=1)
    admission.enter()
    ticket = admission.enter()
    with pytest.raises(QueueTimeout) as timed_out:
        await ticket.wait(0.01)
    assert timed_out.value.status == 503 and timed_out.value.retry_after is not None
    assert admission.load().waiting == 0
    ticket.release()  # the gateway releases in `finally` too: still harmless
    assert admission.load() == Load(running=1, waiting=0, capacity=1, queue_size=1)


async def test_releasing_twice_frees_one_slot() -> None:
    admission = AdmissionController(capacity=2, queue_size=0)
    first = admission.enter()
    admission.enter()
    first.release()
    first.release()
    assert admission.load().running == 1
    admission.enter()
    with pytest.raises(Overloaded):
        admission.enter()


async def test_draining_refuses_newcomers_and_waits_for_the_rest() -> None:
    admission = AdmissionController(capacity=1, queue_size=1)
    holder = admission.enter()
    waiter = wait_in_task(admission.enter())
    admission.start_draining()
    with pytest.raises(EngineUnavailable):
        admission.enter()
    idle = asyncio.create_task(admission.wait_idle())
    holder.release()
    await asyncio.wait_for(waiter.task, 5)
    await settle()
    assert not idle.done()  # the queued request was admitted and still runs
    waiter.ticket.release()
    await asyncio.wait_for(idle, 5)


@pytest.mark.parametrize(("capacity", "queue_size"), [(0, 1), (1, -1)])
def test_impossible_limits_are_refused(capacity: int, queue_size: int) -> None:
    with pytest.raises(ValueError):
        AdmissionController(capacity, queue_size)


@pytest.mark.parametrize("seed", range(20))
async def test_counting_is_exact_under_any_arrival_pattern(seed: int) -> None:
    """Random arrivals, finishes and give-ups against a model of the rules."""
    rng = random.Random(seed)
    capacity, queue_size = rng.randint(1, 4), rng.randint(0, 4)
    admission = AdmissionController(capacity, queue_size)
    running: list[Waiter] = []  # in the model: holding a slot
    waiting: list[Waiter] = []  # in the model: queued, oldest first
    for _ in range(300):
        action = rng.random()
        if action < 0.5:
            expect_slot = len(running) < capacity and not waiting
            expect_queue = not expect_slot and len(waiting) < queue_size
            try:
                waiter = wait_in_task(admission.enter())
            except Overloaded:
                assert not expect_slot and not expect_queue
            else:
                assert expect_slot or expect_queue
                (running if expect_slot else waiting).append(waiter)
        elif action < 0.8 and running:
            done = running.pop(rng.randrange(len(running)))
            done.ticket.release()
            if waiting:
                running.append(waiting.pop(0))
        elif waiting:
            gone = waiting.pop(rng.randrange(len(waiting)))
            gone.task.cancel()
        await settle()
        assert admission.load() == Load(len(running), len(waiting), capacity, queue_size)
        assert all(w.task.done() and not w.task.cancelled() for w in running)
        assert not any(w.task.done() for w in waiting)
    for waiter in waiting:
        waiter.task.cancel()
    for waiter in running:
        waiter.ticket.release()
    await settle()
    assert admission.load() == Load(0, 0, capacity, queue_size)
