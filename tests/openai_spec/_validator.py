"""Validating payloads against the transcribed OpenAI schemas, naming every violation."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.sse_client import raw_events

SPEC_FILE = Path(__file__).with_name("schemas.json")
# Where the transcription lives for `$ref` resolution; any URI would do, this one says what it is.
_BASE_URI = "urn:openai-openapi:schemas.json"
_POINTER = "#/components/schemas/"
# Messages quote the offending value; a whole Response in one line would bury the reason.
_MAX_MESSAGE = 300


def _as_json_schema(node: Any, component: str) -> Any:
    """One node of OpenAI's OpenAPI 3.1 text as JSON Schema 2020-12 means it.

    OpenAI's 3.1 document still uses two constructs of older drafts. Read literally under
    2020-12 both would be ignored, which would reject `null` where OpenAI sends it and
    accept anything as a compound filter's operand, so each gets the meaning OpenAI intends.
    """
    if isinstance(node, list):
        return [_as_json_schema(item, component) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {
        # under `properties` the keys are field names (a field may be called "nullable")
        key: {name: _as_json_schema(s, component) for name, s in value.items()}
        if key == "properties"
        else _as_json_schema(value, component)
        for key, value in node.items()
    }
    if converted.get("$recursiveRef") == "#":
        # JSON Schema 2019-09 recursion: "#" is the schema that declares `$recursiveAnchor`,
        # which in OpenAI's generator was the component itself.
        del converted["$recursiveRef"]
        converted["$ref"] = _POINTER + component
    converted.pop("$recursiveAnchor", None)
    if converted.pop("nullable", False):
        # OpenAPI 3.0's `nullable: true`: the schema, or null.
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@cache
def _document() -> dict[str, Any]:
    spec = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    assert spec["openapi"].startswith("3.1."), "the readings in _as_json_schema are for OpenAPI 3.1"
    schemas = spec["components"]["schemas"]
    return {"components": {"schemas": {name: _as_json_schema(s, name) for name, s in schemas.items()}}}


def schema_names() -> frozenset[str]:
    """The names of every schema in the transcription (OpenAI's `components/schemas` names)."""
    return frozenset(_document()["components"]["schemas"])


@cache
def _validator(schema_name: str) -> Draft202012Validator:
    if schema_name not in schema_names():
        raise KeyError(f"{schema_name!r} is not among the transcribed OpenAI schemas (see tests/openai_spec/README.md)")
    registry: Registry[Any] = Registry().with_resource(_BASE_URI, DRAFT202012.create_resource(_document()))
    return Draft202012Validator({"$ref": _BASE_URI + _POINTER + schema_name}, registry=registry)


def _mismatch(error: ValidationError, tags: tuple[str, ...]) -> bool:
    """Whether an error only says the value is another variant of a union, not a broken one:
    it is not even of the branch's JSON type, or one of its `tags` names another branch."""
    at = list(error.relative_path)
    if error.validator == "type" and not at:
        return True
    return error.validator in ("enum", "const") and len(at) == 1 and at[0] in tags


# Tried in turn: a message's `role` tells its kind apart only once `type` says "message".
_TAG_TIERS = (("type", "object", "role"), ("type", "object"))


def _leaves(error: ValidationError) -> Iterator[tuple[ValidationError, str]]:
    """The errors a reader needs, with their messages: inside a failed union, those of the
    branch the value meant to be."""
    if not error.context:
        yield error, error.message
        return
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    for tags in _TAG_TIERS:
        plausible = [errors for errors in branches.values() if not any(_mismatch(e, tags) for e in errors)]
        if plausible:
            for sub in min(plausible, key=len):
                yield from _leaves(sub)
            return
    if all(any(_mismatch(e, ("type",)) and e.relative_path for e in errors) for errors in branches.values()):
        yield error, f"its type {error.instance['type']!r} is none of the {len(branches)} variants' types"
    elif all(e.validator == "type" and not e.relative_path for e in error.context):
        # e.g. `anyOf: [{type: string}, {type: null}]`: say which types, not "any of the given schemas"
        types = " or ".join(dict.fromkeys(repr(e.validator_value) for e in error.context))
        yield error, f"{error.instance!r} is not of type {types}"
    else:
        yield error, error.message


def _path(error: ValidationError) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def violations(schema_name: str, payload: object) -> list[str]:
    """Every way `payload` (a decoded JSON value) breaks OpenAI's schema `schema_name`, as
    `at <path>: <reason>` lines; empty when it conforms."""
    found = []
    for error in _validator(schema_name).iter_errors(payload):
        for leaf, message in _leaves(error):
            if len(message) > _MAX_MESSAGE:
                message = message[:_MAX_MESSAGE] + "..."
            found.append(f"at {_path(leaf)}: {message}")
    return sorted(set(found))


def validate(schema_name: str, payload: object) -> None:
    """Raise AssertionError, listing every violation, unless `payload` (a decoded JSON value)
    conforms to OpenAI's published schema `schema_name`, e.g. "CreateChatCompletionResponse"."""
    found = violations(schema_name, payload)
    if found:
        shown = json.dumps(payload)
        if len(shown) > 2 * _MAX_MESSAGE:
            shown = shown[: 2 * _MAX_MESSAGE] + "..."
        lines = "\n".join(f"  - {v}" for v in found)
        raise AssertionError(f"not an OpenAI {schema_name}:\n{lines}\npayload: {shown}")


def validate_sse(body: str, schema_name: str) -> list[dict[str, Any]]:
    """Check a whole OpenAI-style SSE body: JSON `data:` events up to a final `data: [DONE]`.

    Each event must be a `schema_name`, except that an `{"error": ...}` event (how an OpenAI
    stream reports a failure after it began) must be an ErrorResponse and the last one.
    Returns the decoded events, `[DONE]` excluded, for further assertions.
    """
    data = [d for _, d in raw_events(body)]
    assert data and data[-1] == "[DONE]", f"the stream does not end with data: [DONE]: {data[-3:]}"
    events = [json.loads(d) for d in data[:-1]]
    for i, event in enumerate(events):
        if isinstance(event, dict) and "error" in event:
            assert i == len(events) - 1, f"event {i} is an error but the stream goes on"
            validate("ErrorResponse", event)
        else:
            validate(schema_name, event)
    return events


def validate_chat_sse(body: str) -> list[dict[str, Any]]:
    """`validate_sse` for `/v1/chat/completions`: every chunk a CreateChatCompletionStreamResponse."""
    return validate_sse(body, "CreateChatCompletionStreamResponse")


def validate_chat_stream(chunks: Iterable[object]) -> None:
    """Every chunk (decoded JSON, e.g. from an SSE client) a CreateChatCompletionStreamResponse."""
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)


def validate_response_events(events: Iterable[tuple[str | None, object]]) -> None:
    """A Responses stream as (SSE `event:` name or None, decoded `data`) pairs: each data a
    ResponseStreamEvent, whose `type` is the event name when a name is sent."""
    for name, data in events:
        validate("ResponseStreamEvent", data)
        if name is not None:
            assert isinstance(data, dict) and data["type"] == name, f"event: {name} carries {data}"


def validate_responses_sse(body: str) -> list[dict[str, Any]]:
    """Check a whole `/v1/responses` SSE body (`event:` + `data:` pairs; OpenAI sends no
    `[DONE]` here). Returns the decoded events."""
    pairs = [(name, json.loads(data)) for name, data in raw_events(body)]
    assert pairs, "the stream has no events"
    validate_response_events(pairs)
    return [data for _, data in pairs]
