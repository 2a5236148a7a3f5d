"""AdmissionController: how many generations run at once, who waits, and who is served next.

There are `capacity` slots and `queue_size` more places. A request claims a
place on arrival (`claim`), synchronously and before any work, or is refused
at once: 503 while draining, 429 when one of its key's limits is reached or
when every place is taken. It confirms the claim once its prompt is rendered
(`Ticket.confirm`, with its token cost), waits for a slot (`Ticket.wait`) and
gives everything back exactly once (`Ticket.release`), however it ends.

Fairness (gateway/core/fairness.py): waiting requests are served by the
users' Virtual Token Counters, least served first, first come first served
within a user; a user that holds the largest share of a full queue gives way:
a lighter user's arrival takes the newest not-yet-running place of the
heaviest user, which is refused with 429 (`Displaced`). With
`token_budget`, the prompt plus `max_tokens` of the running generations may
not exceed it either (a request bigger than the whole budget runs alone).

Every decision is synchronous, so counting is exact under any arrival pattern.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from gateway.core.errors import Displaced, EngineUnavailable, Overloaded, PriorityNotAllowed, QueueTimeout
from gateway.core.fairness import OUTPUT_WEIGHT, PROMPT_WEIGHT, FairQueue, FairUser
from gateway.core.principal import ANONYMOUS, Principal
from gateway.core.quotas import Quota, Quotas

# Where a claim travels from the admission middleware to the runner: `scope["state"][CLAIM_STATE]`.
CLAIM_STATE = "admission_claim"

State = Literal["pending", "waiting", "running", "done"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Load:
    running: int
    waiting: int  # holding a place but not a slot (including requests whose prompt is not rendered yet)
    capacity: int
    queue_size: int


class Ticket:
    """One request's claim: pending (claimed), waiting, running, or done."""

    __slots__ = (
        "_controller",
        "_future",
        "_refusal",
        "_user",
        "admitted_at",
        "claimed_at",
        "cost",
        "max_tokens",
        "principal",
        "prompt_tokens",
        "queued_at",
        "quota",
        "released",
        "seq",
        "state",
    )

    _user: FairUser[Ticket]  # set by the controller as the ticket joins its user

    def __init__(
        self, controller: AdmissionController, principal: Principal, quota: Quota | None, seq: int, now: float
    ) -> None:
        self._controller = controller
        self._future: asyncio.Future[None] | None = None
        self._refusal: Overloaded | None = None
        self.principal = principal
        self.quota = quota
        self.seq = seq
        self.state: State = "pending"
        self.claimed_at = self.queued_at = now
        self.admitted_at: float | None = None
        self.prompt_tokens = self.max_tokens = self.cost = 0
        self.released = False

    @property
    def admitted(self) -> bool:
        return self.admitted_at is not None

    @property
    def user(self) -> str:
        """The fair-share user this request is counted for."""
        return self._user.name

    @property
    def queue_seconds(self) -> float:
        """From confirmation (the prompt ready) to a slot; so far, if still waiting."""
        return (self.admitted_at or self._controller.clock()) - self.queued_at

    def confirm(self, prompt_tokens: int = 0, max_tokens: int = 0, priority: int = 0, user: str | None = None) -> None:
        """The prompt is ready: join the queue with its token cost (and start at once if a slot is free).

        Raises the refusal if the place was given to a lighter user meanwhile,
        PriorityNotAllowed if `priority` is set but the key may not, or
        LimitReached if the key's tokens per minute cannot cover the request.
        The ticket stays claimed on a refusal: release it.
        """
        if self._refusal is not None:
            raise self._refusal
        if self.state != "pending":
            raise RuntimeError("a ticket is confirmed once")
        if priority and not self.principal.limits.priority:
            raise PriorityNotAllowed("this API key may not set priority", param="priority")
        self._controller._confirm(self, prompt_tokens, max_tokens, priority, user)

    async def aconfirm(
        self, prompt_tokens: int = 0, max_tokens: int = 0, priority: int = 0, user: str | None = None
    ) -> None:
        """`confirm`, as the `Claim` protocol spells it (gateway/core/claims.py)."""
        self.confirm(prompt_tokens, max_tokens, priority, user)

    async def wait(self, timeout: float | None) -> None:
        """Wait for a slot. QueueTimeout after `timeout` s; cancelling gives the place up at once."""
        if self.state == "running":
            return
        if self.state == "waiting":
            future = self._future = asyncio.get_running_loop().create_future()
            await wait_for_slot(future, timeout, self.release)
        if self._refusal is not None:
            raise self._refusal
        if not self.admitted:
            raise RuntimeError("only a confirmed ticket can wait for a slot")

    def release(self, output_tokens: int = 0) -> None:
        """Give back the slot or the place; `output_tokens` generated, if it ran. Safe to call more than once."""
        if self.released:
            return
        self.released = True
        self._controller._release(self, output_tokens)


async def wait_for_slot(slot: asyncio.Future[T], timeout: float | None, release: Callable[[], object]) -> T:
    """`slot`'s result, within `timeout` s; a timeout (QueueTimeout) or a cancellation calls `release` first."""
    try:
        return await asyncio.wait_for(asyncio.shield(slot), timeout)
    except TimeoutError:
        release()
        raise QueueTimeout(f"no generation slot became free within {timeout or 0:g} s", retry_after=timeout) from None
    except BaseException:
        release()
        raise


class AdmissionController:
    """Caps generations in flight at `capacity`, with `queue_size` more places, shared fairly between users.

    `clock` is the time seam (monotonic seconds) for the rate limits, the
    queue-time figures and the refusals' Retry-After.
    """

    def __init__(
        self,
        capacity: int,
        queue_size: int,
        *,
        token_budget: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if queue_size < 0:
            raise ValueError("queue_size cannot be negative")
        if token_budget is not None and token_budget < 1:
            raise ValueError("token_budget must be at least 1")
        self.capacity = capacity
        self.queue_size = queue_size
        self.token_budget = token_budget
        self.clock = clock
        self._fair: FairQueue[Ticket] = FairQueue()
        self._quotas = Quotas()
        self._seq = itertools.count()
        self._pending = 0
        self._running = 0
        self._tokens_in_flight = 0
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        # Mean time a slot is held, to tell refused clients when to come back.
        self._mean_hold = 1.0

    @property
    def _held(self) -> int:
        return self._pending + self._fair.waiting + self._running

    def load(self) -> Load:
        return Load(self._running, self._pending + self._fair.waiting, self.capacity, self.queue_size)

    @property
    def draining(self) -> bool:
        return self._draining

    def holds_place(self, user: str) -> bool:
        """Whether `user` has a request let in and not yet ended."""
        state = self._fair.get(user)
        return state is not None and state.places > 0

    def claim(self, principal: Principal = ANONYMOUS) -> Ticket:
        """Claim a place for `principal` now, or raise Overloaded (LimitReached, Displaced) / EngineUnavailable."""
        if self._draining:
            raise EngineUnavailable("the gateway is shutting down", retry_after=5)
        now = self.clock()
        quota = self._quotas.of(principal.quota, principal.limits, now)
        if quota is not None:
            quota.check_request(now, self._mean_hold)
        if self._held >= self.capacity + self.queue_size:
            self._make_room(principal)
        if quota is not None:
            quota.take_request()
        ticket = Ticket(self, principal, quota, next(self._seq), now)
        self._join(ticket, principal.user)
        self._pending += 1
        self._idle.clear()
        return ticket

    # The `Admission` protocol (gateway/core/claims.py): in one process, answered in place.

    async def aclaim(self, principal: Principal = ANONYMOUS) -> Ticket:
        return self.claim(principal)

    async def aholds_place(self, user: str) -> bool:
        return self.holds_place(user)

    async def aload(self) -> Load:
        return self.load()

    async def afairness(self) -> dict[str, Any]:
        return self.fairness()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def enter(
        self, principal: Principal = ANONYMOUS, *, prompt_tokens: int = 0, max_tokens: int = 0, priority: int = 0
    ) -> Ticket:
        """Claim and confirm at once: a slot now, or a place in the queue (then `wait` for the slot)."""
        ticket = self.claim(principal)
        try:
            ticket.confirm(prompt_tokens, max_tokens, priority)
        except BaseException:
            ticket.release()
            raise
        return ticket

    def _make_room(self, principal: Principal) -> None:
        """Every place is taken: displace the heaviest user's newest waiting request, if it is heavier."""
        heaviest = self._fair.heaviest()
        mine = self._fair.get(principal.user)
        my_load = ((mine.places if mine else 0) + 1) / principal.limits.weight
        if heaviest is None or heaviest.load <= my_load:
            raise Overloaded("the server is busy; try again shortly", retry_after=self._retry_after())
        victim = heaviest.yielding[next(reversed(heaviest.yielding))]
        victim._refusal = Displaced(
            "the queue is full and this user's requests held the largest share of it; "
            "a lighter user's request took this place",
            retry_after=self._retry_after(),
        )
        self._end(victim, 0)
        victim.released = True
        if victim._future is not None and not victim._future.done():
            victim._future.set_result(None)  # the waiter wakes to its refusal

    def _retry_after(self) -> float:
        return self._mean_hold * (self._held - self.capacity + 1) / self.capacity

    def _confirm(self, ticket: Ticket, prompt_tokens: int, max_tokens: int, priority: int, user: str | None) -> None:
        now = self.clock()
        if ticket.quota is not None:
            ticket.quota.take_tokens(prompt_tokens + max_tokens, now)
        principal = ticket.principal
        if user and principal.limits.split_by_user_field:
            self._fair.leave(ticket._user, ticket.seq)
            self._join(ticket, f"{principal.user}/{user}")
        ticket.prompt_tokens, ticket.max_tokens = prompt_tokens, max_tokens
        cost = prompt_tokens + max_tokens
        ticket.cost = cost if self.token_budget is None else min(cost, self.token_budget)
        ticket.queued_at = now
        ticket.state = "waiting"
        self._pending -= 1
        self._fair.push(ticket._user, priority, ticket.seq, ticket)
        self._dispatch()

    def _join(self, ticket: Ticket, name: str) -> None:
        limits = ticket.principal.limits
        ticket._user = self._fair.join(name, ticket.principal.user_class, limits.weight, ticket.seq, ticket)

    def _dispatch(self) -> None:
        """Start waiting requests while a slot (and the token budget) allows, least-served user first."""
        budget = self.token_budget
        while self._running < self.capacity:
            head = self._fair.head()
            if head is None:
                return
            user, ticket = head
            if budget is not None and self._running and self._tokens_in_flight + ticket.cost > budget:
                return  # the fair choice waits for room; nobody behind it jumps ahead
            self._fair.pop(user, ticket.prompt_tokens, ticket.max_tokens)
            ticket.state = "running"
            ticket.admitted_at = self.clock()
            self._running += 1
            self._tokens_in_flight += ticket.cost
            if ticket._future is not None and not ticket._future.done():
                ticket._future.set_result(None)

    def _release(self, ticket: Ticket, output_tokens: int) -> None:
        if ticket.state == "running" and ticket.admitted_at is not None:
            held = self.clock() - ticket.admitted_at
            self._mean_hold += 0.1 * (held - self._mean_hold)
        self._end(ticket, output_tokens)
        self._dispatch()
        if not self._held:
            self._idle.set()

    def _end(self, ticket: Ticket, output_tokens: int) -> None:
        """Take `ticket` out of every count, whatever its state."""
        state, ticket.state = ticket.state, "done"
        quota, user = ticket.quota, ticket._user
        if state == "pending":
            self._pending -= 1
        elif state == "waiting":
            self._fair.remove(user, ticket.seq)
            if quota is not None:
                quota.give_back_tokens(ticket.prompt_tokens + ticket.max_tokens)
        elif state == "running":
            self._running -= 1
            self._tokens_in_flight -= ticket.cost
            self._fair.finish(user, ticket.max_tokens, output_tokens)
            if quota is not None:
                quota.give_back_tokens(ticket.max_tokens - output_tokens)
        else:
            return
        self._fair.leave(user, ticket.seq)
        if quota is not None:
            quota.end_request()

    def start_draining(self) -> None:
        """Refuse new requests from now on; those admitted or queued carry on."""
        self._draining = True

    async def wait_idle(self) -> None:
        """Return once nothing runs or waits."""
        await self._idle.wait()

    def fairness(self) -> dict[str, Any]:
        """The fair-share state, for operators (`GET /admin/fairness`): who holds what, who is served next."""
        return {
            "capacity": self.capacity,
            "queue_size": self.queue_size,
            "token_budget": self.token_budget,
            "running": self._running,
            "waiting": self._pending + self._fair.waiting,
            "tokens_in_flight": self._tokens_in_flight,
            "draining": self._draining,
            "token_weights": {"prompt": PROMPT_WEIGHT, "output": OUTPUT_WEIGHT},
            **self._fair.snapshot(),
        }
