"""The OpenAI-compatible routes: `/v1/chat/completions`, `/v1/completions`, `/v1/models`,
and vLLM's `/tokenize` and `/detokenize`.

A route reads its body (under the one body limit), lets the frontend turn it
into prompts and an answer spec (off the event loop: rendering is template and
tokenizer work), and hands a `GenerationRequest` and a format to `Core.run`:
the same admission, completion states, metrics and log line as `/chat_stream`.
They are stateless: no session is read and nothing is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.core import CompletionCallback, Core, GenerationRequest, Outcome
from gateway.core.errors import EngineUnavailable, GatewayError
from gateway.core.runner import OnEnd
from gateway.core.stream_format import StreamFormat
from gateway.http.direct_route import DirectRoute
from gateway.http.limits import read_body
from gateway.openai.chat_format import ChatFormat
from gateway.openai.completion_format import CompletionFormat
from gateway.openai.format import openai_error_response
from gateway.openai.frontend import Frontend, Prepared, frontend_for
from gateway.openai.schema import OpenAIErrorBody

logger = logging.getLogger(__name__)

CHAT_ROUTE = "v1/chat/completions"
COMPLETIONS_ROUTE = "v1/completions"


async def _record_nothing(outcome: Outcome) -> None:
    """The OpenAI routes are stateless: there is no conversation to update."""


class GenerationResponse(Response):
    """Runs one generation when Starlette sends the response (so nothing is held before that)."""

    def __init__(
        self,
        core: Core,
        request: Request,
        gen: GenerationRequest,
        fmt: StreamFormat,
        on_end: OnEnd,
        callback: CompletionCallback | None,
        *,
        on_complete: OnEnd | None = None,
    ) -> None:
        super().__init__()
        self.core, self.request, self.gen, self.fmt, self.callback = core, request, gen, fmt, callback
        self.on_end, self.on_complete = on_end, on_complete

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run = self.core.run
        await run(self.request, send, self.gen, self.fmt, self.on_end, self.callback, on_complete=self.on_complete)


class OpenAIRoutes:
    """Turns OpenAI request bodies into generations on the core."""

    def __init__(self, core: Core, callback: CompletionCallback | None) -> None:
        self.core = core
        self.callback = callback
        self._frontend: Frontend | None = None
        self._frontend_for: Any = None  # the engine client the frontend was built for
        self._building = asyncio.Lock()

    async def frontend(self) -> Frontend:
        """The frontend for the running engine, built on first use (vLLM's needs the started engine)."""
        engine = self.core.engine
        if not engine.is_healthy():
            raise EngineUnavailable("the engine is not available", retry_after=5)
        client = getattr(engine, "vllm_client", engine)
        if self._frontend is None or self._frontend_for is not client:
            async with self._building:
                if self._frontend is None or self._frontend_for is not client:
                    self._frontend = await asyncio.to_thread(frontend_for, engine, self.core.config)
                    self._frontend_for = client
        assert self._frontend is not None
        return self._frontend

    async def prepare(self) -> None:
        """Build the frontend now (at start-up), so the first requests do not wait for it."""
        with contextlib.suppress(EngineUnavailable):  # no engine yet: the first request builds it
            await self.frontend()

    def refuse(self, route: str, error: GatewayError) -> JSONResponse:
        self.core.count_refusal(route, error)
        return openai_error_response(error)

    async def generation(self, request: Request, route: str) -> Response:
        """The response that runs this request's generation, or an OpenAI-shaped refusal."""
        arrived_at = time.monotonic()
        chat = route == CHAT_ROUTE
        try:
            body = await read_body(request, self.core.config.max_body_bytes)
            frontend = await self.frontend()
            prepared = await (frontend.chat(body) if chat else frontend.completion(body))
        except GatewayError as err:
            return self.refuse(route, err)
        except Exception:  # a bug: logged, and answered without its details
            logger.exception("preparing a %s request failed", route)
            return self.refuse(route, GatewayError("the server failed to handle this request"))
        gen = generation_request(prepared, route, "chatcmpl" if chat else "cmpl", arrived_at)
        fmt: ChatFormat | CompletionFormat
        if chat:
            fmt = ChatFormat(gen, prepared.spec, prepared.prompts[0])
        else:
            fmt = CompletionFormat(gen, prepared.spec, prepared.prompts)
        return GenerationResponse(self.core, request, gen, fmt, _record_nothing, self.callback)

    async def tokens(self, request: Request, route: str) -> Response:
        """`/tokenize` or `/detokenize`: vLLM's answers, no generation."""
        try:
            body = await read_body(request, self.core.config.max_body_bytes)
            frontend = await self.frontend()
            answer = await (frontend.tokenize(body) if route == "tokenize" else frontend.detokenize(body))
        except GatewayError as err:
            return self.refuse(route, err)
        return JSONResponse(dict(answer))

    async def models(self) -> Response:
        try:
            names = (await self.frontend()).model_names()
        except GatewayError as err:
            return self.refuse("v1/models", err)
        created = int(time.time())
        root = self.core.config.model or self.core.engine.model_name
        cards = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "chatstream-gateway",
                "root": root,
                "parent": None,
                "max_model_len": self.core.engine.max_model_len,
            }
            for name in names
        ]
        return JSONResponse({"object": "list", "data": cards})


def generation_request(prepared: Prepared, route: str, prefix: str, arrived_at: float) -> GenerationRequest:
    first, *rest = prepared.prompts
    return GenerationRequest(
        request_id=f"{prefix}-{uuid.uuid4().hex}",
        route=route,
        prompt_token_ids=first.token_ids,
        options=first.options,
        arrived_at=arrived_at,
        priority=prepared.priority,
        user=prepared.user,
        extra_prompts=tuple((p.token_ids, p.options) for p in rest),
    )


# The bodies, as far as the OpenAPI document describes them: their fields are vLLM's request
# models' (with a vLLM engine), too many and too loose to restate here.
def _body(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "properties": properties}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_MESSAGES = {"type": "array", "items": {"type": "object"}}
_CHAT_DOC = _body(["messages"], {"model": {"type": "string"}, "messages": _MESSAGES, "stream": {"type": "boolean"}})
_COMPLETION_DOC = _body(["prompt"], {"model": {"type": "string"}, "prompt": {}, "stream": {"type": "boolean"}})
RESPONSES_DOC = _body(
    [],
    {
        "model": {"type": "string"},
        "input": {},
        "instructions": {"type": "string"},
        "previous_response_id": {"type": "string"},
        "stream": {"type": "boolean"},
    },
)
_TOKENIZE_DOC = _body([], {"model": {"type": "string"}, "prompt": {"type": "string"}, "messages": _MESSAGES})
_DETOKENIZE_DOC = _body(
    ["tokens"], {"model": {"type": "string"}, "tokens": {"type": "array", "items": {"type": "integer"}}}
)
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorBody, "description": text}
    for status, text in [
        (400, "invalid request"),
        (401, "missing or wrong API key"),
        (403, "priority set with a key that may not set it"),
        (404, "unknown model"),
        (413, "body too large"),
        (429, "admission queue full, or a key's limit reached"),
        (500, "the server failed"),
        (503, "engine unavailable, draining, or queue wait timed out"),
    ]
}


Endpoint = Callable[..., Awaitable[Response]]


def mount(
    app: FastAPI,
    endpoints: Sequence[tuple[str, str, Endpoint]],
    generations: Sequence[tuple[str, Endpoint, dict[str, Any]]] = (),
) -> None:
    """Mount (method, path, endpoint) routes and (path, endpoint, body doc) generation routes on `app`.

    Each answers OpenAI's error shapes (in the docs too).
    """
    router = APIRouter(responses=ERRORS)
    for path, endpoint, doc in generations:
        add_generation_route(router, path, endpoint, doc)
    for method, path, endpoint in endpoints:
        router.add_api_route(path, endpoint, methods=[method], response_model=None)
    app.include_router(router)


# A generation answers 200 with JSON, or with `"stream": true` with Server-Sent Events
# (FastAPI merges this into the 200 it documents).
_ANSWERS = {
    "responses": {
        "200": {
            "description": 'the answer; with "stream": true, its events',
            "content": {"application/json": {}, "text/event-stream": {}},
        }
    }
}


def add_generation_route(router: APIRouter, path: str, endpoint: Endpoint, doc: dict[str, Any]) -> None:
    """A generation's POST route, its body and its two kinds of answer documented.

    A direct route (gateway.http.direct_route): the generations' hot path skips FastAPI's request handling.
    """
    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        response_model=None,
        openapi_extra={**doc, **_ANSWERS},
        route_class_override=DirectRoute,
    )


def add_openai_routes(app: FastAPI, core: Core, callback: CompletionCallback | None) -> OpenAIRoutes:
    """Mount the OpenAI routes on `app`, every refusal spelled in OpenAI's error shape."""
    routes = OpenAIRoutes(core, callback)
    router = APIRouter(responses=ERRORS)

    async def chat_completions(request: Request) -> Response:
        return await routes.generation(request, CHAT_ROUTE)

    async def completions(request: Request) -> Response:
        return await routes.generation(request, COMPLETIONS_ROUTE)

    add_generation_route(router, "/v1/chat/completions", chat_completions, _CHAT_DOC)
    add_generation_route(router, "/v1/completions", completions, _COMPLETION_DOC)

    @router.get("/v1/models", response_model=None)
    async def models() -> Response:
        return await routes.models()

    @router.post("/tokenize", response_model=None, openapi_extra=_TOKENIZE_DOC)
    async def tokenize(request: Request) -> Response:
        return await routes.tokens(request, "tokenize")

    @router.post("/detokenize", response_model=None, openapi_extra=_DETOKENIZE_DOC)
    async def detokenize(request: Request) -> Response:
        return await routes.tokens(request, "detokenize")

    app.include_router(router)
    return routes
