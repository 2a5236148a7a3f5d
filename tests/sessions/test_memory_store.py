"""MemoryStore: bounded by an idle timeout, a count and bytes; the per-session lock; value encoding."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.core.errors import SessionTooLarge
from gateway.sessions.codec import decode_value, encode_value
from gateway.sessions.stores import MemoryStore
from prompts import ChatPrompt


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_saved_data_loads_back_as_a_copy() -> None:
    store = MemoryStore()
    assert await store.load("nobody") is None
    await store.save("s1", {"a": 1, "b": [1, 2]}, ())
    data = await store.load("s1")
    assert data == {"a": 1, "b": [1, 2]}
    assert data is not None
    data["a"] = 99
    assert (await store.load("s1")) == {"a": 1, "b": [1, 2]}


async def test_save_updates_changed_keys_and_drops_removed_ones() -> None:
    store = MemoryStore()
    await store.save("s1", {"a": 1, "b": 2}, ())
    await store.save("s1", {"b": 3, "c": 4}, ["a", "never-there"])
    assert await store.load("s1") == {"b": 3, "c": 4}
    await store.delete("s1")
    assert await store.load("s1") is None
    await store.delete("s1")  # harmless twice


async def test_an_idle_session_expires_and_use_keeps_it_alive(clock: Clock) -> None:
    store = MemoryStore(idle_timeout=60, clock=clock)
    await store.save("s1", {"a": 1}, ())
    for _ in range(5):  # used every 59 s: lives on well past one timeout
        clock.now += 59
        assert await store.load("s1") == {"a": 1}
    clock.now += 61
    assert await store.load("s1") is None
    assert len(store) == 0


async def test_idle_sessions_are_dropped_even_if_nobody_loads_them(clock: Clock) -> None:
    store = MemoryStore(idle_timeout=60, clock=clock)
    for i in range(10):
        await store.save(f"old{i}", {"i": i}, ())
    clock.now += 61
    await store.save("new", {"x": 1}, ())
    assert len(store) == 1


async def test_max_sessions_drops_the_least_recently_used(clock: Clock) -> None:
    store = MemoryStore(max_sessions=3, clock=clock)
    for sid in ("a", "b", "c"):
        await store.save(sid, {"id": sid}, ())
        clock.now += 1
    assert await store.load("a") is not None  # "a" is now the most recently used
    await store.save("d", {"id": "d"}, ())
    assert len(store) == 3
    assert await store.load("b") is None
    assert [await store.load(s) for s in ("a", "c", "d")] == [{"id": "a"}, {"id": "c"}, {"id": "d"}]


async def test_the_count_stays_bounded_under_many_new_sessions() -> None:
    store = MemoryStore(max_sessions=50)
    for i in range(1000):
        await store.save(f"s{i}", {"i": i}, ())
    assert len(store) == 50
    assert await store.load("s999") == {"i": 999}
    assert await store.load("s0") is None


async def test_the_session_lock_has_one_owner_at_a_time() -> None:
    store = MemoryStore()
    assert await store.try_lock("s1", "first")
    assert not await store.try_lock("s1", "second")
    assert await store.try_lock("s2", "second")  # other sessions are independent
    await store.unlock("s1", "second")  # not the owner: no effect
    assert not await store.try_lock("s1", "third")
    await store.unlock("s1", "first")
    assert await store.try_lock("s1", "third")


async def test_a_session_over_max_session_bytes_is_refused_and_the_stored_one_kept() -> None:
    store = MemoryStore(max_session_bytes=100)
    await store.save("s1", {"a": "x" * 50}, ())
    with pytest.raises(SessionTooLarge):
        await store.save("s1", {"b": "y" * 60}, ())
    assert await store.load("s1") == {"a": "x" * 50}
    with pytest.raises(SessionTooLarge):
        await store.save("s2", {"a": "z" * 200}, ())
    assert await store.load("s2") is None and len(store) == 1


async def test_max_bytes_drops_the_least_recently_used(clock: Clock) -> None:
    # Regression (issue 13): the store was bounded by count only, and a session could hold megabytes.
    store = MemoryStore(max_session_bytes=1000, max_bytes=2500, clock=clock)
    for sid in ("a", "b", "c"):
        await store.save(sid, {"text": sid * 900}, ())
        clock.now += 1
    assert store.stored_bytes <= 2500
    assert await store.load("a") is None
    assert await store.load("c") == {"text": "c" * 900}
    await store.save("b", {"text": "b"}, ())  # shrinking gives the bytes back
    await store.save("d", {"text": "d" * 900}, ())
    assert len(store) == 3 and store.stored_bytes <= 2500


async def test_data_this_version_cannot_read_loads_as_no_session() -> None:
    # Regression (issue 13): undecodable session data failed every request of that session.
    store = MemoryStore()
    written_elsewhere = ChatPrompt()
    written_elsewhere.messages.append({"role": "tool", "content": "a role this version does not know"})
    await store.save("s1", {"chat_prompt": written_elsewhere, "params": {"temperature": 0.5}}, ())
    assert await store.load("s1") is None
    assert len(store) == 0


async def test_a_lock_left_behind_by_a_finished_request_lapses_after_lock_timeout(clock: Clock) -> None:
    # Regression (issue 13): a lock that was never released kept its session at 409 for good.
    store = MemoryStore(lock_timeout=30, clock=clock)

    async def request_that_forgets_to_unlock() -> None:
        assert await store.try_lock("s1", "leaky")

    await asyncio.create_task(request_that_forgets_to_unlock())
    await asyncio.sleep(0)  # one turn of the loop: the task's done-callbacks run (no time passes)
    assert not await store.try_lock("s1", "next")
    clock.now += 29
    assert not await store.try_lock("s1", "next")
    clock.now += 2
    assert store.locks_held == 0
    assert await store.try_lock("s1", "next")


async def test_a_lock_held_by_a_running_request_never_lapses(clock: Clock) -> None:
    store = MemoryStore(lock_timeout=30, clock=clock)
    assert await store.try_lock("s1", "long-generation")  # this test's own task holds it
    clock.now += 3600
    assert not await store.try_lock("s1", "other")
    await store.unlock("s1", "long-generation")
    assert await store.try_lock("s1", "other")


@pytest.mark.parametrize(("idle_timeout", "max_sessions"), [(0, 10), (-1, 10), (60, 0)])
def test_unbounded_settings_are_refused(idle_timeout: float, max_sessions: int) -> None:
    with pytest.raises(ValueError):
        MemoryStore(idle_timeout=idle_timeout, max_sessions=max_sessions)


class TaggedPrompt(ChatPrompt):
    """A user's own ChatPrompt subclass (chat_prompt_clazz)."""


def test_a_chat_prompt_round_trips_through_the_encoding_with_its_class() -> None:
    prompt = TaggedPrompt(system="S", format="vicuna")
    prompt.add_user("hi")
    prompt.add_assistant("hello")
    restored = decode_value(encode_value(prompt))
    assert type(restored) is TaggedPrompt
    assert restored.to_dict() == prompt.to_dict()
    assert decode_value(encode_value({"temperature": 0.5})) == {"temperature": 0.5}


@pytest.mark.parametrize("stored_class", ["os:system", "builtins:dict", "no.such.module:Thing", "garbage"])
def test_stored_data_never_chooses_what_code_runs(stored_class: str) -> None:
    raw = json.dumps({"__chat_prompt__": stored_class, "data": {"system": None, "format": "chatml", "messages": []}})
    restored = decode_value(raw)
    assert type(restored) is ChatPrompt
