"""RedisStore: sessions in Redis, shared by every gateway replica.

Each session is a Redis hash (one JSON field per session key, so two requests
that change different keys never overwrite each other) with an idle TTL that
every load and save refreshes. The generation lock is a `SET NX PX` key owned
by a random token, so it holds across replicas and frees itself if a replica
dies while holding it. While a replica holds a lock it renews it every third
of `lock_timeout`, so a generation longer than `lock_timeout` keeps its lock,
and a dead replica's lock lapses within `lock_timeout`.

Outages: commands time out after `socket_timeout` seconds and are retried
once (which also reconnects a pooled connection that a Redis restart broke),
so a turn fails with a quick 503 while Redis is down and the store recovers
by itself when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.sessions.codec import decode_value, encode_value

logger = logging.getLogger(__name__)

# Deletes the lock only if the caller still owns it.
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
# Extends the lock only if the caller still owns it; 0 means it was lost.
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)


class RedisStore:
    """Session data in Redis with an idle timeout; safe for several replicas."""

    def __init__(
        self, client: Redis, idle_timeout: float = 3600.0, lock_timeout: float = 30.0, prefix: str = "chatstream:"
    ) -> None:
        if idle_timeout <= 0 or lock_timeout <= 0:
            raise ValueError("idle_timeout and lock_timeout must be positive")
        self.client = client
        self.idle_timeout = idle_timeout
        self.lock_timeout = lock_timeout
        self.prefix = prefix
        self._ttl_ms = int(idle_timeout * 1000)
        self._lock_ms = int(lock_timeout * 1000)
        self._renewers: dict[tuple[str, str], asyncio.Task[None]] = {}

    @classmethod
    def from_url(
        cls, url: str, idle_timeout: float = 3600.0, *, socket_timeout: float = 2.0, **kwargs: Any
    ) -> RedisStore:
        """A store on a new client for `url` (`redis://host:port/db`, `rediss://`, `unix://`)."""
        client = Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            # redis-py's default retries three times with backoff, which turns an
            # outage into a long hang; one immediate retry is enough to replace a
            # pooled connection that a Redis restart closed.
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, idle_timeout=idle_timeout, **kwargs)

    def _key(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def _lock_key(self, session_id: str) -> str:
        return f"{self.prefix}lock:{session_id}"

    async def load(self, session_id: str) -> dict[str, Any] | None:
        key = self._key(session_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.pexpire(key, self._ttl_ms)
            raw, _ = await pipe.execute()
        if not raw:
            return None
        return {k.decode(): decode_value(v) for k, v in raw.items()}

    async def save(self, session_id: str, changed: Mapping[str, Any], removed: Iterable[str]) -> None:
        key = self._key(session_id)
        removed = list(removed)
        async with self.client.pipeline(transaction=True) as pipe:
            if changed:
                pipe.hset(key, mapping={k: encode_value(v) for k, v in changed.items()})
            if removed:
                pipe.hdel(key, *removed)
            pipe.pexpire(key, self._ttl_ms)
            await pipe.execute()

    async def delete(self, session_id: str) -> None:
        await self.client.delete(self._key(session_id))

    async def try_lock(self, session_id: str, owner: str) -> bool:
        taken = bool(await self.client.set(self._lock_key(session_id), owner, nx=True, px=self._lock_ms))
        if taken:
            self._renewers[session_id, owner] = asyncio.create_task(self._renew(session_id, owner))
        return taken

    async def unlock(self, session_id: str, owner: str) -> None:
        renewer = self._renewers.pop((session_id, owner), None)
        if renewer is not None:
            renewer.cancel()
        await self.client.eval(_UNLOCK, 1, self._lock_key(session_id), owner)

    async def _renew(self, session_id: str, owner: str) -> None:
        key = self._lock_key(session_id)
        while True:
            await asyncio.sleep(self.lock_timeout / 3)
            try:
                held = await self.client.eval(_RENEW, 1, key, owner, self._lock_ms)
            except Exception as exc:  # Redis briefly away: the lock still has two thirds of its time
                logger.warning("could not renew a session lock: %s", type(exc).__name__)
                continue
            if not held:
                logger.warning("a session lock expired while its generation was running")
                self._renewers.pop((session_id, owner), None)
                return

    async def close(self) -> None:
        for renewer in self._renewers.values():
            renewer.cancel()
        for renewer in list(self._renewers.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        self._renewers.clear()
        await self.client.aclose()
