"""The OpenAI-compatible routes: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

They run their generations through the same `GenerationRunner` as
`/chat_stream` (same engine, admission, metrics and completion callback) and
differ only in how a generation is spelled (`OpenAIFormat`). They are
stateless: no session is read and nothing is recorded when a generation ends.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from gateway.chat_stream import ChatStream
from gateway.completion import CompletionCallback
from gateway.engine import SamplingOptions
from gateway.errors import (
    BadChatRequest,
    BodyTooLarge,
    EngineUnavailable,
    GatewayError,
    InvalidBody,
    ModelNotFound,
    error_response,
)
from gateway.openai_format import OpenAIFormat, openai_error_response
from gateway.openai_schema import ChatCompletionRequest, CompletionRequest, OpenAIErrorBody, SamplingFields
from gateway.streaming import Generation

logger = logging.getLogger(__name__)

CHAT_ROUTE = "v1/chat/completions"
COMPLETIONS_ROUTE = "v1/completions"

# pydantic names the member of a union that failed ("str", "list[TextPart]"); fields are lower-case names.
_UNION_TAG = re.compile(r"str|int|float|bool|none|[a-z]+\[.*\]|[A-Z]\w*")


async def _record_nothing(gen: Generation) -> None:
    """The OpenAI routes are stateless: there is no conversation to update."""


class _GenerationResponse(Response):
    """Runs one generation when Starlette sends the response (so nothing is held before that)."""

    def __init__(
        self,
        chat: ChatStream,
        request: Request,
        gen: Generation,
        fmt: OpenAIFormat,
        callback: CompletionCallback | None,
    ) -> None:
        super().__init__()
        self.chat, self.request, self.gen, self.fmt, self.callback = chat, request, gen, fmt, callback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.chat.runner.run(self.request, send, self.gen, self.fmt, _record_nothing, self.callback)


class OpenAIRoutes:
    """Turns OpenAI request bodies into generations on `chat`'s engine and runner."""

    def __init__(self, chat: ChatStream, served_model_name: str | None, callback: CompletionCallback | None) -> None:
        self.chat = chat
        self._served_model_name = served_model_name
        self.callback = callback

    @property
    def model_name(self) -> str:
        return self._served_model_name or self.chat.engine.model_name

    def refuse(self, route: str, error: GatewayError) -> JSONResponse:
        self.chat.metrics.rejections.labels(route, error.type).inc()
        return openai_error_response(error)

    def options(self, body: SamplingFields) -> SamplingOptions:
        if body.model != self.model_name:
            raise ModelNotFound(f"the model {body.model!r} does not exist; this server serves {self.model_name!r}")
        if body.stream_options is not None and not body.stream:
            raise BadChatRequest("stream_options is only allowed when stream is true", param="stream_options")
        limit_param = body.token_limit_param
        max_tokens = body.token_limit or self.chat.max_new_tokens
        if max_tokens > self.chat.max_new_tokens:
            raise BadChatRequest(f"{limit_param} must be at most {self.chat.max_new_tokens}", param=limit_param)
        if body.min_tokens > max_tokens:
            raise BadChatRequest(f"min_tokens must not exceed {limit_param} ({max_tokens})", param="min_tokens")
        defaults = self.chat.default_params

        def pick(value: float | None, name: str) -> Any:
            return defaults[name] if value is None else value

        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=float(pick(body.temperature, "temperature")),
            top_p=float(pick(body.top_p, "top_p")),
            top_k=max(0, int(pick(body.top_k, "top_k"))),  # vLLM spells "no cut" as -1 or 0
            min_tokens=body.min_tokens,
            repetition_penalty=float(pick(body.repetition_penalty, "repetition_penalty")),
            stop=body.stops,
            seed=body.seed,
            ignore_eos=body.ignore_eos or self.chat.ignore_eos,
        )

    def generation(
        self, request: Request, route: str, body: SamplingFields, render: Callable[[], str], param: str
    ) -> Response:
        """The response that runs the prompt `render()` gives, or an OpenAI-shaped refusal."""
        engine = self.chat.engine
        try:
            options = self.options(body)
            if not engine.is_healthy():  # the tokenizer goes with the engine
                raise EngineUnavailable("the engine is not available", retry_after=5)
            ids = engine.tokenizer.encode(render())
            room = engine.max_model_len - options.max_tokens
            if not ids or len(ids) > room:
                raise BadChatRequest(
                    f"the prompt has {len(ids)} tokens; with max_tokens={options.max_tokens} it must have "
                    f"between 1 and {room} (the model's context is {engine.max_model_len} tokens)",
                    param=param,
                )
        except GatewayError as err:
            return self.refuse(route, err)
        chat = route == CHAT_ROUTE
        gen = Generation(
            request_id=f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            route=route,
            prompt_token_ids=ids,
            options=options,
        )
        fmt = OpenAIFormat(gen, self.model_name, chat=chat, streaming=body.stream, include_usage=body.include_usage)
        return _GenerationResponse(self.chat, request, gen, fmt, self.callback)


def _describe(exc: RequestValidationError) -> tuple[str, str | None]:
    """A message and the offending field for a body pydantic refused, without echoing the input."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return "the body is not valid JSON", None
    parts, param = [], None
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())[1:] if not _UNION_TAG.fullmatch(str(p))]
        where = ".".join(loc)
        param = param or where or None
        msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{where or 'body'}: {msg}")
    return "; ".join(parts), param


class _BodyOverLimit(HTTPException):
    """Raised from `receive` once a body passes the limit (FastAPI lets HTTPExceptions through)."""


def _limited_route(limit: int, refuse: Callable[[str, GatewayError], Response]) -> type[APIRoute]:
    """A route class that refuses bodies over `limit` bytes (413) before they are buffered whole."""

    class LimitedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def limited(request: Request) -> Response:
                route = request.url.path.lstrip("/")
                too_large = BodyTooLarge(f"the body is larger than {limit} bytes")
                declared = request.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    return refuse(route, too_large)
                seen = 0

                async def receive() -> Message:
                    nonlocal seen
                    message = await request.receive()
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        raise _BodyOverLimit(413)
                    return message

                try:
                    return await handler(Request(request.scope, receive))
                except _BodyOverLimit:
                    return refuse(route, too_large)
                except HTTPException as exc:
                    # FastAPI's own 400 for a body it cannot even decode (not UTF-8):
                    # spelled in OpenAI's error shape like every other /v1 refusal.
                    if exc.status_code != 400:
                        raise
                    return refuse(route, BadChatRequest("the body is not valid JSON"))

            return limited

    return LimitedRoute


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorBody, "description": text}
    for status, text in [
        (400, "invalid request"),
        (401, "missing or wrong API key"),
        (404, "unknown model"),
        (413, "body too large"),
        (429, "admission queue full"),
        (503, "engine unavailable, draining, or queue wait timed out"),
    ]
}


def add_openai_routes(
    app: FastAPI, chat: ChatStream, served_model_name: str | None, callback: CompletionCallback | None
) -> OpenAIRoutes:
    """Mount the OpenAI routes on `app`, and spell body errors under /v1 in OpenAI's shape."""
    routes = OpenAIRoutes(chat, served_model_name, callback)
    router = APIRouter(route_class=_limited_route(chat.max_body_bytes, routes.refuse), responses=_ERRORS)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> Response:
        message, param = _describe(exc)
        route = request.url.path.lstrip("/")
        if not route.startswith("v1/"):
            chat.metrics.rejections.labels(route, InvalidBody.type).inc()
            return error_response(InvalidBody(message))
        return routes.refuse(route, BadChatRequest(message, param=param))

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        messages = [{"role": m.role, "content": m.text} for m in body.messages]

        def render() -> str:
            try:
                return chat.engine.tokenizer.render_chat(messages, add_generation_prompt=True)
            except Exception as exc:  # a model's template may refuse a conversation (e.g. roles out of order)
                logger.info("the chat template refused a conversation: %s", type(exc).__name__)
                raise BadChatRequest("the model's chat template rejects these messages", param="messages") from None

        return routes.generation(request, CHAT_ROUTE, body, render, "messages")

    @router.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return routes.generation(request, COMPLETIONS_ROUTE, body, lambda: body.prompt, "prompt")

    @router.get("/v1/models")
    async def models() -> Response:
        model = {
            "id": routes.model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "chatstream-gateway",
            "max_model_len": chat.engine.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [model]})

    app.include_router(router)
    return routes
