"""SessionMiddleware over a live server: the cookie, its flags, and what a bad cookie gets."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from itsdangerous import TimestampSigner
from starlette.responses import JSONResponse, Response

from gateway import MemoryStore, SessionMiddleware
from tests.live import serve
from tests.sessions.test_memory_store import Clock

KEY = "session-test-key-0123456789abcdef"
COOKIE = "chatstream_session"
SALT = "chatstream-gateway.session"


def session_app(secret_key: str | Sequence[str] = KEY, store: MemoryStore | None = None, **options: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(SessionMiddleware, secret_key=secret_key, store=store, **options)

    @app.post("/count")
    async def count(request: Request) -> Response:
        session = request.state.session.get_session()
        session["count"] = session.get("count", 0) + 1
        return JSONResponse({"count": session["count"]})

    @app.get("/peek")
    async def peek(request: Request) -> Response:
        return JSONResponse(dict(request.state.session.get_session()))

    @app.post("/theme")
    async def theme(request: Request) -> Response:
        request.state.session.get_session()["theme"] = "dark"
        response = JSONResponse({"ok": True})
        response.set_cookie("theme", "dark", path="/")
        return response

    return app


@asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app, lifespan="off") as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


def session_cookie_headers(response: httpx.Response) -> list[str]:
    return [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{COOKIE}=")]


@pytest.mark.parametrize("secure", [True, False])
async def test_the_cookie_flags_match_the_design(secure: bool) -> None:
    async with client_for(session_app(secure=secure)) as client:
        response = await client.post("/count")
    [header] = session_cookie_headers(response)
    flags = [part.strip() for part in header.split(";")[1:]]
    expected = {"Path=/", "SameSite=Lax", "HttpOnly"} | ({"Secure"} if secure else set())
    assert set(flags) == expected
    assert not any(f.lower().startswith(("max-age", "expires")) for f in flags)  # a browser-session cookie
    # The value is only a signed random id: no session data travels in it.
    value = header.split(";")[0].split("=", 1)[1]
    session_id = TimestampSigner(KEY, salt=SALT).unsign(value).decode()
    assert len(session_id) == 43 and "count" not in value


async def test_the_session_follows_its_cookie_and_no_other() -> None:
    async with client_for(session_app(secure=False)) as alice:
        assert [(await alice.post("/count")).json()["count"] for _ in range(3)] == [1, 2, 3]
        again = await alice.post("/count")
        assert again.json() == {"count": 4}
        assert session_cookie_headers(again) == []  # an established session is not re-issued
        async with httpx.AsyncClient(base_url=str(alice.base_url), timeout=30) as bob:
            assert (await bob.post("/count")).json() == {"count": 1}


async def test_a_request_that_never_touches_the_session_gets_no_cookie() -> None:
    async with client_for(session_app(secure=False)) as client:
        response = await client.get("/peek")
        assert response.json() == {}
        assert response.headers.get_list("set-cookie") == []


async def test_a_cookie_set_by_the_endpoint_is_kept_beside_ours() -> None:
    async with client_for(session_app(secure=False)) as client:
        response = await client.post("/theme")
        cookies = response.headers.get_list("set-cookie")
        assert len(cookies) == 2
        assert any(c.startswith("theme=dark") for c in cookies)
        assert len(session_cookie_headers(response)) == 1
        assert (await client.get("/peek")).json() == {"theme": "dark"}


def _signed(session_id: str, key: str = KEY, age: float = 0.0) -> str:
    class _Backdated(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age)

    return _Backdated(key, salt=SALT).sign(session_id).decode()


@pytest.mark.parametrize(
    "make_cookie",
    [
        # Not the last character: it carries padding bits, and some edits to it decode to the same signature.
        pytest.param(lambda good: good[:-5] + ("A" if good[-5] != "A" else "B") + good[-4:], id="tampered-signature"),
        pytest.param(lambda good: _signed(good.split(".")[0][:-1] + "x"), id="tampered-id"),
        pytest.param(lambda good: "garbage", id="garbage"),
        pytest.param(lambda good: '"\\x00;\\\\ \xe9', id="control-characters"),
        pytest.param(lambda good: good + "x" * 2000, id="oversized"),
        pytest.param(lambda good: _signed(good.split(".")[0], age=31 * 24 * 3600), id="expired-signature"),
        pytest.param(lambda good: _signed(secrets.token_urlsafe(32)), id="unknown-id"),
        pytest.param(lambda good: _signed("../../etc/passwd"), id="id-not-ours"),
        pytest.param(lambda good: _signed(good.split(".")[0], key="some-other-key-0123456789"), id="other-key"),
    ],
)
async def test_a_bad_cookie_gives_a_fresh_session(make_cookie: Callable[[str], str]) -> None:
    async with client_for(session_app(secure=False)) as client:
        await client.post("/count")
        await client.post("/count")
        good = client.cookies[COOKIE]
        bad = make_cookie(good)
        client.cookies.clear()
        response = await client.post("/count", headers={b"cookie": f"{COOKIE}={bad}".encode("latin-1")})
        assert response.status_code == 200 and response.json() == {"count": 1}
        [header] = session_cookie_headers(response)
        assert header.split(";")[0] not in (f"{COOKIE}={good}", f"{COOKIE}={bad}")


async def test_a_session_idle_past_the_timeout_starts_afresh() -> None:
    clock = Clock()
    app = session_app(store=MemoryStore(idle_timeout=60, clock=clock), secure=False)
    async with client_for(app) as client:
        await client.post("/count")
        first = client.cookies[COOKIE]
        clock.now += 59
        assert (await client.post("/count")).json() == {"count": 2}
        clock.now += 61
        response = await client.post("/count")
        assert response.json() == {"count": 1}
        assert client.cookies[COOKIE] != first


async def test_other_cookies_that_are_not_rfc_strict_do_not_lose_the_session() -> None:
    """Regression: SimpleCookie dropped the whole Cookie header when another cookie had a space in it."""
    async with client_for(session_app(secure=False)) as client:
        await client.post("/count")
        ours = f"{COOKIE}={client.cookies[COOKIE]}"
        client.cookies.clear()
        for header in (f"tracker=a b c; {ours}", f'{ours}; prefs="unclosed', f"{COOKIE}=stale-path-copy; {ours}"):
            response = await client.post("/count", headers={"cookie": header})
            assert session_cookie_headers(response) == [], header
        assert response.json() == {"count": 4}


async def test_rotated_keys_keep_old_cookies_and_sign_new_ones_with_the_newest() -> None:
    store = MemoryStore()
    async with client_for(session_app("old-key-0123456789abcdef", store, secure=False)) as client:
        await client.post("/count")
        old_cookie = client.cookies[COOKIE]
    rotated = session_app(["new-key-0123456789abcdef", "old-key-0123456789abcdef"], store, secure=False)
    async with client_for(rotated) as client:
        response = await client.post("/count", headers={"cookie": f"{COOKIE}={old_cookie}"})
        assert response.json() == {"count": 2}  # the old key still verifies
        client.cookies.clear()
        response = await client.post("/count")
        [header] = session_cookie_headers(response)
        TimestampSigner("new-key-0123456789abcdef", salt=SALT).unsign(header.split(";")[0].split("=", 1)[1])


@pytest.mark.parametrize("secret_key", ["short", [], ["long-enough-key-0123456789", "short"]])
def test_weak_secret_keys_are_refused(secret_key: str | list[str]) -> None:
    with pytest.raises(ValueError, match="16 characters"):
        SessionMiddleware(session_app(), secret_key=secret_key)
