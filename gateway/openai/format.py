"""What both OpenAI formats share: the error shape, JSON, the chunk head, usage.

`ChatFormat` and `CompletionFormat` spell one generation as OpenAI chunks
(`data: {...}` lines, then `data: [DONE]`) or one JSON body. Both keep one
small `Answer` record per choice, and a fast path for plain text: one
pre-encoded chunk prefix per generation, no per-token objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse

from gateway.core.errors import GatewayError, error_headers
from gateway.core.generation import GenerationRequest, Outcome
from gateway.http.sse import PING, SSE_HEADERS
from gateway.openai.frontend import AnswerParser, AnswerSpec
from gateway.openai.logprobs import TokenText

_TYPE_BY_STATUS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
DONE = b"data: [DONE]\n\n"
JSON_HEADERS = [(b"content-type", b"application/json")]


def openai_error_body(error: GatewayError) -> dict[str, dict[str, str | None]]:
    """OpenAI's error shape; `code` is the gateway's machine-readable error type (a string, as OpenAI's)."""
    kind = _TYPE_BY_STATUS.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.type}}


def openai_error_response(error: GatewayError) -> JSONResponse:
    return JSONResponse(openai_error_body(error), status_code=error.status, headers=error_headers(error))


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def event(value: Any) -> bytes:
    return b"data: " + dumps(value) + b"\n\n"


def usage(
    prompt: int, completion: int, reasoning: int | None = None, cached: tuple[int, int] | None = None
) -> dict[str, Any]:
    """OpenAI's usage; details only when there is something in them (never null).

    `cached`: the prompt tokens the prefix cache served and those it newly cached.
    """
    body: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        body["prompt_tokens_details"] = {"cached_tokens": cached[0], "cache_write_tokens": cached[1]}
    if reasoning is not None:
        body["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return body


@dataclass(eq=False, slots=True)
class Answer:
    """One choice of one generation, as it arrives."""

    index: int
    prompt_index: int = 0
    parser: AnswerParser | None = None
    opened: bool = False  # its first chunk (the role, the echo) has been sent
    tokens: int = 0
    parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)  # chat: entries; completions: the engine's records
    streamed_tool_calls: bool = False
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


class BaseFormat:
    """The head every chunk or body starts with, errors, and the keep-alive comment."""

    ping = PING

    def __init__(self, gen: GenerationRequest, spec: AnswerSpec, obj: str) -> None:
        self.spec = spec
        self.streaming = spec.streaming
        self.headers = SSE_HEADERS if spec.streaming else JSON_HEADERS
        self.head: dict[str, Any] = {"id": gen.request_id, "object": obj, "created": gen.created, "model": spec.model}
        self.answers: dict[int, Answer] = {}
        self.token_text = TokenText(spec.decode, spec.tokens_as_ids)

    def answers_in_order(self) -> list[Answer]:
        return [self.answers[i] for i in sorted(self.answers)]

    def usage_event(self, outcome: Outcome, completion_tokens: int, reasoning: int | None = None) -> bytes:
        if not self.spec.include_usage:
            return b""
        return event({**self.head, "choices": [], "usage": self.usage(outcome, completion_tokens, reasoning)})

    def usage(self, outcome: Outcome, completion_tokens: int, reasoning: int | None = None) -> dict[str, Any]:
        """The usage of a whole generation (with the prefix cache's share when the server reports it)."""
        cached = (outcome.cached_tokens, outcome.cache_write_tokens) if self.spec.cached_details else None
        return usage(outcome.prompt_tokens, completion_tokens, reasoning, cached)

    def opening(self) -> bytes:
        return b""  # a chunk names no state: the first one carries the first token

    def error(self, error: GatewayError) -> bytes:
        return event(openai_error_body(error)) + DONE

    def refusal(self, error: GatewayError) -> bytes:
        return dumps(openai_error_body(error))
