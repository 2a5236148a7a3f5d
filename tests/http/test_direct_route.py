"""Direct routes: the generation routes skip FastAPI's request handling, and lose nothing by it."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.responses import PlainTextResponse, Response

from gateway import Settings, create_app
from gateway.http.direct_route import DirectRoute
from gateway.http.errors import add_error_handlers
from tests.fakes import FakeEngine

GENERATION_ROUTES = ("/chat_stream", "/v1/chat/completions", "/v1/completions", "/v1/responses")


def test_the_generation_routes_are_direct_and_documented_as_before() -> None:
    app = create_app(Settings(secure_cookies=False), engine=FakeEngine())
    routes = {route.path: route for route in app.routes if getattr(route, "path", None) in GENERATION_ROUTES}
    assert {path: type(route) for path, route in routes.items()} == dict.fromkeys(GENERATION_ROUTES, DirectRoute)
    paths = app.openapi()["paths"]
    for path in GENERATION_ROUTES:
        operation = paths[path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]  # the documented body
        assert "429" in operation["responses"]


# A streamed and a plain request of each generation route (`/chat_stream` always streams).
ANSWERED = [
    ("/chat_stream", {"user_input": "Hi"}),
    ("/v1/chat/completions", {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}),
    ("/v1/completions", {"model": "fake-model", "prompt": "Hi"}),
    ("/v1/responses", {"model": "fake-model", "input": "Hi"}),
]


async def test_every_answer_of_a_generation_route_has_a_documented_content_type() -> None:
    """Schema fuzzing found a streamed 200 whose content type the document did not list; this asks each kind."""
    engine = FakeEngine()
    await engine.start()  # the transport runs no lifespan
    app = create_app(Settings(secure_cookies=False), engine=engine)
    paths = app.openapi()["paths"]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path, body in ANSWERED:
            for request in [body] if path == "/chat_stream" else [body | {"stream": True}, body]:
                answer = await client.post(path, json=request)
                assert answer.status_code == 200, (request, answer.text)
                documented = paths[path]["post"]["responses"]["200"]["content"]
                content_type = answer.headers["content-type"].split(";")[0]
                assert content_type in documented, (request, content_type, list(documented))


async def test_a_direct_route_answers_and_its_failures_reach_the_apps_handlers() -> None:
    app = FastAPI()
    add_error_handlers(app)

    async def echo(request: Request) -> Response:
        return PlainTextResponse((await request.body()).decode()[::-1], headers={"x-seen": request.url.path})

    async def broken(request: Request) -> Response:
        raise RuntimeError("a secret internal detail")

    app.router.add_api_route("/echo", echo, methods=["POST"], route_class_override=DirectRoute)
    app.router.add_api_route("/broken", broken, methods=["POST"], route_class_override=DirectRoute)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.post("/echo", content=b"abc")
        assert (answer.status_code, answer.text, answer.headers["x-seen"]) == (200, "cba", "/echo")
        assert (await client.get("/echo")).status_code == 405  # the route's methods still hold
        failed = await client.post("/broken")
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "internal_error"
    assert "secret" not in failed.text


def test_a_direct_route_takes_only_an_async_endpoint_of_the_request_alone() -> None:
    async def two(request: Request, extra: int) -> Response:
        raise AssertionError

    def sync(request: Request) -> Response:
        raise AssertionError

    for endpoint in (two, sync):
        with pytest.raises(TypeError, match="takes the request alone"):
            DirectRoute("/x", endpoint, methods=["POST"])
