"""HTTP sessions: a signed session-id cookie, and stores that keep the data server side."""

from gateway.sessions.cookie import SessionCookie
from gateway.sessions.middleware import Session, SessionContext, SessionMiddleware
from gateway.sessions.redis_store import RedisStore
from gateway.sessions.sql_store import SQLStore
from gateway.sessions.stores import MemoryStore, SessionStore

__all__ = [
    "MemoryStore",
    "RedisStore",
    "SQLStore",
    "Session",
    "SessionContext",
    "SessionCookie",
    "SessionMiddleware",
    "SessionStore",
]
