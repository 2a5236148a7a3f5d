"""Hostile session cookies: none reaches another session's conversation, none causes a 500.

A victim holds a conversation; an attacker presents every kind of bad cookie
and must land in a fresh, empty session with an id the server chose.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from itsdangerous import TimestampSigner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.sessions import SessionContext, SessionMiddleware
from gateway.sessions.stores import MemoryStore
from tests.fakes import FakeEngine
from tests.reliability.conftest import SECRET, Gateway, raw_request, running_gateway

COOKIE = "chatstream_session"
SALT = "chatstream-gateway.session"
VICTIM_TEXT = "my bank PIN is 4921"


def signer(*keys: str, at: float | None = None) -> TimestampSigner:
    """A signer like the middleware's (first key signs); `at` backdates the signature."""
    s = TimestampSigner(list(reversed(keys)), salt=SALT)
    if at is not None:
        s.get_timestamp = lambda: int(at)  # type: ignore[method-assign]
    return s


def cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


@dataclass
class Victim:
    gateway: Gateway
    cookie: str  # the signed value
    session_id: str


@pytest.fixture
async def victim(engine: FakeEngine) -> AsyncIterator[Victim]:
    async with running_gateway(engine) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        r = await client.post("/chat_stream", json={"user_input": VICTIM_TEXT})
        assert r.status_code == 200 and "event: done" in r.text
        value = cookie_value(r.headers["set-cookie"])
        session_id = value.split(".", 1)[0]
        yield Victim(gw, value, session_id)


async def attack(gw: Gateway, cookie_header: bytes) -> tuple[int, list[str], bytes]:
    """GET /get_prompt with a raw Cookie header; the status, Set-Cookie headers and body."""
    head = b"GET /get_prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nCookie: " + cookie_header + b"\r\n"
    r = await raw_request(gw.url, head)
    return r.status, r.header("set-cookie"), r.body


def hostile_cookies(v: Victim) -> list[tuple[str, bytes]]:
    sid, value = v.session_id, v.cookie
    _, ts, sig = value.split(".")
    other = signer("an-attacker-key-that-is-long-enough").sign(sid).decode()
    expired = signer(SECRET, at=time.time() - 31 * 24 * 3600).sign(sid).decode()
    cases = {
        "bare id": sid,
        "id with a made-up signature": f"{sid}.{ts}.{'A' * len(sig)}",
        "id with another session's signature": f"{'B' * 43}.{ts}.{sig}",
        "truncated by one": value[:-1],
        "truncated to the id and timestamp": f"{sid}.{ts}",
        "truncated to half": value[: len(value) // 2],
        "signed with another key": other,
        "signature expired": expired,
        "oversized": value + "A" * 8000,
        "oversized before the signature": "A" * 600 + value,
        "empty": "",
        "quoted": f'"{value}x"',
        "unbalanced quote": f'"{value}',
        "escaped octal": "\\" + "\\".join(f"{ord(c):03o}" for c in value[:40]),
        "dots only": "....",
        "unicode": "сессия🙂",
    }
    out = [(name, f"{COOKIE}={raw}".encode()) for name, raw in cases.items()]
    out += [
        ("latin-1 bytes", COOKIE.encode() + b"=\xff\xfe\xe9" + value.encode()),
        ("name only", COOKIE.encode()),
        ("duplicate names, forged last", f"{COOKIE}={value[:-2]}; {COOKIE}={sid}".encode()),
        ("semicolon soup", b";;;=;=;" + COOKIE.encode() + b"=;;"),
        ("many cookies", b"; ".join(b"c%d=%d" % (i, i) for i in range(300))),
        ("attribute injection", f"{COOKIE}={sid}; Path=/; Domain=127.0.0.1".encode()),
        ("control characters", COOKIE.encode() + b"=\x01\x02\x7f" + value.encode()),
    ]
    return out


async def test_no_hostile_cookie_reaches_the_victims_conversation_or_causes_a_500(victim: Victim) -> None:
    gw = victim.gateway
    tried = 0
    for name, header in hostile_cookies(victim):
        status, set_cookies, body = await attack(gw, header)
        tried += 1
        assert status < 500, name
        assert VICTIM_TEXT.encode() not in body, name
        if status == 200:
            # a fresh session: a new id, never the one presented
            assert b'"messages":[]' in body, name
            assert all(victim.session_id not in c for c in set_cookies), name
    # the victim still has the conversation
    status, _, body = await attack(gw, f"{COOKIE}={victim.cookie}".encode())
    assert status == 200 and VICTIM_TEXT.encode() in body
    print(f"\nhostile cookies tried: {tried}, sessions reached: 0")


async def test_a_client_chosen_session_id_is_never_adopted(engine: FakeEngine) -> None:
    chosen = "F" * 43
    # Even correctly signed, an id the server never issued (or already forgot) is replaced.
    planted = signer(SECRET).sign(chosen).decode()
    async with running_gateway(engine) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        r = await client.post("/chat_stream", json={"user_input": "hi"}, headers={"cookie": f"{COOKIE}={planted}"})
        assert r.status_code == 200
        issued = cookie_value(r.headers["set-cookie"]).split(".", 1)[0]
        assert issued != chosen
        await gw.wait_idle(engine.num_unfinished)
        assert await gw.store.load(chosen) is None
        assert await gw.store.load(issued) is not None


async def test_a_cookie_replayed_after_clear_context_reaches_nothing(victim: Victim) -> None:
    gw = victim.gateway
    async with httpx.AsyncClient(base_url=gw.url) as client:
        client.cookies.set(COOKIE, victim.cookie)
        r = await client.post("/clear_context")
        assert r.status_code == 200
        renewed = cookie_value(r.headers["set-cookie"])
        assert renewed.split(".", 1)[0] != victim.session_id
        client.cookies.clear()
        client.cookies.set(COOKIE, renewed)
        r = await client.post("/chat_stream", json={"user_input": "after the clear, also private"})
        assert r.status_code == 200
    # the copy of the old cookie (a shared computer, a stolen backup) opens an empty session
    status, _, body = await attack(gw, f"{COOKIE}={victim.cookie}".encode())
    assert status == 200
    assert b'"messages":[]' in body
    assert b"also private" not in body and VICTIM_TEXT.encode() not in body


async def test_garbage_cookies_on_the_streaming_route_start_a_fresh_conversation(victim: Victim) -> None:
    gw = victim.gateway
    for name, header in hostile_cookies(victim):
        body = b'{"user_input": "hello"}'
        head = (
            b"POST /chat_stream HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nCookie: %s\r\n" % (len(body), header)
        )
        r = await raw_request(gw.url, head, body)
        assert r.status < 500, name
        if r.status == 200:
            assert b"event: done" in r.body, name
    # each attack was its own fresh conversation: the victim's prompt was never extended
    prompts = [gw.chat.engine.prompt_text(i) for i in range(len(gw.chat.engine.prompts))]  # type: ignore[attr-defined]
    assert sum(VICTIM_TEXT in p for p in prompts) == 1


# --- key rotation --------------------------------------------------------------------


async def visits(request: Request) -> JSONResponse:
    context = request.scope["state"]["session"]
    assert isinstance(context, SessionContext)
    session = context.get_session()
    session["visits"] = int(session.get("visits", 0)) + 1
    return JSONResponse({"visits": session["visits"]})


def app_with_keys(store: MemoryStore, *keys: str) -> Starlette:
    app = Starlette(routes=[Route("/visit", visits)])
    app.add_middleware(SessionMiddleware, secret_key=list(keys), store=store, secure=False)
    return app


async def visit(app: Starlette, cookie: str | None) -> tuple[int, str | None]:
    headers = {"cookie": f"{COOKIE}={cookie}"} if cookie else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.get("/visit", headers=headers)
    assert r.status_code == 200
    set_cookie = r.headers.get("set-cookie")
    return int(r.json()["visits"]), cookie_value(set_cookie) if set_cookie else None


async def test_key_rotation_old_key_still_verifies_and_the_new_key_signs() -> None:
    old, new = "the-old-signing-key-0123456789", "the-new-signing-key-0123456789"
    store = MemoryStore()
    before = app_with_keys(store, old)
    rotated = app_with_keys(store, new, old)
    only_new = app_with_keys(store, new)

    count, old_cookie = await visit(before, None)
    assert count == 1 and old_cookie is not None
    # after the rotation the old cookie still opens the same session
    count, reissued = await visit(rotated, old_cookie)
    assert count == 2 and reissued is None
    # new sessions are signed with the new key, which the old key alone cannot verify
    _, new_cookie = await visit(rotated, None)
    assert new_cookie is not None
    assert signer(new).validate(new_cookie)
    assert not signer(old).validate(new_cookie)
    # once the old key is retired, its cookies open fresh sessions
    count, fresh = await visit(only_new, old_cookie)
    assert count == 1 and fresh is not None and fresh.split(".")[0] != old_cookie.split(".")[0]
