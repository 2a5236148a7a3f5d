"""OpenAPI descriptions of the routes that read their own request body.

`/chat_stream` and its helpers take the raw `Request` (so they can stream and
bound the body themselves), which leaves FastAPI nothing to describe. These
route arguments give the schema their bodies and every answer they can give,
so clients and the schema fuzzer (tests/reliability) see the real contract.
"""

from __future__ import annotations

from typing import Any

from gateway.chat.schema import ChatStreamBody, GenerationParams

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

_ERRORS = {
    400: "the body is not valid JSON, or the request makes no sense (empty or too long input, a conversation "
    "the model's chat template refuses)",
    409: "a generation is already running in this session",
    413: "the body is larger than the limit",
    415: "the body is declared as something other than JSON (send Content-Type: application/json)",
    422: "the body does not match the schema",
    429: "every admission place is taken, or a limit of the key sent is reached (see Retry-After)",
    503: "the engine is not ready, the gateway is draining, the queue wait timed out or the session store is down",
}

# One Server-Sent Event; `data` is the event's JSON object (see DESIGN.md, wire format).
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {"event": {"enum": ["delta", "done", "error"]}, "data": {"type": "string"}},
}

_PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["params", "limits"],
    "properties": {"params": {"type": "object"}, "limits": {"type": "object"}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: _json(_ERROR_SCHEMA, _ERRORS[code]) for code in codes}


def _body(model: type[ChatStreamBody] | type[GenerationParams]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


CHAT_STREAM: dict[str, Any] = {
    "openapi_extra": _body(ChatStreamBody),
    "responses": {
        200: {
            "description": "Server-Sent Events: `delta`, then `done` or `error`",
            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
        },
        **_errors(400, 409, 413, 415, 422, 429, 503),
    },
}

SET_GENERATION_PARAMS: dict[str, Any] = {
    "openapi_extra": _body(GenerationParams),
    "responses": {200: _json(_PARAMS_SCHEMA, "the session's parameters"), **_errors(400, 413, 415, 422, 503)},
}

GET_GENERATION_PARAMS: dict[str, Any] = {
    "responses": {200: _json(_PARAMS_SCHEMA, "the session's parameters"), **_errors(503)},
}

CLEAR_CONTEXT: dict[str, Any] = {
    "responses": {
        200: _json({"type": "object", "required": ["cleared"], "properties": {"cleared": {"const": True}}}, "cleared"),
        **_errors(409, 503),
    },
}

GET_PROMPT: dict[str, Any] = {
    "responses": {
        200: _json(
            {
                "type": "object",
                "required": ["prompt", "system", "messages"],
                "properties": {
                    "prompt": {"type": "string"},
                    "system": {"type": ["string", "null"]},
                    "messages": {"type": "array", "items": {"type": "object"}},
                },
            },
            "the conversation",
        ),
        **_errors(400, 503),
    },
}

GET_LOAD: dict[str, Any] = {
    "responses": {
        200: _json(
            {
                "type": "object",
                "required": ["in_flight", "queued", "capacity", "queue_size"],
                "properties": {k: {"type": "integer"} for k in ("in_flight", "queued", "capacity", "queue_size")},
            },
            "generations running and waiting",
        )
    },
}

_STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}

HEALTH: dict[str, Any] = {
    "responses": {200: _json(_STATUS, "the engine is alive"), 503: _json(_STATUS, "the engine is not available")},
}

METRICS: dict[str, Any] = {
    "responses": {
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
}
