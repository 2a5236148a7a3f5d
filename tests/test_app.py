"""create_app: a configuration it cannot serve is an error when the app is made or started, never a 500 per request."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Settings, create_app
from tests.fakes import FakeEngine
from tests.live import free_port


def test_a_middleware_that_refuses_its_settings_fails_create_app(tmp_path: Path) -> None:
    # Regression (issue 13): Starlette builds its middleware on the first request, so a short
    # session secret (read from its file) was found then, and every request answered 500.
    secret_file = tmp_path / "session-secret"
    secret_file.write_text("short\n")
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_app(Settings(session_secret_file=secret_file), engine=FakeEngine())


async def test_a_session_store_that_cannot_be_reached_fails_the_start() -> None:
    app = create_app(Settings(session_store=f"redis://127.0.0.1:{free_port()}/0"), engine=FakeEngine())
    with pytest.raises(RuntimeError, match="the session store cannot be reached"):
        async with app.router.lifespan_context(app):
            pass
    assert not app.state.core.engine.is_healthy()  # checked before the engine was started


@pytest.mark.parametrize("url", ["memory", "redis://127.0.0.1:1/0"])
def test_the_session_store_takes_the_lock_timeout_from_the_settings(url: str) -> None:
    # A dead replica's generation lock keeps its conversations busy (409) this long on the others.
    from gateway.app import make_store

    store = make_store(Settings(session_store=url, session_lock_timeout=4.0))
    assert store.lock_timeout == 4.0
