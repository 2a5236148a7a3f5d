"""Bearer API keys: which routes they guard, and the 401 a client gets without one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp

from gateway import Settings, create_app
from tests.fakes import FakeEngine
from tests.gateway_app import Gateway, metric, running_gateway
from tests.live import serve

KEY, FILE_KEY = "sk-first-key", "sk-from-the-file"


@pytest.fixture
async def gateway(fake_engine: FakeEngine, tmp_path: Path) -> AsyncIterator[Gateway]:
    key_file = tmp_path / "keys"
    key_file.write_text(f"\n{FILE_KEY}\n\n")
    async with running_gateway(fake_engine, api_key=[KEY], keys_file=key_file) as gw:
        yield gw


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url) as c:
        yield c


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        pytest.param(None, 401, id="missing"),
        pytest.param(f"Bearer {KEY}x", 401, id="wrong"),
        pytest.param(f"Bearer {KEY[:-1]}", 401, id="prefix"),
        pytest.param(f"Basic {KEY}", 401, id="not-bearer"),
        pytest.param("Bearer", 401, id="no-token"),
        pytest.param(f"Bearer {KEY}", 200, id="flag-key"),
        pytest.param(f"bearer {FILE_KEY}", 200, id="file-key"),
    ],
)
async def test_the_openai_routes_need_a_valid_key(
    client: httpx.AsyncClient, authorization: str | None, status: int
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    r = await client.get("/v1/models", headers=headers)
    assert r.status_code == status
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"] == {
            "message": "a valid API key is required" if authorization is None else "the API key is not valid",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }


async def test_the_official_client_raises_authentication_error(gateway: Gateway, fake_engine: FakeEngine) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="sk-wrong", max_retries=0) as api:
        with pytest.raises(openai.AuthenticationError):
            await api.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    assert fake_engine.prompts == []
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as api:
        done = await api.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content == fake_engine.answer


async def test_refusals_are_counted_by_route(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json={})
    await client.get("/v1/models", headers={"authorization": "Bearer nope"})
    text = (await client.get("/metrics")).text
    labels = {"reason": "invalid_api_key"}
    assert metric(text, "chatstream:rejected_requests_total", route="v1/chat/completions", **labels) == 1
    assert metric(text, "chatstream:rejected_requests_total", route="v1/models", **labels) == 1


async def test_probes_metrics_and_the_session_api_stay_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/ready")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200
    # /chat_stream is the browser's session API: a page cannot keep a bearer key secret.
    r = await client.post("/chat_stream", json={"user_input": "hi"})
    assert r.status_code == 200 and "event: done" in r.text


async def test_metrics_auth_puts_metrics_behind_the_key(fake_engine: FakeEngine) -> None:
    async with (
        running_gateway(fake_engine, api_key=[KEY], metrics_auth=True) as gw,
        httpx.AsyncClient(base_url=gw.url) as client,
    ):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"authorization": f"Bearer {KEY}"})).status_code == 200
        assert (await client.get("/health")).status_code == 200


async def test_without_keys_nothing_is_guarded(fake_engine: FakeEngine) -> None:
    async with running_gateway(fake_engine) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.get("/v1/models")).status_code == 200


@pytest.mark.parametrize("where", ["mount", "root-path"])
async def test_a_mount_prefix_or_root_path_does_not_open_the_api(fake_engine: FakeEngine, where: str) -> None:
    """Regression (issue 13, item 4): the key check read `scope["path"]`, which carries the prefix,
    while Starlette routes on the path without it, so `/api/v1/chat/completions` ran without a key."""
    gateway_app = create_app(Settings(secure_cookies=False, api_key=[KEY]), engine=fake_engine)
    await fake_engine.start()  # neither a mounted app's lifespan nor lifespan="off" starts it
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    if where == "mount":
        app: ASGIApp = Starlette(routes=[Mount("/api", app=gateway_app)])
        server, path = serve(app, lifespan="off"), "/api/v1/chat/completions"
    else:
        server, path = serve(gateway_app, lifespan="off", root_path="/api"), "/v1/chat/completions"
    async with server as url, httpx.AsyncClient(base_url=url) as client:
        refused = await client.post(path, json=body)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert fake_engine.prompts == []
        served = await client.post(path, json=body, headers={"authorization": f"Bearer {KEY}"})
        assert served.status_code == 200
        assert served.json()["choices"][0]["message"]["content"] == fake_engine.answer
