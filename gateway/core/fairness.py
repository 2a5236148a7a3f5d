"""Fair queueing between users: the Virtual Token Counter (Sheng et al., OSDI 2024).

Each user has a counter of the service it received, in tokens: a prompt token
counts `PROMPT_WEIGHT`, an output token `OUTPUT_WEIGHT` (VTC's weights: output
tokens cost more to make), both divided by the user's weight. When a slot
frees, the backlogged user (one with a request waiting) with the smallest
counter is served next; within one user, requests go by vLLM's `priority`
(lower first) and then first come, first served.

Two rules from VTC keep it fair over time:
- a user who becomes backlogged has its counter lifted to the smallest counter
  of the users already waiting (or, when nobody waits, to that of the last user
  served), so time spent idle is not banked as credit;
- a request is charged when it starts, with its prompt and its whole
  `max_tokens` (VTC's variant with a predicted length), and the output it did
  not generate is given back when it ends: a user whose answers are long cannot
  win several slots in a row before its tokens are counted.

VTC bounds the difference in service between two backlogged users by about
one request's worth of tokens (twice the largest request in the paper).

This module holds the counters and the waiting requests; the admission
controller decides when a slot is free.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

PROMPT_WEIGHT = 1.0
OUTPUT_WEIGHT = 2.0
# Users who hold nothing but are owed less than the floor are forgotten at once
# (the lift would restore them); these many others are remembered, oldest forgotten first.
MAX_IDLE_USERS = 10_000


class FairUser(Generic[T]):
    """One user's counter, its waiting requests, and the places it holds."""

    __slots__ = ("counter", "name", "places", "running", "served", "user_class", "waiting", "weight", "yielding")

    def __init__(self, name: str, user_class: str, weight: float) -> None:
        self.name = name
        self.user_class = user_class
        self.weight = weight
        self.counter = 0.0
        self.places = 0  # requests of this user let in and not yet ended: pending, waiting or running
        self.running = 0
        self.waiting: list[tuple[int, int, T]] = []  # a heap of (priority, arrival, request)
        # Requests that may give their place to a lighter user's: not yet running, in arrival order.
        self.yielding: dict[int, T] = {}
        self.served = [0, 0]  # prompt and output tokens received

    @property
    def load(self) -> float:
        """Places held per unit of weight: who holds the largest share of the queue."""
        return self.places / self.weight


class FairQueue(Generic[T]):
    """The users and their waiting requests, ordered by the users' counters."""

    def __init__(self) -> None:
        self._users: dict[str, FairUser[T]] = {}
        self._idle: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._backlogged: set[FairUser[T]] = set()
        self._last_served: FairUser[T] | None = None
        self.waiting = 0

    def get(self, name: str) -> FairUser[T] | None:
        return self._users.get(name)

    def join(self, name: str, user_class: str, weight: float, seq: int, request: T) -> FairUser[T]:
        """`request` takes a place for user `name` (created if new)."""
        user = self._users.get(name)
        if user is None:
            user = self._users[name] = FairUser(name, user_class, weight)
        self._idle.pop(name, None)
        user.places += 1
        user.yielding[seq] = request
        return user

    def leave(self, user: FairUser[T], seq: int) -> None:
        """A request of `user` gives its place back (it ended, or moved to another user)."""
        user.places -= 1
        user.yielding.pop(seq, None)
        if user.places:
            return
        if user.counter <= self.floor():
            del self._users[user.name]  # the lift would give it this much anyway
            return
        self._idle[user.name] = None
        if len(self._idle) > MAX_IDLE_USERS:
            name, _ = self._idle.popitem(last=False)
            del self._users[name]

    def push(self, user: FairUser[T], priority: int, seq: int, request: T) -> None:
        """`request` waits for a slot. A user who was not backlogged has its counter lifted (no banked credit)."""
        if not user.waiting:
            user.counter = max(user.counter, self.floor())
            self._backlogged.add(user)
        heapq.heappush(user.waiting, (priority, seq, request))
        self.waiting += 1

    def floor(self) -> float:
        """VTC's lift: the smallest counter among the backlogged users, else the last served user's."""
        if self._backlogged:
            return min(u.counter for u in self._backlogged)
        return self._last_served.counter if self._last_served is not None else 0.0

    def head(self) -> tuple[FairUser[T], T] | None:
        """The request to serve next: the least-served backlogged user's first.

        Ties (a newcomer is lifted to exactly the smallest counter) go to the user
        holding fewer places per weight, then to the earlier arrival.
        """
        if not self._backlogged:
            return None
        user = min(self._backlogged, key=lambda u: (u.counter, u.load, u.waiting[0][1]))
        return user, user.waiting[0][2]

    def pop(self, user: FairUser[T], prompt_tokens: int, max_tokens: int) -> T:
        """Start `user`'s first waiting request, charging its prompt and its `max_tokens`."""
        _, seq, request = heapq.heappop(user.waiting)
        self.waiting -= 1
        user.yielding.pop(seq, None)
        if not user.waiting:
            self._backlogged.discard(user)
        user.counter += (PROMPT_WEIGHT * prompt_tokens + OUTPUT_WEIGHT * max_tokens) / user.weight
        user.served[0] += prompt_tokens
        user.running += 1
        self._last_served = user
        return request

    def remove(self, user: FairUser[T], seq: int) -> None:
        """A waiting request leaves the queue without being served (gave up, timed out, displaced)."""
        user.waiting = [entry for entry in user.waiting if entry[1] != seq]
        heapq.heapify(user.waiting)
        self.waiting -= 1
        if not user.waiting:
            self._backlogged.discard(user)

    def finish(self, user: FairUser[T], max_tokens: int, output_tokens: int) -> None:
        """A started request ended after `output_tokens`: give back the output it did not generate."""
        unused = max(0, max_tokens - output_tokens)
        user.counter -= OUTPUT_WEIGHT * unused / user.weight
        user.served[1] += output_tokens
        user.running -= 1

    def heaviest(self) -> FairUser[T] | None:
        """The user holding the largest share of places that has a request not yet running."""
        candidates = [u for u in self._users.values() if u.yielding]
        return max(candidates, key=lambda u: (u.load, u.counter), default=None)

    def __iter__(self) -> Iterator[FairUser[T]]:
        return iter(self._users.values())

    def snapshot(self) -> dict[str, Any]:
        """The users holding places, least served first, with counters relative to the floor (0 = next in line);
        and how many idle users are remembered (their counters still above the floor)."""
        floor = self.floor()
        users = sorted((u for u in self._users.values() if u.places), key=lambda u: u.counter)
        active = [
            {
                "user": u.name,
                "class": u.user_class,
                "weight": u.weight,
                "counter": round(u.counter - floor, 1),
                "places": u.places,
                "running": u.running,
                "waiting": len(u.waiting),
                "service_tokens": {"prompt": u.served[0], "output": u.served[1]},
            }
            for u in users
        ]
        return {"users": active, "idle_users_remembered": len(self._idle)}
