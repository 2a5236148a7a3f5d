"""The app-wide answers for what no route handled: unknown paths, wrong methods, bugs.

Every other refusal is a `GatewayError` answered by the route that raised it,
in its API's shape; these handlers catch the rest, so a client never sees a
traceback or the text of an internal exception.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from gateway.core.errors import InvalidBody, error_response

logger = logging.getLogger(__name__)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"type": kind, "message": str(exc.detail)}}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> Response:
        # Routes of the gateway validate their own bodies; this is for routes an embedding app adds.
        return error_response(InvalidBody("the request does not match the route's schema"))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s", request.url.path)
        body = {"error": {"type": "internal_error", "message": "the server failed to handle this request"}}
        return JSONResponse(body, status_code=500)
