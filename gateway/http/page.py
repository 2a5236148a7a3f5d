"""The browser chat page at `/`, its static files, and the optional CORS policy.

The page is plain HTML, CSS and JavaScript shipped inside the package (no
build step, nothing fetched from elsewhere), so it works offline and a strict
Content-Security-Policy can forbid every script that is not one of its files.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.http.asgi import add_headers, on_response_start
from gateway.settings import Config

STATIC_DIR = Path(__file__).parent / "static"

# Only the page's own files may run or style it; model output can never add a
# script (the renderer builds text nodes), and this is the second line of defence.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

PAGE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class _WithPageHeaders:
    """Adds the page's security headers to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, on_response_start(send, lambda message: add_headers(message, PAGE_HEADERS)))


def add_page(app: FastAPI) -> None:
    """Serve the chat page at `/` and its files under `/static/`."""
    index = STATIC_DIR / "index.html"
    headers = {name.decode(): value.decode() for name, value in PAGE_HEADERS}

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        # no-cache: a new gateway version is picked up on the next load.
        return FileResponse(index, media_type="text/html", headers={**headers, "cache-control": "no-cache"})

    app.mount("/static", _WithPageHeaders(StaticFiles(directory=STATIC_DIR)), name="static")


def add_cors(app: FastAPI, config: Config) -> None:
    """Let the browsers of `config.cors_origin` call the API; off when the list is empty.

    Credentials are never allowed cross-origin: another front end cannot ride
    on a user's session cookie, so each of its requests is its own session
    unless it sends its own bearer key.
    """
    if not config.cors_origin:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=config.cors_origin,
        allow_credentials=False,
        allow_methods=["GET", "POST", "DELETE"],
        # What the API reads and answers beside the body: the conversation named and returned
        # (X-Conversation-Id), the request id a client may send and read back (X-Request-Id).
        allow_headers=["Authorization", "Content-Type", "X-Conversation-Id", "X-Request-Id"],
        expose_headers=["Retry-After", "X-Message-Id", "X-Conversation-Id", "X-Request-Id"],
        max_age=600,
    )
