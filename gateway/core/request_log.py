"""One log line per request: who writes it.

The access-log middleware (`gateway.http.access_log`) gives every request an
id and logs every request when it ends, unless the generation runner has
already written that request's line (with its completion state, TTFT and
token counts). The two meet in the request's ASGI scope state, through these
helpers.
"""

from __future__ import annotations

from starlette.types import Scope

REQUEST_ID_STATE = "request_id"
LOGGED_STATE = "access_logged"


def request_id_of(scope: Scope) -> str | None:
    """The request id the access middleware gave this request, if it runs."""
    state = scope.get("state")
    return None if state is None else state.get(REQUEST_ID_STATE)


def mark_logged(scope: Scope) -> None:
    """Tell the access middleware that this request's log line is already written."""
    scope.setdefault("state", {})[LOGGED_STATE] = True
