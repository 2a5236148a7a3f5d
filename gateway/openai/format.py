"""How the OpenAI routes spell a generation: stream chunks, one JSON body, errors."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from gateway.core.errors import GatewayError, error_headers
from gateway.core.generation import GenerationRequest, Outcome
from gateway.http.sse import PING, SSE_HEADERS

_TYPE_BY_STATUS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_DONE = b"data: [DONE]\n\n"


def openai_error_body(error: GatewayError) -> dict[str, dict[str, str | None]]:
    """OpenAI's error shape; `code` is the gateway's machine-readable error type."""
    kind = _TYPE_BY_STATUS.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.type}}


def openai_error_response(error: GatewayError) -> JSONResponse:
    return JSONResponse(openai_error_body(error), status_code=error.status, headers=error_headers(error))


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class OpenAIFormat:
    """One generation spelled as OpenAI chunks (`data: {...}`, then `data: [DONE]`) or one JSON body."""

    ping = PING

    def __init__(self, gen: GenerationRequest, model: str, *, chat: bool, streaming: bool, include_usage: bool) -> None:
        self.chat, self.streaming, self.include_usage = chat, streaming, include_usage
        self.headers = SSE_HEADERS if streaming else [(b"content-type", b"application/json")]
        self._head = {"id": gen.request_id, "created": gen.created, "model": model}
        obj = ("chat.completion" if chat else "text_completion") + (".chunk" if chat and streaming else "")
        self._head["object"] = obj
        # Every chunk starts the same way: build that prefix once per generation.
        self._prefix = b"data: " + _dumps(self._head)[:-1] + b',"choices":[{"index":0,'
        self._role_pending = chat

    def _usage(self, outcome: Outcome) -> dict[str, int]:
        prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _choice_chunk(self, piece: bytes, finish_reason: str | None) -> bytes:
        return self._prefix + piece + b',"logprobs":null,"finish_reason":' + _dumps(finish_reason) + b"}]}\n\n"

    def _piece(self, text: str) -> bytes:
        if not self.chat:
            return b'"text":' + _dumps(text)
        if self._role_pending:  # the role travels with the first content, never ahead of it
            self._role_pending = False
            return b'"delta":' + _dumps({"role": "assistant", "content": text})
        return b'"delta":' + _dumps({"content": text})

    def delta(self, text: str) -> bytes:
        return self._choice_chunk(self._piece(text), None)

    def done(self, outcome: Outcome) -> bytes:
        reason = "length" if outcome.finish_reason == "length" else "stop"
        if not self.streaming:
            if self.chat:
                choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": outcome.text}}
            else:
                choice = {"index": 0, "text": outcome.text}
            choice |= {"logprobs": None, "finish_reason": reason}
            return _dumps({**self._head, "choices": [choice], "usage": self._usage(outcome)})
        last = self._piece("") if self._role_pending or not self.chat else b'"delta":{}'
        body = self._choice_chunk(last, reason)
        if self.include_usage:
            body += b"data: " + _dumps({**self._head, "choices": [], "usage": self._usage(outcome)}) + b"\n\n"
        return body + _DONE

    def error(self, error: GatewayError) -> bytes:
        return b"data: " + _dumps(openai_error_body(error)) + b"\n\n" + _DONE

    def refusal(self, error: GatewayError) -> bytes:
        return _dumps(openai_error_body(error))
