"""The four ways a generation ends, and the callback that hears about it."""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request

logger = logging.getLogger(__name__)


class CompletionState(enum.StrEnum):
    """How a generation ended, as reported to the completion callback."""

    SUCCESS = "success"
    CLIENT_DISCONNECTED_WHILE_STREAMING = "client_disconnected_while_streaming"
    CLIENT_DISCONNECTED_BEFORE_STREAMING = "client_disconnected_before_streaming"
    UNKNOWN_ERROR_OCCURRED = "unknown_error_occurred"


CompletionCallback = Callable[[Request, CompletionState], Awaitable[Any] | Any]


async def fire_callback(callback: CompletionCallback | None, request: Request, state: CompletionState) -> None:
    """Call `callback(request, state)`; whatever it raises is logged, never propagated."""
    if callback is None:
        return
    try:
        result = callback(request, state)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("completion callback raised (state %s); the gateway carries on", state.value)
