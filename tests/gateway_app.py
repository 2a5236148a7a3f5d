"""A whole gateway (create_app) served on loopback, with its callback's reports recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from gateway import CompletionState, Engine, Settings, create_app
from gateway.sessions import SessionStore
from tests.live import Handled, serve


@dataclass
class Gateway:
    url: str
    app: FastAPI
    handled: Handled
    states: list[CompletionState] = field(default_factory=list)

    async def wait_states(self, count: int) -> list[CompletionState]:
        """The callback's reports once `count` have arrived (the callback runs after the last byte)."""
        async with asyncio.timeout(30):
            while len(self.states) < count:
                await asyncio.sleep(0.01)
        return self.states


@asynccontextmanager
async def running_gateway(
    engine: Engine, *, lifespan: Literal["on", "off"] = "on", store: SessionStore | None = None, **settings: Any
) -> AsyncIterator[Gateway]:
    """`create_app` over `engine` with these Settings fields, served until the block ends.

    Use `lifespan="off"` with the shared real engine: the app's lifespan would stop it
    (and then close a given `store` yourself).
    """
    states: list[CompletionState] = []

    def record(request: Request, state: CompletionState) -> None:
        states.append(state)

    app = create_app(Settings(**{"secure_cookies": False, **settings}), engine=engine, callback=record, store=store)
    handled = Handled(app)
    async with serve(handled, lifespan=lifespan) as url:
        yield Gateway(url, app, handled, states)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when the labelled series does not exist yet)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


def replica_pin(response: httpx.Response) -> str | None:
    """The replica a response pins its conversation to (the chatstream_replica cookie it sets), if any."""
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name == "chatstream_replica":
            return rest.split(";")[0]
    return None
