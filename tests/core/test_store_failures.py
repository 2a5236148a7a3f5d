"""A store's outage is logged a line per kind every so often, with a count, not a line per failed call."""

from __future__ import annotations

import logging

import pytest

from gateway.core.errors import FailureLog, SessionStoreUnavailable, store_call


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.core.errors"]


def test_an_outage_is_one_line_per_store_and_kind_each_interval_with_the_count_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    clock = Clock()
    log = FailureLog(every=10.0, clock=clock)
    for _ in range(5):  # one outage under load: many calls fail at once
        log.failed("session store", "ConnectionError")
        clock.now += 1
    log.failed("session store", "TimeoutError")  # another kind has its own line
    log.failed("response store", "ConnectionError")  # so has another store
    assert lines(caplog) == [
        "the session store failed: ConnectionError",
        "the session store failed: TimeoutError",
        "the response store failed: ConnectionError",
    ]
    caplog.clear()
    clock.now += 5.0  # 10 s after the first line
    log.failed("session store", "ConnectionError")
    log.failed("session store", "ConnectionError")
    assert lines(caplog) == ["the session store failed: ConnectionError (4 more since the last line)"]
    caplog.clear()
    clock.now += 10.0
    log.failed("session store", "ConnectionError")
    assert lines(caplog) == ["the session store failed: ConnectionError (1 more since the last line)"]


async def test_a_failed_store_call_is_a_503_and_is_logged_by_kind_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def away() -> None:
        raise ConnectionError("redis://user:secret@db:6379 refused")

    with pytest.raises(SessionStoreUnavailable) as raised:
        await store_call(away(), "test-only store")
    assert raised.value.status == 503 and raised.value.retry_after == 5
    assert lines(caplog) == ["the test-only store failed: ConnectionError"]  # no address, no secret
