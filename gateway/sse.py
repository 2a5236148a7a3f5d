"""The event vocabulary of `/chat_stream` (Server-Sent Events)."""

from __future__ import annotations

from sse_starlette import JSONServerSentEvent, ServerSentEvent

# `X-Accel-Buffering: no` stops nginx from holding events back.
SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]

PING = ServerSentEvent(comment="ping").encode()


def delta_event(text: str) -> bytes:
    return JSONServerSentEvent({"text": text}, event="delta").encode()


def done_event(
    state: str, message_id: str, finish_reason: str | None, prompt_tokens: int, completion_tokens: int
) -> bytes:
    return JSONServerSentEvent(
        {
            "state": state,
            "message_id": message_id,
            "finish_reason": finish_reason,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        },
        event="done",
    ).encode()


def error_event(type: str, message: str) -> bytes:
    return JSONServerSentEvent({"error": {"type": type, "message": message}}, event="error").encode()
