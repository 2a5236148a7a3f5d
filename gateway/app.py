"""create_app: the whole gateway as a FastAPI application, wired from one `Config`.

One `Core` (engine, admission, runner, metrics) serves both faces: the
ChatStream API (`/chat_stream` and its helpers) and the OpenAI API (`/v1`).
Around them: sessions and conversations (where state lives), and the HTTP
plumbing (keys, request ids, the page, CORS).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from gateway.chat import ChatStream, api_docs
from gateway.conversations import ConversationIdHeader, PersistentConversations
from gateway.core import CompletionCallback, Core, Engine
from gateway.core.metrics import CONTENT_TYPE
from gateway.http.access_log import AccessLogMiddleware
from gateway.http.auth import APIKeyMiddleware, UserKeys
from gateway.http.errors import add_error_handlers
from gateway.http.page import add_cors, add_page
from gateway.http.replica import ReplicaHeaders
from gateway.openai import add_openai_routes
from gateway.openai.format import openai_error_body
from gateway.sessions import MemoryStore, RedisStore, SessionMiddleware, SessionStore
from gateway.settings import Config, Settings

logger = logging.getLogger(__name__)


def make_store(config: Config) -> SessionStore:
    """The session store `config.session_store` names: 'memory' or a redis:// URL."""
    if config.session_store == "memory":
        return MemoryStore(idle_timeout=config.session_idle_timeout, max_sessions=config.max_sessions)
    if config.session_store.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore.from_url(config.session_store, idle_timeout=config.session_idle_timeout)
    raise ValueError(f"unknown session store {config.session_store!r}: use 'memory' or a redis:// URL")


def make_chat_stream(config: Config, engine: Engine | None = None) -> ChatStream:
    """The ChatStream these settings describe; `engine` replaces vLLM (tests, benchmarks)."""
    chat = ChatStream(core=Core(config, engine))
    if config.conversation_db is not None:
        if config.users_file is None:
            raise ValueError("--conversation-db needs --users-file (lines of 'API_KEY USER_ID')")
        users = UserKeys.from_file(config.users_file)
        chat.conversations = PersistentConversations(users, config.conversation_db, chat.new_prompt)
    return chat


def create_app(
    config: Config | None = None,
    *,
    engine: Engine | None = None,
    chat_stream: ChatStream | None = None,
    callback: CompletionCallback | None = None,
) -> FastAPI:
    """The whole gateway: `/chat_stream` and its helpers, the OpenAI routes, health and metrics.

    A given `chat_stream` brings its own core (engine, admission, generation
    settings); `config` then governs the rest (sessions, keys, the page).
    """
    config = config or Settings()
    chat = chat_stream or make_chat_stream(config, engine)
    core = chat.core
    store = make_store(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with core.lifespan(app):
            try:
                yield
            finally:
                await store.close()
                if isinstance(chat.conversations, PersistentConversations):
                    await chat.conversations.close()

    app = FastAPI(title="chatstream-gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.chat_stream = chat
    app.state.core = core
    app.state.settings = config
    if isinstance(chat.conversations, PersistentConversations):
        chat.conversations.add_routes(app)
        app.add_middleware(ConversationIdHeader)

    secret_keys = config.session_secrets()
    if not secret_keys:
        logger.warning("no --session-secret given: sessions last only as long as this process")
        secret_keys = [secrets.token_urlsafe(32)]
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_keys,
        store=store,
        cookie_name=config.cookie_name,
        secure=config.secure_cookies,
    )
    add_error_handlers(app)

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
        if core.engine.is_healthy():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "engine_unavailable"}, status_code=503)

    @app.get("/ready", **api_docs.HEALTH)
    async def ready() -> Response:
        if core.ready:
            return JSONResponse({"status": "ready"})
        status = "draining" if core.admission.draining else "engine_unavailable"
        return JSONResponse({"status": status}, status_code=503)

    @app.get("/metrics", **api_docs.METRICS)
    async def metrics() -> Response:
        return Response(core.metrics.render(), media_type=CONTENT_TYPE)

    add_openai_routes(app, core, callback)
    api_keys = config.api_keys()
    if api_keys:
        app.add_middleware(
            APIKeyMiddleware,
            keys=api_keys,
            error_body=openai_error_body,
            metrics_auth=config.metrics_auth,
            on_refusal=core.count_refusal,
        )
    add_page(app)
    # Added last, so it is the outermost middleware: preflight requests are
    # answered before any session or key check, and refusals carry CORS headers.
    add_cors(app, config)
    # Outside CORS, so a router sees the replica and its load on every answer, preflights included.
    app.add_middleware(
        ReplicaHeaders,
        replica_id=config.replica_id,
        load=core.admission.load,
        secure=config.secure_cookies,
        overload_status=config.overload_status,
    )
    # Outside even CORS, so every response (preflights included) carries X-Request-Id.
    app.add_middleware(AccessLogMiddleware)
    return app
