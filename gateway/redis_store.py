"""RedisStore: sessions in Redis, shared by every gateway replica.

Each session is a Redis hash (one JSON field per session key, so two requests
that change different keys never overwrite each other) with an idle TTL that
every load and save refreshes. The generation lock is a `SET NX PX` key owned
by a random token, so it holds across replicas and frees itself if a replica
dies while holding it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from redis.asyncio import Redis

from gateway.stores import decode_value, encode_value

# Deletes the lock only if the caller still owns it.
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisStore:
    """Session data in Redis with an idle timeout; safe for several replicas."""

    def __init__(
        self, client: Redis, idle_timeout: float = 3600.0, lock_timeout: float = 600.0, prefix: str = "chatstream:"
    ) -> None:
        self.client = client
        self.idle_timeout = idle_timeout
        self.lock_timeout = lock_timeout
        self.prefix = prefix
        self._ttl_ms = int(idle_timeout * 1000)

    @classmethod
    def from_url(cls, url: str, idle_timeout: float = 3600.0, **kwargs: Any) -> RedisStore:
        # Short timeouts: a Redis outage must fail a turn quickly (503), not hang it.
        client = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
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
        return bool(await self.client.set(self._lock_key(session_id), owner, nx=True, px=int(self.lock_timeout * 1000)))

    async def unlock(self, session_id: str, owner: str) -> None:
        await self.client.eval(_UNLOCK, 1, self._lock_key(session_id), owner)

    async def close(self) -> None:
        await self.client.aclose()
