"""An API route whose endpoint is called with the request alone, without FastAPI's per-request handling.

FastAPI calls each endpoint through dependency solving, two exit stacks and an
exception-handling layer of its own: with a zero-cost engine that is about a
tenth of the gateway's CPU per request. The gateway's generation routes take
only the `Request` and answer with a `Response`, so they need none of it. They
stay APIRoutes, documented in the OpenAPI schema like every other; what they
raise is still answered by the app's handlers, which Starlette's middlewares
outside the router apply (`ExceptionMiddleware`, `ServerErrorMiddleware`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class DirectRoute(APIRoute):
    """An APIRoute for an `async def endpoint(request: Request) -> Response`, called directly."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        parameters = list(inspect.signature(endpoint).parameters.values())
        if not inspect.iscoroutinefunction(endpoint) or len(parameters) != 1:
            raise TypeError(f"a direct route's endpoint is async and takes the request alone: {endpoint!r}")
        call: Callable[[Request], Awaitable[Response]] = endpoint

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            response = await call(Request(scope, receive, send))
            await response(scope, receive, send)

        self.app = app
