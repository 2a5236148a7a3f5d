"""The event vocabulary of `/chat_stream` (Server-Sent Events), as a `StreamFormat`."""

from __future__ import annotations

import json

from sse_starlette import JSONServerSentEvent

from gateway.core.engine import EngineOutput
from gateway.core.errors import GatewayError, error_body
from gateway.core.generation import Outcome
from gateway.http.sse import PING, SSE_HEADERS, json_string


def delta_event(text: str) -> bytes:
    # Spelled by hand, once per token: the bytes `JSONServerSentEvent({"text": text}, event="delta")`
    # encodes (tests/chat/test_sse.py holds them equal), without building the event.
    return b'event: delta\r\ndata: {"text":' + json_string(text) + b"}\r\n\r\n"


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


class ChatSSE:
    """One `/chat_stream` generation spelled as `delta`, `done` and `error` events."""

    streaming = True
    headers = SSE_HEADERS
    ping = PING

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id

    def opening(self) -> bytes:
        return b""

    def delta(self, output: EngineOutput) -> bytes:
        return delta_event(output.text) if output.text else b""

    def done(self, outcome: Outcome) -> bytes:
        return done_event(
            "success", self.message_id, outcome.finish_reason, outcome.prompt_tokens, outcome.completion_tokens
        )

    def error(self, error: GatewayError) -> bytes:
        return error_event(error.type, error.message)

    def refusal(self, error: GatewayError) -> bytes:
        return json.dumps(error_body(error)).encode()
