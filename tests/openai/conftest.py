"""A gateway on the fake engine with two API keys, and a client for each (the stored-records tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.fakes import FakeEngine
from tests.gateway_app import Gateway, running_gateway

KEYS = {"key-alice": "alice", "key-bob": "bob"}


@pytest.fixture
async def keyed_gateway(fake_engine: FakeEngine, tmp_path: Path) -> AsyncIterator[Gateway]:
    keys = tmp_path / "keys"
    keys.write_text("".join(f"{key} {user}\n" for key, user in KEYS.items()))
    async with running_gateway(fake_engine, keys_file=keys) as gw:
        yield gw


def _client(gateway: Gateway, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url, timeout=30, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
async def alice(keyed_gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(keyed_gateway, "key-alice") as client:
        yield client


@pytest.fixture
async def bob(keyed_gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(keyed_gateway, "key-bob") as client:
        yield client
