"""Load shapes: fixed concurrency, Poisson arrivals, multi-turn conversations.

Each returns the client's records and the wall time of the run (from the
first request sent to the last response ended). Single-turn requests are new
visitors (a fresh conversation and, on `/chat_stream`, a fresh session), so a
sweep measures the same work at every concurrency.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.client.targets import Target, User
from benchmarks.records import RequestRecord

Progress = Callable[[int], None]

_WORDS = (
    "stream",
    "token",
    "gateway",
    "answer",
    "session",
    "prompt",
    "engine",
    "latency",
    "queue",
    "cache",
    "model",
    "history",
    "turn",
    "question",
    "reply",
    "server",
    "client",
    "batch",
    "slot",
    "cookie",
    "context",
)


def make_prompt(index: int, words: int = 24, seed: int = 0) -> str:
    """A deterministic user message of about `words` words (the same text for every target)."""
    rng = random.Random(seed * 1_000_003 + index)
    return f"Request {index}: " + " ".join(rng.choice(_WORDS) for _ in range(words))


@dataclass(frozen=True, slots=True)
class LoadResult:
    records: list[RequestRecord]
    duration: float


def _duration(records: list[RequestRecord]) -> float:
    if not records:
        return 0.0
    return max(r.ended for r in records) - min(r.started for r in records)


async def fixed_concurrency(
    target: Target,
    concurrency: int,
    num_requests: int,
    max_tokens: int,
    progress: Progress | None = None,
    prompt_words: int = 24,
) -> LoadResult:
    """`concurrency` users each send a request as soon as their previous one ended (closed loop)."""
    records: list[RequestRecord] = []
    counter = iter(range(num_requests))

    async def user_loop(user: User) -> None:
        for i in counter:
            user.new_conversation()
            records.append(await target.chat(user, make_prompt(i, prompt_words), max_tokens))
            if progress:
                progress(1)

    users = [target.new_user() for _ in range(min(concurrency, num_requests))]
    await asyncio.gather(*(user_loop(u) for u in users))
    return LoadResult(records, _duration(records))


async def poisson(
    target: Target,
    rate: float,
    num_requests: int,
    max_tokens: int,
    progress: Progress | None = None,
    max_concurrency: int | None = None,
    seed: int = 0,
) -> LoadResult:
    """Open loop: requests arrive at exponential gaps averaging 1/rate s, whatever the server's speed.

    As in vLLM, `max_concurrency` optionally caps requests in flight (arrivals
    then wait for a free place).
    """
    rng = random.Random(seed)
    records: list[RequestRecord] = []
    idle: list[User] = []
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def one(i: int) -> None:
        user = idle.pop() if idle else target.new_user()
        user.new_conversation()
        try:
            records.append(await target.chat(user, make_prompt(i), max_tokens))
        finally:
            idle.append(user)
            if gate:
                gate.release()
        if progress:
            progress(1)

    tasks = []
    next_at = time.perf_counter()
    for i in range(num_requests):
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if gate:
            await gate.acquire()
        tasks.append(asyncio.create_task(one(i)))
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    return LoadResult(records, _duration(records))


async def multi_turn(
    target: Target,
    conversations: int,
    turns: int,
    concurrency: int,
    max_tokens: int,
    progress: Progress | None = None,
    *,
    seed: int = 0,
    patience: float = 0.0,
) -> LoadResult:
    """`concurrency` users each hold conversations of `turns` turns; the history grows every turn.

    Records carry their conversation (0-based) and turn (1-based) numbers;
    `seed` varies the messages between runs. A turn that fails (refused, cut
    off, busy) is sent again for up to `patience` seconds, after its
    Retry-After or else a second, as a user would; every attempt is recorded.
    A turn that still fails ends its conversation (a real user would start over).
    """
    records: list[RequestRecord] = []
    counter = iter(range(conversations))

    async def user_loop(user: User) -> None:
        for c in counter:
            user.new_conversation()
            for turn in range(1, turns + 1):
                text = make_prompt(c * 1000 + turn, words=12, seed=seed)
                give_up = time.perf_counter() + patience
                while True:
                    record = await target.chat(user, text, max_tokens)
                    record.turn, record.conversation = turn, c
                    records.append(record)
                    if record.ok or time.perf_counter() >= give_up:
                        break
                    await asyncio.sleep(record.retry_after or 1.0)
                if progress:
                    progress(1)
                if not record.ok:
                    break

    users = [target.new_user() for _ in range(min(concurrency, conversations))]
    await asyncio.gather(*(user_loop(u) for u in users))
    return LoadResult(records, _duration(records))
