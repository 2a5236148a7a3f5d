"""The OpenAI-compatible routes: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

They run their generations on the shared `Core` (same engine, admission,
metrics and completion callback as `/chat_stream`) and differ only in how a
generation is spelled (`OpenAIFormat`). They are stateless: no session is
read and nothing is recorded when a generation ends.
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

from gateway.core import CompletionCallback, Core, GenerationRequest, Outcome, SamplingOptions
from gateway.core.errors import BadChatRequest, EngineUnavailable, GatewayError, ModelNotFound
from gateway.http.limits import read_body
from gateway.openai.format import OpenAIFormat, openai_error_response
from gateway.openai.schema import ChatCompletionRequest, CompletionRequest, OpenAIErrorBody, SamplingFields

logger = logging.getLogger(__name__)

CHAT_ROUTE = "v1/chat/completions"
COMPLETIONS_ROUTE = "v1/completions"

# pydantic names the member of a union that failed ("str", "list[TextPart]"); fields are lower-case names.
_UNION_TAG = re.compile(r"str|int|float|bool|none|[a-z]+\[.*\]|[A-Z]\w*")


async def _record_nothing(outcome: Outcome) -> None:
    """The OpenAI routes are stateless: there is no conversation to update."""


class _GenerationResponse(Response):
    """Runs one generation when Starlette sends the response (so nothing is held before that)."""

    def __init__(
        self,
        core: Core,
        request: Request,
        gen: GenerationRequest,
        fmt: OpenAIFormat,
        callback: CompletionCallback | None,
    ) -> None:
        super().__init__()
        self.core, self.request, self.gen, self.fmt, self.callback = core, request, gen, fmt, callback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.core.run(self.request, send, self.gen, self.fmt, _record_nothing, self.callback)


class OpenAIRoutes:
    """Turns OpenAI request bodies into generations on the core."""

    def __init__(self, core: Core, callback: CompletionCallback | None) -> None:
        self.core = core
        self.callback = callback

    @property
    def model_name(self) -> str:
        return self.core.config.served_model_name or self.core.engine.model_name

    def refuse(self, route: str, error: GatewayError) -> JSONResponse:
        self.core.count_refusal(route, error)
        return openai_error_response(error)

    def options(self, body: SamplingFields) -> SamplingOptions:
        if body.model != self.model_name:
            raise ModelNotFound(f"the model {body.model!r} does not exist; this server serves {self.model_name!r}")
        if body.stream_options is not None and not body.stream:
            raise BadChatRequest("stream_options is only allowed when stream is true", param="stream_options")
        config = self.core.config
        limit_param = body.token_limit_param
        max_tokens = body.token_limit or config.max_new_tokens
        if max_tokens > config.max_new_tokens:
            raise BadChatRequest(f"{limit_param} must be at most {config.max_new_tokens}", param=limit_param)
        if body.min_tokens > max_tokens:
            raise BadChatRequest(f"min_tokens must not exceed {limit_param} ({max_tokens})", param="min_tokens")
        # Unset sampling fields take the server's defaults.
        penalty = config.repetition_penalty if body.repetition_penalty is None else body.repetition_penalty
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=config.temperature if body.temperature is None else body.temperature,
            top_p=config.top_p if body.top_p is None else body.top_p,
            top_k=max(0, config.top_k if body.top_k is None else body.top_k),  # vLLM spells "no cut" as -1 or 0
            min_tokens=body.min_tokens,
            repetition_penalty=penalty,
            stop=body.stops,
            seed=body.seed,
            ignore_eos=body.ignore_eos or config.ignore_eos,
        )

    def generation(
        self, request: Request, route: str, body: SamplingFields, render: Callable[[], str], param: str
    ) -> Response:
        """The response that runs the prompt `render()` gives, or an OpenAI-shaped refusal."""
        engine = self.core.engine
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
        gen = GenerationRequest(
            request_id=f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            route=route,
            prompt_token_ids=ids,
            options=options,
            priority=body.priority,
            user=body.user,
        )
        fmt = OpenAIFormat(gen, self.model_name, chat=chat, streaming=body.stream, include_usage=body.include_usage)
        return _GenerationResponse(self.core, request, gen, fmt, self.callback)


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


def _limited_route(limit: int, refuse: Callable[[str, GatewayError], Response]) -> type[APIRoute]:
    """A route class that bounds the body (`read_body`) and spells every body error in OpenAI's shape."""

    class LimitedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def limited(request: Request) -> Response:
                route = request.url.path.lstrip("/")
                try:
                    body = await read_body(request, limit)
                except GatewayError as err:
                    return refuse(route, err)
                try:
                    return await handler(Request(request.scope, _replay(body, request.receive)))
                except RequestValidationError as exc:
                    message, param = _describe(exc)
                    return refuse(route, BadChatRequest(message, param=param))
                except HTTPException as exc:
                    # FastAPI's own 400 for a body it cannot even decode (not UTF-8):
                    # spelled in OpenAI's error shape like every other /v1 refusal.
                    if exc.status_code != 400:
                        raise
                    return refuse(route, BadChatRequest("the body is not valid JSON"))

            return limited

    return LimitedRoute


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body already read, then the connection's own messages (disconnects)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorBody, "description": text}
    for status, text in [
        (400, "invalid request"),
        (401, "missing or wrong API key"),
        (403, "priority set with a key that may not set it"),
        (404, "unknown model"),
        (413, "body too large"),
        (429, "admission queue full, or a key's limit reached"),
        (503, "engine unavailable, draining, or queue wait timed out"),
    ]
}


def add_openai_routes(app: FastAPI, core: Core, callback: CompletionCallback | None) -> OpenAIRoutes:
    """Mount the OpenAI routes on `app`, every refusal spelled in OpenAI's error shape."""
    routes = OpenAIRoutes(core, callback)
    router = APIRouter(route_class=_limited_route(core.config.max_body_bytes, routes.refuse), responses=_ERRORS)

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        messages = [{"role": m.role, "content": m.text} for m in body.messages]

        def render() -> str:
            try:
                return core.engine.tokenizer.render_chat(messages, add_generation_prompt=True)
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
            "max_model_len": core.engine.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [model]})

    app.include_router(router)
    return routes
