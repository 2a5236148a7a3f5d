"""RedisStore: sessions in Redis, shared by every gateway replica.

Each session is a Redis hash (one JSON field per session key, so two requests
that change different keys never overwrite each other) with an idle TTL that
every load and save refreshes. The generation lock is a `SET NX PX` key owned
by a random token, so it holds across replicas and frees itself if a replica
dies while holding it. While a replica holds a lock it renews it
(`LockRenewal`), so a generation longer than `lock_timeout` keeps its lock,
and a dead replica's lock lapses within `lock_timeout`.

Bounds, kept by the store itself rather than by Redis's eviction (which cannot
tell a session from a lock): a save that would take a session past
`max_session_bytes` is refused, and a sorted set indexes the sessions by last
use, so the save that makes them more than `max_sessions` deletes the least
recently used. Both happen in one Lua script, atomically for every replica,
so the sessions never take more than `max_sessions x max_session_bytes`:
size Redis's `maxmemory` above that. (The script touches keys it derives from
the index, so it needs a standalone Redis or one cluster slot.)

Outages: commands time out after `socket_timeout` seconds and are retried
once (which also reconnects a pooled connection that a Redis restart broke),
so a turn fails with a quick 503 while Redis is down and the store recovers
by itself when it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.core.errors import SessionTooLarge
from gateway.sessions.codec import decode_session, encode_value
from gateway.sessions.lock_renewal import LockRenewal
from gateway.sessions.stores import check_shared_bounds
from gateway.settings import MiB

# Deletes the lock only if the caller still owns it.
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
# Extends the lock only if the caller still owns it; 0 means it was lost.
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
# Redis's own clock (microseconds: saves in one millisecond keep their order) for the index, so
# replicas with skewed clocks agree.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
# Writes a session's changed fields and drops its removed ones, unless that would take it past the
# byte cap (returns -1); then indexes it by last use and deletes what the index says is too many.
# KEYS: session hash, index. ARGV: ttl ms, byte cap, max sessions, session id, session key prefix,
# the number of changed fields, the changed fields and values, the removed fields.
_SAVE = (
    _NOW
    + """
local key, index = KEYS[1], KEYS[2]
local ttl, cap, max_sessions = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local sid, prefix, n = ARGV[4], ARGV[5], tonumber(ARGV[6])
local changed, removed, i = {}, {}, 7
for _ = 1, n do changed[ARGV[i]] = ARGV[i + 1]; i = i + 2 end
for j = i, #ARGV do removed[ARGV[j]] = true end
local size = 0
for _, field in ipairs(redis.call('HKEYS', key)) do
  if changed[field] == nil and not removed[field] then size = size + #field + redis.call('HSTRLEN', key, field) end
end
for field, value in pairs(changed) do size = size + #field + #value end
if size > cap then return -1 end
for field, value in pairs(changed) do redis.call('HSET', key, field, value) end
for field in pairs(removed) do redis.call('HDEL', key, field) end
if redis.call('PEXPIRE', key, ttl) == 1 then redis.call('ZADD', index, now, sid) else redis.call('ZREM', index, sid) end
-- Entries older than the idle timeout are sessions Redis has expired already.
redis.call('ZREMRANGEBYSCORE', index, '-inf', string.format('(%d', now - ttl * 1000))
local excess = redis.call('ZCARD', index) - max_sessions
-- The least recently used go first, never the session being saved.
for _, old in ipairs(excess > 0 and redis.call('ZRANGE', index, 0, excess) or {}) do
  if excess > 0 and old ~= sid then
    redis.call('DEL', prefix .. old)
    redis.call('ZREM', index, old)
    excess = excess - 1
  end
end
return size
"""
)
# Refreshes a session's idle TTL and its place in the index (after its data was read and decoded).
_TOUCH = (
    _NOW
    + """
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1 then redis.call('ZADD', KEYS[2], now, ARGV[2]) end
return 0
"""
)


class RedisStore:
    """Session data in Redis with an idle timeout; safe for several replicas."""

    def __init__(
        self,
        client: Redis,
        idle_timeout: float = 3600.0,
        lock_timeout: float = 30.0,
        prefix: str = "chatstream:",
        *,
        max_sessions: int = 10_000,
        max_session_bytes: int = MiB,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        check_shared_bounds(idle_timeout, lock_timeout, max_sessions, max_session_bytes)
        self.client = client
        self.idle_timeout = idle_timeout
        self.lock_timeout = lock_timeout
        self.prefix = prefix
        self.max_sessions = max_sessions
        self.max_session_bytes = max_session_bytes
        self._ttl_ms = int(idle_timeout * 1000)
        self._lock_ms = int(lock_timeout * 1000)
        self._index = f"{prefix}sessions-by-use"
        self._save = client.register_script(_SAVE)
        self._touch = client.register_script(_TOUCH)
        self._renewal = LockRenewal(lock_timeout, self._renew, sleep)

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
        raw = await self.client.hgetall(key)
        if not raw:
            return None
        data = decode_session(raw)
        if data is not None:  # undecodable data is not kept alive: it expires on its own
            await self._touch(keys=[key, self._index], args=[self._ttl_ms, session_id])
        return data

    async def save(self, session_id: str, changed: Mapping[str, Any], removed: Iterable[str]) -> None:
        fields = [part for key, value in changed.items() for part in (key, encode_value(value))]
        args: list[str | int] = [self._ttl_ms, self.max_session_bytes, self.max_sessions, session_id]
        args += [self._key(""), len(changed), *fields, *removed]
        size = await self._save(keys=[self._key(session_id), self._index], args=args)
        if size < 0:
            raise SessionTooLarge(f"the session would take more than {self.max_session_bytes} bytes")

    async def delete(self, session_id: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(session_id))
            pipe.zrem(self._index, session_id)
            await pipe.execute()

    async def try_lock(self, session_id: str, owner: str) -> bool:
        taken = bool(await self.client.set(self._lock_key(session_id), owner, nx=True, px=self._lock_ms))
        if taken:
            self._renewal.start(session_id, owner)
        return taken

    async def unlock(self, session_id: str, owner: str) -> None:
        self._renewal.stop(session_id, owner)
        await self.client.eval(_UNLOCK, 1, self._lock_key(session_id), owner)

    async def _renew(self, session_id: str, owner: str) -> bool:
        return bool(await self.client.eval(_RENEW, 1, self._lock_key(session_id), owner, self._lock_ms))

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self._renewal.close()
        await self.client.aclose()
