"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hypothesis
import pytest

from gateway.core.vllm_engine import VLLMEngine
from tests.fakes import FakeEngine
from tests.servers import Postgres, RedisServer

# Property tests draw the same examples on every run, so a failure is one every run sees and
# can be found, never a draw of luck that fails one CI run in twenty; a soak (`make soak`,
# CHATSTREAM_SOAK=1) draws new ones each time, to find what the fixed draw does not.
hypothesis.settings.register_profile("fixed", derandomize=True, database=None)
hypothesis.settings.register_profile("explore", database=None)
hypothesis.settings.load_profile("explore" if os.environ.get("CHATSTREAM_SOAK") == "1" else "fixed")


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny offline model: `make test` builds it into models/tiny; otherwise build one here."""
    given = os.environ.get("CHATSTREAM_TEST_MODEL")
    if given and (Path(given) / "config.json").is_file():
        # Absolute: clients run in other directories, and a relative path reads as a Hub id there.
        return Path(given).resolve()
    from gateway.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
async def real_engine(tiny_model_dir: Path) -> AsyncIterator[VLLMEngine]:
    """One real vLLM engine (CPU, tiny model) for the whole test run."""
    engine = VLLMEngine(str(tiny_model_dir), {"max_model_len": 1024})
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on loopback, for the tests of one module."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server on loopback, for the tests of one module."""
    server = Postgres()
    server.start()
    try:
        yield server
    finally:
        server.remove()
