"""What the session store tests share: a sleep they move by hand, and a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
import uuid

from tests.servers import Postgres


class ManualSleep:
    """The lock renewers' sleep, moved on by the test: `await tick()` runs each sleeping renewer once."""

    def __init__(self) -> None:
        self.sleeping: list[asyncio.Future[None]] = []

    async def __call__(self, seconds: float) -> None:
        done = asyncio.get_running_loop().create_future()
        self.sleeping.append(done)
        await done

    async def tick(self) -> None:
        async with asyncio.timeout(10):
            while not self.sleeping:
                await asyncio.sleep(0.005)
        woken, self.sleeping = self.sleeping, []
        for done in woken:
            done.set_result(None)


async def fresh_postgres_database(server: Postgres) -> str:
    """The URL of a new database on `server` (each test's own: a count bound sees only its sessions)."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server.url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return server.url.rsplit("/", 1)[0] + f"/{name}"
