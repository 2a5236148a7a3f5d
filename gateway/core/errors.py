"""The gateway's errors, each carrying what its HTTP answer needs.

Every refusal is raised as one of these and turned into a response in one
place (`error_response`), so a client never sees a traceback or the text of an
internal exception.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.responses import JSONResponse

logger = logging.getLogger(__name__)
T = TypeVar("T")


class GatewayError(Exception):
    """A request the gateway refuses; `status` and `type` form the HTTP answer."""

    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.param = param


class BadChatRequest(GatewayError):
    status, type = 400, "invalid_request"


class PromptTooLong(BadChatRequest):
    """The prompt leaves no room for an answer in the model's context (a stored chain trims and retries)."""

    type = "prompt_too_long"


class InvalidBody(GatewayError):
    status, type = 422, "invalid_body"


class BodyTooLarge(GatewayError):
    status, type = 413, "body_too_large"


class Unauthorized(GatewayError):
    status, type = 401, "invalid_api_key"


class NotFound(GatewayError):
    status, type = 404, "not_found"


class ModelNotFound(NotFound):
    """An OpenAI request named a model this gateway does not serve."""

    type = "model_not_found"


class SessionBusy(GatewayError):
    status, type = 409, "session_busy"


class Forbidden(GatewayError):
    status, type = 403, "forbidden"


class PriorityNotAllowed(Forbidden):
    """A request set `priority` with a key that may not."""

    type = "priority_not_allowed"


class Overloaded(GatewayError):
    """The admission queue is full (and this request's user holds the largest share of it)."""

    status, type = 429, "too_many_requests"


class Displaced(Overloaded):
    """A waiting request gave its place to a lighter user's when the queue was full."""

    type = "displaced"


class LimitReached(Overloaded):
    """One of the key's limits is reached; `limit` names it (`concurrent_requests`, `requests_per_minute` ...)."""

    def __init__(self, limit: str, value: int, retry_after: float) -> None:
        super().__init__(f"this key's {limit} limit ({value}) is reached; try again later", retry_after=retry_after)
        self.limit = limit
        self.value = value
        self.type = f"{limit}_limit"


class EngineUnavailable(GatewayError):
    """The engine is not ready, has died, or the gateway is draining."""

    status, type = 503, "engine_unavailable"


class QueueTimeout(GatewayError):
    status, type = 503, "queue_timeout"


class SessionStoreUnavailable(GatewayError):
    status, type = 503, "session_store_unavailable"


class FailureLog:
    """Store failures logged a line per store and kind every `every` seconds, counting those held back.

    An outage under load fails every request and every running response's lease
    renewal: a line each would flood the log while saying one thing.
    """

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._lines: dict[tuple[str, str], tuple[float, int]] = {}  # (store, kind) -> last line's time, held since

    def failed(self, store: str, kind: str) -> None:
        now = self.clock()
        last = self._lines.get((store, kind))
        if last is not None and now - last[0] < self.every:
            self._lines[store, kind] = (last[0], last[1] + 1)
            return
        self._lines[store, kind] = (now, 0)
        if last is not None and last[1]:
            logger.warning("the %s failed: %s (%d more since the last line)", store, kind, last[1])
        else:
            logger.warning("the %s failed: %s", store, kind)


store_failures = FailureLog()


async def store_call(pending: Awaitable[T], store: str) -> T:
    """Await an operation of `store` (e.g. "session store"): its outage is a 503 the client can retry.

    A GatewayError it raises (a session too large, say) passes as it is; any
    other failure (Redis or the database away) is logged by kind only
    (`store_failures`), never shown to the client.
    """
    try:
        return await pending
    except GatewayError:
        raise
    except Exception as exc:
        store_failures.failed(store, type(exc).__name__)
        raise SessionStoreUnavailable(f"the {store} is unavailable", retry_after=5) from exc


class SessionTooLarge(GatewayError):
    """A session would outgrow the store's `max_session_bytes` (conversations trim themselves first)."""

    status, type = 413, "session_too_large"


class UnsupportedMediaType(GatewayError):
    """A JSON route was sent a body of another Content-Type."""

    status, type = 415, "unsupported_media_type"


def error_body(error: GatewayError) -> dict[str, dict[str, str]]:
    return {"error": {"type": error.type, "message": error.message}}


def error_headers(error: GatewayError) -> dict[str, str]:
    if error.retry_after is None:
        return {}
    return {"Retry-After": str(max(1, round(error.retry_after)))}


def error_response(error: GatewayError) -> JSONResponse:
    """The plain JSON answer for a request refused before streaming."""
    return JSONResponse(error_body(error), status_code=error.status, headers=error_headers(error))
