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
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from gateway.chat import ChatStream, api_docs
from gateway.conversations import ConversationIdHeader, PersistentConversations
from gateway.core import CompletionCallback, Core, Engine
from gateway.core.claims import Admission
from gateway.core.errors import GatewayError, error_body
from gateway.core.metrics import CONTENT_TYPE
from gateway.http.access_log import AccessLogMiddleware
from gateway.http.admin import add_admin_routes
from gateway.http.admission import AdmissionMiddleware
from gateway.http.auth import APIKeyMiddleware, UserKeys
from gateway.http.direct_route import DirectRoute
from gateway.http.direct_send import GatewayApp
from gateway.http.errors import add_error_handlers
from gateway.http.identity import identify_by
from gateway.http.keys import read_keys_file, shorthand_keys
from gateway.http.page import add_cors, add_page
from gateway.http.replica import ReplicaHeaders
from gateway.openai import ResponseStore, add_conversation_routes, add_openai_routes, add_responses_routes
from gateway.openai.format import openai_error_body
from gateway.sessions import MemoryStore, RedisStore, SessionCookie, SessionMiddleware, SessionStore, SQLStore
from gateway.settings import REDIS_URL_PREFIXES, Config, Settings
from gateway.sql import SQL_URL_FORMS, sql_dialect

logger = logging.getLogger(__name__)


def make_store(config: Config) -> SessionStore:
    """The session store `config.session_store` names: 'memory', a redis:// or an SQL URL, with its bounds."""
    if config.session_store == "memory":
        return MemoryStore(
            idle_timeout=config.session_idle_timeout,
            max_sessions=config.max_sessions,
            max_session_bytes=config.max_session_bytes,
            max_bytes=config.max_store_bytes,
            lock_timeout=config.session_lock_timeout,
        )
    bounds: dict[str, Any] = {
        "idle_timeout": config.session_idle_timeout,
        "max_sessions": config.max_sessions,
        "max_session_bytes": config.max_session_bytes,
        "lock_timeout": config.session_lock_timeout,
    }
    if config.session_store.startswith(REDIS_URL_PREFIXES):
        return RedisStore.from_url(config.session_store, **bounds)
    if sql_dialect(config.session_store) is not None:
        return SQLStore.from_url(config.session_store, **bounds)
    raise ValueError(f"unknown session store {config.session_store!r}: use 'memory', a redis:// URL or {SQL_URL_FORMS}")


async def check_store(store: SessionStore) -> None:
    """Fail the start, with a clear message, when the session store cannot be reached.

    Otherwise a wrong `--session-store` would only show as a 503 on every request.
    (Once running, an outage is answered with 503s and the store reconnects by itself.)
    """
    try:
        await store.ping()
    except Exception as exc:
        message = f"the session store cannot be reached ({type(exc).__name__}: {exc}): check --session-store"
        logger.error("%s", message)
        raise RuntimeError(message) from exc


def make_user_keys(config: Config) -> UserKeys | None:
    """The API keys `config` names (`--api-key` and `--keys-file`), or None when there are none."""
    entries = shorthand_keys(k.get_secret_value() for k in config.api_key)
    if config.keys_file is not None:
        entries += read_keys_file(config.keys_file)
    return UserKeys(entries) if entries else None


def make_chat_stream(
    config: Config, engine: Engine | None = None, keys: UserKeys | None = None, admission: Admission | None = None
) -> ChatStream:
    """The ChatStream these settings describe; `engine` replaces vLLM (tests, benchmarks).

    `admission` is the gateway-wide admission a front-end process shares (gateway.processes).
    """
    chat = ChatStream(core=Core(config, engine, admission=admission))
    if config.conversation_db is not None:
        keys = keys or make_user_keys(config)
        if keys is None:
            raise ValueError(
                "--conversation-db needs API keys (--keys-file or --api-key): conversations are the keys' users'"
            )
        chat.conversations = PersistentConversations(keys, config.conversation_db, chat.new_prompt)
    return chat


def _error_body(path: str, error: GatewayError) -> Any:
    """A refusal in the shape of the path's API: OpenAI's under /v1, the gateway's own elsewhere."""
    return openai_error_body(error) if path.startswith("/v1/") else error_body(error)


def create_app(
    config: Config | None = None,
    *,
    engine: Engine | None = None,
    chat_stream: ChatStream | None = None,
    callback: CompletionCallback | None = None,
    store: SessionStore | None = None,
) -> FastAPI:
    """The whole gateway: `/chat_stream` and its helpers, the OpenAI routes, health and metrics.

    A given `chat_stream` brings its own core (engine, admission, generation
    settings); `config` then governs the rest (sessions, keys, the page).
    A given `store` replaces the one `config.session_store` names.
    Configuration errors raise ValueError here, not on the first request.
    """
    config = config or Settings()
    keys = make_user_keys(config)
    chat = chat_stream or make_chat_stream(config, engine, keys)
    core = chat.core
    store = make_store(config) if store is None else store

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await check_store(store)  # before the engine: a wrong store fails the start in a second
        async with core.lifespan(app):
            await openai_routes.prepare()
            try:
                yield
            finally:
                await store.close()
                if isinstance(chat.conversations, PersistentConversations):
                    await chat.conversations.close()

    app = GatewayApp(title="chatstream-gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
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
    # Outside the sessions (and inside the key check): a generation claims its place, or
    # is refused, before its session is loaded; it tells sessions apart by their signed ids.
    app.add_middleware(
        AdmissionMiddleware,
        admission=core.admission,
        identify=identify_by(keys, SessionCookie(secret_keys, config.cookie_name)),
        error_body=_error_body,
        ready=core.engine.is_healthy,
        on_refusal=core.count_refusal,
    )
    add_error_handlers(app)

    async def chat_stream_route(request: Request) -> Response:
        return await chat.handle_chat_stream_request(request, callback=callback)

    # A direct route (gateway.http.direct_route): the generations' hot path skips FastAPI's request handling.
    app.router.add_api_route(
        "/chat_stream", chat_stream_route, methods=["POST"], route_class_override=DirectRoute, **api_docs.CHAT_STREAM
    )

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
        await core.admission.aload()  # a front-end process of several asks for the gateway-wide figures now
        return Response(core.metrics.render(), media_type=CONTENT_TYPE)

    openai_routes = add_openai_routes(app, core, callback)
    response_store = ResponseStore(store)
    app.state.responses = add_responses_routes(app, openai_routes, response_store)
    add_conversation_routes(app, openai_routes, response_store)
    if keys is not None:
        if keys.has_admin:
            add_admin_routes(app, core.admission)
        app.add_middleware(
            APIKeyMiddleware,
            keys=keys,
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
    # A stream's body goes from the runner past all of these (gateway.core.direct_send), so
    # every middleware above must only edit the response's start; one added later sees it all.
    app.own_middleware = len(app.user_middleware)
    # Starlette builds the middleware stack on the first request: a middleware that refuses
    # its settings (a short session secret) would then answer 500 to every request. Build
    # it once now, so the error comes from create_app; the app builds its own on start.
    app.build_middleware_stack()
    return app
