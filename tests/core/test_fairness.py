"""Fair admission between users: VTC order, weights, displacement, token budget, priority, per-key limits.

The controller alone, with a clock seam: no engine, no sleeps. Requests are
claimed (as the admission middleware does on arrival), confirmed with their
token cost (as the runner does once the prompt is rendered), and released.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from gateway.core.admission import AdmissionController, Load, Ticket
from gateway.core.errors import Displaced, LimitReached, Overloaded, PriorityNotAllowed
from gateway.core.principal import Limits, Principal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def user(name: str, **limits: object) -> Principal:
    return Principal(name, "test", Limits(**limits), quota=f"key-{name}")  # type: ignore[arg-type]


@dataclass
class Bench:
    """An admission controller, and the order in which its waiting requests got their slots."""

    admission: AdmissionController
    clock: Clock = field(default_factory=Clock)
    served: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def send(self, who: Principal, label: str, prompt: int = 10, max_tokens: int = 10, priority: int = 0) -> Ticket:
        """Claim, confirm and wait in a task (as a request does); its label is recorded once it has a slot."""
        ticket = self.admission.claim(who)
        ticket.confirm(prompt, max_tokens, priority)

        async def wait() -> None:
            await ticket.wait(None)
            self.served.append(label)

        self.tasks.append(asyncio.create_task(wait()))
        return ticket


@pytest.fixture
def bench() -> Bench:
    clock = Clock()
    return Bench(AdmissionController(capacity=1, queue_size=16, clock=clock), clock)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def finish_in_order(bench: Bench, tickets: dict[str, Ticket], count: int) -> list[str]:
    """Release whichever request holds the slot, `count` times; the labels in the order they ran."""
    for _ in range(count):
        await settle()
        label = bench.served[-1]
        tickets[label].release(output_tokens=tickets[label].max_tokens)
    await settle()
    return bench.served


async def test_the_least_served_user_goes_next_and_each_user_is_served_in_arrival_order(bench: Bench) -> None:
    heavy, light = user("heavy"), user("light")
    tickets = {"h1": bench.send(heavy, "h1", max_tokens=100)}
    tickets |= {f"h{i}": bench.send(heavy, f"h{i}", max_tokens=100) for i in (2, 3, 4)}
    tickets["l1"] = bench.send(light, "l1")  # arrives last, behind three of heavy's
    tickets["l2"] = bench.send(light, "l2")
    order = await finish_in_order(bench, tickets, 5)
    # Light arrives behind three of heavy's requests and goes next: it is lifted to heavy's
    # counter (210 once h1 started: 10 + 2 x 100) and wins the tie as the user holding fewer
    # places. From there both are counted: l1 (30 tokens) puts light at 240, above heavy's 210.
    assert order == ["h1", "l1", "h2", "l2", "h3", "h4"]


async def test_first_come_first_served_between_equals(bench: Bench) -> None:
    names = [user(f"u{i}") for i in range(4)]
    tickets = {f"u{i}": bench.send(p, f"u{i}") for i, p in enumerate(names)}
    assert await finish_in_order(bench, tickets, 3) == ["u0", "u1", "u2", "u3"]


async def test_idle_time_is_not_banked_as_credit(bench: Bench) -> None:
    """A user back after others were served is lifted to them: it alternates, it does not monopolise."""
    busy, returning = user("busy"), user("returning")
    for i in range(10):  # busy alone: its counter grows while `returning` is away
        ticket = bench.send(busy, f"alone{i}")
        await settle()
        ticket.release(output_tokens=10)
    holder = bench.send(busy, "holder")
    await settle()
    tickets = {"holder": holder}
    for i in range(3):
        tickets[f"r{i}"] = bench.send(returning, f"r{i}")
        tickets[f"b{i}"] = bench.send(busy, f"b{i}")
    order = await finish_in_order(bench, tickets, 6)
    assert order[-6:] == ["r0", "b0", "r1", "b1", "r2", "b2"]


async def test_weights_share_service_in_proportion(bench: Bench) -> None:
    double, single = user("double", weight=2), user("single")
    holder = bench.send(user("holder"), "holder")
    tickets = {"holder": holder}
    for i in range(6):
        tickets[f"d{i}"] = bench.send(double, f"d{i}")
    for i in range(6):
        tickets[f"s{i}"] = bench.send(single, f"s{i}")
    order = await finish_in_order(bench, tickets, 9)
    firsts = order[1:10]
    assert sum(label.startswith("d") for label in firsts) == 6 and sum(label.startswith("s") for label in firsts) == 3


async def test_a_full_queue_displaces_the_heaviest_users_newest_waiting_request() -> None:
    clock = Clock()
    admission = AdmissionController(capacity=1, queue_size=2, clock=clock)
    heavy = user("heavy")
    running = admission.enter(heavy, prompt_tokens=10, max_tokens=10)
    older = admission.enter(heavy, prompt_tokens=10, max_tokens=10)
    newest = admission.enter(heavy, prompt_tokens=10, max_tokens=10)
    waits = [asyncio.create_task(t.wait(None)) for t in (older, newest)]
    await settle()
    with pytest.raises(Overloaded) as own:  # the heaviest user's own arrival is the one refused
        admission.claim(heavy)
    assert own.value.type == "too_many_requests"

    light = admission.claim(user("light"))  # a lighter user's arrival takes heavy's newest place
    await settle()
    with pytest.raises(Displaced) as displaced:
        await waits[1]
    assert displaced.value.status == 429 and displaced.value.type == "displaced"
    assert displaced.value.retry_after is not None and displaced.value.retry_after > 0
    assert not waits[0].done()  # the older request keeps its place
    assert admission.load() == Load(running=1, waiting=2, capacity=1, queue_size=2)

    pending = admission.claim(user("light2"))  # heavy still holds 2 places, light2 would hold 1
    await settle()
    with pytest.raises(Displaced):
        await waits[0]
    with pytest.raises(Overloaded) as equal:  # heavy holds only its running request; the rest hold one each
        admission.claim(user("light3"))
    assert equal.value.type == "too_many_requests"

    for ticket in (running, older, newest, light, pending):
        ticket.release()
    assert admission.load() == Load(running=0, waiting=0, capacity=1, queue_size=2)


async def test_a_claim_displaced_before_its_prompt_is_rendered_is_refused_when_it_confirms() -> None:
    admission = AdmissionController(capacity=1, queue_size=1, clock=Clock())
    heavy = user("heavy")
    admission.enter(heavy)
    rendering = admission.claim(heavy)  # claimed on arrival; its prompt is still being rendered
    admission.claim(user("light"))
    with pytest.raises(Displaced):
        rendering.confirm(10, 10)
    rendering.release()  # what the runner does after any refusal: harmless
    assert admission.load() == Load(running=1, waiting=1, capacity=1, queue_size=1)


async def test_the_token_budget_bounds_prompt_plus_max_tokens_in_flight() -> None:
    admission = AdmissionController(capacity=4, queue_size=8, token_budget=100, clock=Clock())
    first = admission.enter(user("a"), prompt_tokens=10, max_tokens=50)
    second = admission.enter(user("b"), prompt_tokens=10, max_tokens=50)
    small = admission.enter(user("c"), prompt_tokens=10, max_tokens=20)
    assert first.admitted
    assert not second.admitted and not small.admitted  # slots are free, tokens are not
    assert admission.load() == Load(running=1, waiting=2, capacity=4, queue_size=8)
    first.release(output_tokens=50)
    assert second.admitted and small.admitted  # 60 + 30 fit in 100
    huge = admission.enter(user("d"), prompt_tokens=500, max_tokens=500)  # bigger than the whole budget
    assert not huge.admitted
    second.release(output_tokens=50)
    assert not huge.admitted
    small.release(output_tokens=20)
    assert huge.admitted  # it runs alone ...
    late = admission.enter(user("e"), prompt_tokens=1, max_tokens=1)
    assert not late.admitted  # ... and nothing joins it
    huge.release(output_tokens=500)
    assert late.admitted


async def test_priority_orders_a_users_own_requests_where_the_key_allows_it(bench: Bench) -> None:
    batch, other = user("batch", priority=True), user("other")
    tickets = {"holder": bench.send(other, "holder")}
    tickets |= {f"p{p}": bench.send(batch, f"p{p}", priority=p) for p in (5, 0, -1)}
    assert await finish_in_order(bench, tickets, 3) == ["holder", "p-1", "p0", "p5"]
    ticket = bench.admission.claim(other)
    with pytest.raises(PriorityNotAllowed) as refused:
        ticket.confirm(10, 10, priority=1)
    assert refused.value.status == 403 and refused.value.param == "priority"
    ticket.release()


async def test_priority_never_jumps_another_users_requests(bench: Bench) -> None:
    eager, patient = user("eager", priority=True), user("patient")
    tickets = {"holder": bench.send(user("holder"), "holder")}
    tickets["eager1"] = bench.send(eager, "eager1", priority=-100)
    tickets["patient1"] = bench.send(patient, "patient1")
    tickets["eager2"] = bench.send(eager, "eager2", priority=-100)
    # Same counters: the user holding fewer places goes first, whatever eager's priority says.
    assert await finish_in_order(bench, tickets, 3) == ["holder", "patient1", "eager1", "eager2"]


async def test_concurrent_requests_limit_names_itself_and_frees_with_a_release() -> None:
    admission = AdmissionController(capacity=8, queue_size=8, clock=Clock())
    key = user("capped", concurrent_requests=2)
    held = [admission.claim(key), admission.claim(key)]
    with pytest.raises(LimitReached) as refused:
        admission.claim(key)
    error = refused.value
    assert (error.status, error.type, error.limit) == (429, "concurrent_requests_limit", "concurrent_requests")
    assert "concurrent_requests limit (2)" in error.message and error.retry_after is not None
    admission.claim(user("someone-else"))  # another key is not limited by it
    held[0].release()
    admission.claim(key)


async def test_requests_per_minute_refills_with_the_clock() -> None:
    clock = Clock()
    admission = AdmissionController(capacity=8, queue_size=8, clock=clock)
    key = user("metered", requests_per_minute=3)
    for _ in range(3):
        admission.claim(key).release()
    with pytest.raises(LimitReached) as refused:
        admission.claim(key)
    assert refused.value.type == "requests_per_minute_limit"
    assert refused.value.retry_after == pytest.approx(20.0)  # one request every 60/3 s
    clock.now += 19.9
    with pytest.raises(LimitReached):
        admission.claim(key)
    clock.now += 0.1
    admission.claim(key).release()


async def test_tokens_per_minute_counts_prompt_and_max_tokens_and_gives_back_the_unused() -> None:
    clock = Clock()
    admission = AdmissionController(capacity=8, queue_size=8, clock=clock)
    key = user("tokens", tokens_per_minute=1000)
    first = admission.enter(key, prompt_tokens=100, max_tokens=500)
    second = admission.claim(key)
    with pytest.raises(LimitReached) as refused:
        second.confirm(100, 500)  # 600 asked, 400 left
    assert refused.value.type == "tokens_per_minute_limit" and "tokens_per_minute limit (1000)" in refused.value.message
    assert refused.value.retry_after == pytest.approx(200 * 60 / 1000)
    second.release()
    first.release(output_tokens=100)  # 400 of max_tokens unused: given back, 800 left
    admission.enter(key, prompt_tokens=100, max_tokens=500).release(output_tokens=500)
    with pytest.raises(LimitReached):  # 200 left: the key is not in debt, but 600 do not fit
        admission.enter(key, prompt_tokens=100, max_tokens=500)
    clock.now += 24.0  # 400 more
    admission.enter(key, prompt_tokens=100, max_tokens=500)


@pytest.mark.parametrize("seed", range(20))
async def test_every_place_is_given_back_exactly_once_under_any_mix(seed: int) -> None:
    """Random claims, confirms, waits, give-ups, displacements, refusals and releases across keyed users."""
    rng = random.Random(seed)
    capacity, queue_size = rng.randint(1, 3), rng.randint(0, 4)
    budget = rng.choice([None, 40, 100])
    admission = AdmissionController(capacity, queue_size, token_budget=budget, clock=Clock())
    principals = [
        user("a"),
        user("b", weight=2),
        user("c", concurrent_requests=2),
        user("d", tokens_per_minute=200, priority=True),
    ]
    live: list[tuple[Ticket, asyncio.Task[None] | None]] = []
    for _ in range(300):
        action = rng.random()
        if action < 0.45:
            try:
                ticket = admission.claim(rng.choice(principals))
            except Overloaded:
                pass
            else:
                live.append((ticket, None))
        elif live:
            i = rng.randrange(len(live))
            ticket, task = live[i]
            if ticket.state == "pending" and action < 0.75:
                try:
                    ticket.confirm(rng.randint(1, 30), rng.randint(1, 30), rng.choice([0, 0, 1]))
                except (Overloaded, PriorityNotAllowed):
                    ticket.release()
                    live.pop(i)
                else:
                    live[i] = (ticket, asyncio.create_task(ticket.wait(None)))
            elif task is not None and not task.done() and action < 0.8:
                task.cancel()
                live.pop(i)
            else:
                ticket.release(output_tokens=rng.randint(0, ticket.max_tokens))
                ticket.release()  # a second release changes nothing
                live.pop(i)
        await settle()
        load = admission.load()
        assert load.running <= capacity
        assert load.running + load.waiting <= capacity + queue_size
        held = [t for t, _ in live if not t.released]
        assert load.running + load.waiting == len(held)
        assert load.running == sum(t.state == "running" for t in held)
        if budget is not None and load.running > 1:
            assert sum(t.cost for t in held if t.state == "running") <= budget
    for ticket, task in live:
        if task is not None:
            task.cancel()
        ticket.release()
    await settle()
    assert admission.load() == Load(0, 0, capacity, queue_size)
    assert admission.fairness()["users"] == []  # nobody holds a place
    # Every key's concurrency is whole again.
    admission.claim(principals[2]).release()
    admission.claim(principals[2]).release()
