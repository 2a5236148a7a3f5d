"""create_app: the gateway as a FastAPI application, wired from Settings."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from gateway import api_docs
from gateway.access_log import AccessLogMiddleware
from gateway.auth import APIKeyMiddleware
from gateway.chat_stream import ChatStream
from gateway.completion import CompletionCallback
from gateway.engine import Engine
from gateway.metrics import CONTENT_TYPE
from gateway.openai_api import add_openai_routes
from gateway.page import add_cors, add_page
from gateway.persistent import ConversationIdHeader, PersistentConversations, make_persistent_conversations
from gateway.sessions import SessionMiddleware
from gateway.settings import Settings
from gateway.stores import MemoryStore, SessionStore

logger = logging.getLogger(__name__)


def make_store(settings: Settings) -> SessionStore:
    if settings.session_store == "memory":
        return MemoryStore(idle_timeout=settings.session_idle_timeout, max_sessions=settings.max_sessions)
    if settings.session_store.startswith(("redis://", "rediss://", "unix://")):
        from gateway.redis_store import RedisStore

        return RedisStore.from_url(settings.session_store, idle_timeout=settings.session_idle_timeout)
    raise ValueError(f"unknown session store {settings.session_store!r}: use 'memory' or a redis:// URL")


def make_chat_stream(settings: Settings, engine: Engine | None = None) -> ChatStream:
    """The ChatStream these settings describe; `engine` replaces vLLM (tests, benchmarks)."""
    model = None if engine is not None else (settings.model or str(settings.tiny_model_dir))
    chat = ChatStream(
        model,
        engine=engine,
        engine_args=settings.engine_args(),
        num_of_concurrent_executions=settings.concurrency,
        max_queue_size=settings.queue_size,
        queue_timeout=settings.queue_timeout,
        max_new_tokens=settings.max_new_tokens,
        system_prompt=settings.system_prompt,
        prompt_format=settings.prompt_format,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        repetition_penalty=settings.repetition_penalty,
        ignore_eos=settings.ignore_eos,
        max_input_chars=settings.max_input_chars,
        max_history_messages=settings.max_history_messages,
        max_body_bytes=settings.max_body_bytes,
        send_timeout=settings.send_timeout,
        ping_interval=settings.ping_interval,
    )
    if settings.conversation_db is not None:
        chat.conversations = make_persistent_conversations(settings, chat.new_prompt)
    return chat


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    chat_stream: ChatStream | None = None,
    callback: CompletionCallback | None = None,
) -> FastAPI:
    """The whole gateway: `/chat_stream` and its helpers, the OpenAI routes, health and metrics."""
    settings = settings or Settings()
    chat = chat_stream or make_chat_stream(settings, engine)
    store = make_store(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with chat.lifespan(app):
            try:
                yield
            finally:
                await store.close()
                if isinstance(chat.conversations, PersistentConversations):
                    await chat.conversations.close()

    app = FastAPI(title="chatstream-gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.chat_stream = chat
    app.state.settings = settings
    if isinstance(chat.conversations, PersistentConversations):
        chat.conversations.add_routes(app)
        app.add_middleware(ConversationIdHeader)

    secret_keys = settings.session_secrets()
    if not secret_keys:
        logger.warning("no --session-secret given: sessions last only as long as this process")
        secret_keys = [secrets.token_urlsafe(32)]
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_keys,
        store=store,
        cookie_name=settings.cookie_name,
        secure=settings.secure_cookies,
    )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"type": kind, "message": str(exc.detail)}}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s", request.url.path)
        body = {"error": {"type": "internal_error", "message": "the server failed to handle this request"}}
        return JSONResponse(body, status_code=500)

    @app.post("/chat_stream", **api_docs.CHAT_STREAM)
    async def chat_stream_route(request: Request) -> Response:
        return await chat.handle_chat_stream_request(request, callback=callback)

    @app.post("/clear_context", **api_docs.CLEAR_CONTEXT)
    async def clear_context(request: Request) -> Response:
        return await chat.handle_clear_context_request(request)

    @app.get("/get_prompt", **api_docs.GET_PROMPT)
    async def get_prompt(request: Request) -> Response:
        return await chat.handle_get_prompt_request(request)

    @app.get("/get_generation_params", **api_docs.GET_GENERATION_PARAMS)
    async def get_generation_params(request: Request) -> Response:
        return await chat.handle_get_generation_params_request(request)

    @app.post("/set_generation_params", **api_docs.SET_GENERATION_PARAMS)
    async def set_generation_params(request: Request) -> Response:
        return await chat.handle_set_generation_params_request(request)

    @app.get("/get_load", **api_docs.GET_LOAD)
    async def get_load(request: Request) -> Response:
        return await chat.handle_get_load_request(request)

    @app.get("/health", **api_docs.HEALTH)
    async def health() -> Response:
        if chat.engine.is_healthy():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "engine_unavailable"}, status_code=503)

    @app.get("/ready", **api_docs.HEALTH)
    async def ready() -> Response:
        if chat.engine.is_healthy() and not chat.admission.draining:
            return JSONResponse({"status": "ready"})
        status = "draining" if chat.admission.draining else "engine_unavailable"
        return JSONResponse({"status": status}, status_code=503)

    @app.get("/metrics", **api_docs.METRICS)
    async def metrics() -> Response:
        return Response(chat.metrics.render(), media_type=CONTENT_TYPE)

    add_openai_routes(app, chat, settings.served_model_name, callback)
    api_keys = settings.api_keys()
    if api_keys:
        app.add_middleware(
            APIKeyMiddleware,
            keys=api_keys,
            metrics_auth=settings.metrics_auth,
            on_refusal=lambda route, err: chat.metrics.rejections.labels(route, err.type).inc(),
        )
    add_page(app)
    # Added last, so it is the outermost middleware: preflight requests are
    # answered before any session or key check, and refusals carry CORS headers.
    add_cors(app, settings)
    # Outside even CORS, so every response (preflights included) carries X-Request-Id.
    app.add_middleware(AccessLogMiddleware)
    return app
