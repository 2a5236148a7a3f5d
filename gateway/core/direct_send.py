"""The response body's short way to the server, past middlewares that only touch the response's start.

Every middleware of the gateway wraps `send` to edit the `http.response.start`
message (headers, cookies, the status it logs) and passes each body message
on unchanged. A stream sends one body message per token, and each of those
wrappers costs a coroutine call on the way down. So the outermost middleware
of the gateway (`gateway.http.direct_send`) leaves the `send` it was given in
the request's scope state, and once the response's start has gone down the
whole chain the runner sends the body straight to it. Anything outside that
middleware (a user's own, added after `create_app`) still sees every message.
"""

from __future__ import annotations

from starlette.types import Scope, Send

DIRECT_SEND_STATE = "direct_send"


def direct_send(scope: Scope) -> Send | None:
    """The `send` of the outermost gateway middleware, if it runs (None: use the chain's own)."""
    state = scope.get("state")
    return None if state is None else state.get(DIRECT_SEND_STATE)
