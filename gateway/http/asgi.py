"""What the gateway's pure ASGI middlewares share: touch the response's start; the path that is routed."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Message, Scope, Send


def on_response_start(send: Send, edit: Callable[[Message], None]) -> Send:
    """`send`, with `edit` applied to the `http.response.start` message (e.g. to add headers) before it goes."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            edit(message)
        await send(message)

    return wrapped


def add_headers(message: Message, headers: list[tuple[bytes, bytes]]) -> None:
    """Append raw headers to an `http.response.start` message."""
    message["headers"] = [*message.get("headers", ()), *headers]


def route_path(scope: Scope) -> str:
    """The path the app routes on: `scope["path"]` without the app's `root_path` (a mount or `--root-path`).

    The same rule as Starlette's router (`starlette._utils.get_route_path`), so a
    middleware that guards routes by path sees exactly the path that is routed.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path
